#pragma once

#include "server/config.hpp"

namespace switchyard::server {

/// Runs the service until SIGTERM/SIGINT, then drains; returns the process exit code.
int run_server(const Config& config);

/// GETs the health URL; 0 if it answered 200, else 1. For container HEALTHCHECKs.
int run_healthcheck(const HealthcheckCommand& command);

/// Applies the PostgreSQL schema migrations; 0 on success, 1 (with the reason on stderr) if not.
int run_migrate(const MigrateCommand& command);

}  // namespace switchyard::server
