#include "api/job.hpp"

#include <array>
#include <cstdio>
#include <ctime>

namespace switchyard::api {

std::string_view to_string(Model model) noexcept { return model == Model::thread ? "thread" : "process"; }

std::string_view to_string(JobStatus status) noexcept {
  switch (status) {
    case JobStatus::queued: return "queued";
    case JobStatus::running: return "running";
    case JobStatus::succeeded: return "succeeded";
    case JobStatus::failed: return "failed";
    case JobStatus::cancelled: return "cancelled";
    case JobStatus::timed_out: return "timed_out";
  }
  return "queued";
}

std::optional<Model> parse_model(std::string_view text) noexcept {
  if (text == "thread") return Model::thread;
  if (text == "process") return Model::process;
  return std::nullopt;
}

std::optional<JobStatus> parse_status(std::string_view text) noexcept {
  for (auto status : {JobStatus::queued, JobStatus::running, JobStatus::succeeded, JobStatus::failed,
                      JobStatus::cancelled, JobStatus::timed_out}) {
    if (to_string(status) == text) return status;
  }
  return std::nullopt;
}

bool is_terminal(JobStatus status) noexcept {
  return status != JobStatus::queued && status != JobStatus::running;
}

std::string format_time(TimePoint time) {
  const auto ms_total = std::chrono::duration_cast<std::chrono::milliseconds>(time.time_since_epoch()).count();
  const std::time_t seconds = static_cast<std::time_t>(ms_total / 1000);
  const int ms = static_cast<int>(ms_total % 1000);
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  std::array<char, 32> buffer{};
  std::snprintf(buffer.data(), buffer.size(), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", utc.tm_year + 1900,
                utc.tm_mon + 1, utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec, ms);
  return buffer.data();
}

namespace {
nlohmann::json optional_time(const std::optional<TimePoint>& time) {
  return time ? nlohmann::json(format_time(*time)) : nlohmann::json(nullptr);
}
template <typename T>
nlohmann::json optional_value(const std::optional<T>& value) {
  return value ? nlohmann::json(*value) : nlohmann::json(nullptr);
}
double round3(double value) { return static_cast<double>(static_cast<long long>(value * 1000.0 + 0.5)) / 1000.0; }
}  // namespace

nlohmann::json to_json(const Job& job) {
  nlohmann::json out = {
      {"id", job.id},
      {"type", job.type},
      {"model", to_string(job.model)},
      {"status", to_string(job.status)},
      {"priority", job.priority},
      {"timeout_ms", job.timeout_ms},
      {"attempts", job.attempts},
      {"max_attempts", job.max_attempts},
      {"input", job.input},
      {"result", job.result},
      {"error", job.error ? nlohmann::json{{"code", job.error->code}, {"message", job.error->message}}
                          : nlohmann::json(nullptr)},
      {"created_at", format_time(job.created_at)},
      {"started_at", optional_time(job.started_at)},
      {"finished_at", optional_time(job.finished_at)},
      {"queue_ms", job.queue_ms ? nlohmann::json(round3(*job.queue_ms)) : nlohmann::json(nullptr)},
      {"run_ms", job.run_ms ? nlohmann::json(round3(*job.run_ms)) : nlohmann::json(nullptr)},
      {"cpu_ms", job.cpu_ms ? nlohmann::json(round3(*job.cpu_ms)) : nlohmann::json(nullptr)},
      {"worker_pid", optional_value(job.worker_pid)},
  };
  return out;
}

}  // namespace switchyard::api
