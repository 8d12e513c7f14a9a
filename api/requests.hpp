#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "api/job.hpp"
#include "api/problem.hpp"
#include "workers/job_type.hpp"

namespace switchyard::api {

/// Bounds that come from the server's configuration.
struct RequestLimits {
  std::int64_t default_timeout_ms = 30000;
  std::int64_t max_timeout_ms = 3600000;
  std::size_t max_batch = 1000;
  double max_wait_s = 60;
  std::size_t max_json_depth = 64;
  std::size_t queue_limit = 10000;  ///< per model: a batch that can never fit is a 422, not a 429
};

/// A validated job submission, ready for the dispatcher.
struct JobRequest {
  const workers::JobType* type = nullptr;
  nlohmann::json input = nlohmann::json::object();
  Model model = Model::thread;  ///< resolved: "auto" became the type's kind
  int priority = 0;
  std::int64_t timeout_ms = 0;
  int max_attempts = 1;
};

inline constexpr int kMinPriority = -1000;
inline constexpr int kMaxPriority = 1000;
inline constexpr int kMaxAttempts = 100;

/// Parses a JSON request body: 400 invalid_json for malformed JSON, invalid UTF-8 or nesting
/// deeper than limits.max_json_depth.
std::variant<nlohmann::json, Problem> parse_json_body(std::string_view body, const RequestLimits& limits);

/// Validates one job request object. Errors carry paths prefixed with `path_prefix`
/// (e.g. "/jobs/3"). Returns the request or the list of field errors.
std::variant<JobRequest, std::vector<workers::FieldError>> parse_job_request(
    const nlohmann::json& body, const workers::Catalogue& catalogue, const RequestLimits& limits,
    const std::string& path_prefix = "");

/// A 422 problem for field errors: code unknown_job_type when a type name was unknown, else
/// validation_failed.
Problem validation_problem(std::vector<workers::FieldError> errors);

/// The wait requested by `Prefer: wait=N` (RFC 7240; malformed preferences are ignored),
/// capped at limits.max_wait_s.
std::optional<std::chrono::milliseconds> parse_prefer_wait(std::string_view prefer, const RequestLimits& limits);

/// Parses a `?wait=N` value (seconds, decimals allowed), capped; nullopt if malformed.
std::optional<std::chrono::milliseconds> parse_wait_seconds(std::string_view text, const RequestLimits& limits);

/// Filters and page of GET /v1/jobs.
struct ListQuery {
  std::optional<JobStatus> status;
  std::optional<std::string> type;
  std::optional<Model> model;
  std::size_t limit = 100;
  std::optional<std::string> after_id;  ///< from the cursor: list jobs older than this id
};

/// Parses the query string of GET /v1/jobs; a Problem (400 invalid_query) if it is malformed.
std::variant<ListQuery, Problem> parse_list_query(std::string_view query);

/// The query of GET /v1/jobs/{id}: empty, or only `wait=<seconds>` (percent-decoded, capped).
std::variant<std::optional<std::chrono::milliseconds>, Problem> parse_wait_query(std::string_view query,
                                                                                 const RequestLimits& limits);

/// The opaque cursor that continues a listing after `id`.
std::string make_cursor(std::string_view id);

/// The job id inside a cursor; nullopt if the cursor is not one of ours.
std::optional<std::string> parse_cursor(std::string_view cursor);

}  // namespace switchyard::api
