#pragma once

#include "server/config.hpp"

namespace switchyard::server {

/// Runs the service until SIGTERM/SIGINT, then drains; returns the process exit code.
int run_server(const Config& config);

/// GETs the health URL; 0 if it answered 200, else 1. For container HEALTHCHECKs.
int run_healthcheck(const HealthcheckCommand& command);

}  // namespace switchyard::server
