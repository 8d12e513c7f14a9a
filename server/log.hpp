#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

namespace switchyard::server::log {

/// Configures the default spdlog logger on stderr: "text" (human-readable) or "json" (one JSON
/// object per line: ts, level, msg, then the event's fields). Call once, before threads start.
void setup(const std::string& format, const std::string& level);

/// Logs an event with structured fields. Thread-safe.
void event(spdlog::level::level_enum level, std::string_view message, const nlohmann::json& fields = nlohmann::json::object());

/// True if an event at `level` would be written: lets a hot path skip building its fields.
bool enabled(spdlog::level::level_enum level);

/// Logs an event about one job: the job id is a field of its own ("job_id").
void job(spdlog::level::level_enum level, std::string_view job_id, std::string_view message,
         const nlohmann::json& fields = nlohmann::json::object());

}  // namespace switchyard::server::log
