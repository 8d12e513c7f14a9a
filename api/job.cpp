#include "api/job.hpp"

#include <algorithm>
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
  // Civil-date arithmetic from <chrono> and digits written by hand: neither gmtime_r nor
  // snprintf, which every job read over HTTP pays up to three times.
  using namespace std::chrono;
  const auto ms_time = floor<milliseconds>(time);
  const auto day = floor<days>(ms_time);
  const year_month_day date{day};
  const hh_mm_ss clock{ms_time - day};
  std::string out(24, '0');  // YYYY-MM-DDTHH:MM:SS.mmmZ
  auto put = [&out](std::size_t at, unsigned value, int width) {
    for (int i = width - 1; i >= 0; --i, value /= 10)
      out[at + static_cast<std::size_t>(i)] = static_cast<char>('0' + value % 10);
  };
  put(0, static_cast<unsigned>(static_cast<int>(date.year())), 4);
  out[4] = '-';
  put(5, static_cast<unsigned>(date.month()), 2);
  out[7] = '-';
  put(8, static_cast<unsigned>(date.day()), 2);
  out[10] = 'T';
  put(11, static_cast<unsigned>(clock.hours().count()), 2);
  out[13] = ':';
  put(14, static_cast<unsigned>(clock.minutes().count()), 2);
  out[16] = ':';
  put(17, static_cast<unsigned>(clock.seconds().count()), 2);
  out[19] = '.';
  put(20, static_cast<unsigned>(clock.subseconds().count()), 3);
  out[23] = 'Z';
  return out;
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

namespace {
// A JSON value as the HTTP responses dump it (invalid UTF-8 replaced, never an exception).
void append_value(std::string& out, const nlohmann::json& value) {
  if (value.is_null()) {
    out += "null";
  } else if (value.empty() && (value.is_object() || value.is_array())) {
    out += value.is_object() ? "{}" : "[]";
  } else {
    out += value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
}
void append_string(std::string& out, std::string_view text) {
  // Ids, type names and most messages are printable ASCII with nothing to escape.
  const bool plain =
      std::all_of(text.begin(), text.end(), [](char c) { return c >= 0x20 && c < 0x7f && c != '"' && c != '\\'; });
  if (!plain) {
    append_value(out, nlohmann::json(text));
    return;
  }
  out += '"';
  out += text;
  out += '"';
}
void append_time(std::string& out, const std::optional<TimePoint>& time) {
  if (!time) {
    out += "null";
    return;
  }
  out += '"';
  out += format_time(*time);
  out += '"';
}
void append_ms(std::string& out, const std::optional<double>& ms) {
  if (ms) {
    append_value(out, nlohmann::json(round3(*ms)));
  } else {
    out += "null";
  }
}
}  // namespace

void append_json(std::string& out, const Job& job) {
  // Keys in std::map order, as nlohmann::json writes them.
  out += R"({"attempts":)";
  out += std::to_string(job.attempts);
  out += R"(,"cpu_ms":)";
  append_ms(out, job.cpu_ms);
  out += R"(,"created_at":)";
  append_time(out, job.created_at);
  out += R"(,"error":)";
  if (job.error) {
    out += R"({"code":)";
    append_string(out, job.error->code);
    out += R"(,"message":)";
    append_string(out, job.error->message);
    out += '}';
  } else {
    out += "null";
  }
  out += R"(,"finished_at":)";
  append_time(out, job.finished_at);
  out += R"(,"id":)";
  append_string(out, job.id);
  out += R"(,"input":)";
  append_value(out, job.input);
  out += R"(,"max_attempts":)";
  out += std::to_string(job.max_attempts);
  out += R"(,"model":")";
  out += to_string(job.model);
  out += R"(","priority":)";
  out += std::to_string(job.priority);
  out += R"(,"queue_ms":)";
  append_ms(out, job.queue_ms);
  out += R"(,"result":)";
  append_value(out, job.result);
  out += R"(,"run_ms":)";
  append_ms(out, job.run_ms);
  out += R"(,"started_at":)";
  append_time(out, job.started_at);
  out += R"(,"status":")";
  out += to_string(job.status);
  out += R"(","timeout_ms":)";
  out += std::to_string(job.timeout_ms);
  out += R"(,"type":)";
  append_string(out, job.type);
  out += R"(,"worker_pid":)";
  out += job.worker_pid ? std::to_string(*job.worker_pid) : std::string("null");
  out += '}';
}

}  // namespace switchyard::api
