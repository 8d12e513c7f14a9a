#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace switchyard::api {

/// The execution model a job runs on.
enum class Model { thread, process };

/// A job's lifecycle state. Terminal states never change again.
enum class JobStatus { queued, running, succeeded, failed, cancelled, timed_out };

std::string_view to_string(Model model) noexcept;
std::string_view to_string(JobStatus status) noexcept;
/// Parses "thread"/"process"; nullopt otherwise.
std::optional<Model> parse_model(std::string_view text) noexcept;
/// Parses a status name; nullopt otherwise.
std::optional<JobStatus> parse_status(std::string_view text) noexcept;
/// True for succeeded, failed, cancelled and timed_out.
bool is_terminal(JobStatus status) noexcept;

using TimePoint = std::chrono::system_clock::time_point;

/// RFC 3339 UTC with milliseconds, e.g. "2026-11-24T18:03:22.123Z".
std::string format_time(TimePoint time);

/// A job's error: a stable code and a message.
struct JobError {
  std::string code;
  std::string message;
};

/// The job resource of API.md, as stored. A plain value: copies are snapshots.
struct Job {
  std::string id;
  std::string type;
  Model model = Model::thread;
  JobStatus status = JobStatus::queued;
  int priority = 0;
  std::int64_t timeout_ms = 0;
  int attempts = 0;      ///< starts so far: a retried job counts each
  int max_attempts = 1;  ///< starts allowed when a worker crash or a server restart interrupts it
  nlohmann::json input = nlohmann::json::object();
  nlohmann::json result;  // null until succeeded
  std::optional<JobError> error;
  TimePoint created_at{};
  std::optional<TimePoint> started_at;
  std::optional<TimePoint> finished_at;
  std::optional<double> queue_ms;
  std::optional<double> run_ms;
  std::optional<double> cpu_ms;
  std::optional<int> worker_pid;
};

/// The JSON form of a job resource.
nlohmann::json to_json(const Job& job);

/// Appends the job resource as JSON text to `out`: the same text as `to_json(job).dump()` (keys
/// in the same order, the same numbers and escapes), written straight out rather than built as
/// a tree first; every job read or submitted over HTTP goes through it.
void append_json(std::string& out, const Job& job);

}  // namespace switchyard::api
