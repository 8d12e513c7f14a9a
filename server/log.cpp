#include "server/log.hpp"

#include "api/job.hpp"

#include <atomic>

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>

namespace switchyard::server::log {

namespace {

std::atomic<bool> json_format{false};

/// In JSON mode every line must be a JSON object, including lines logged with plain spdlog
/// calls (other modules, libraries): those are wrapped here; events are already objects.
class JsonLineFlag final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&, spdlog::memory_buf_t& dest) override {
    const std::string_view payload(msg.payload.data(), msg.payload.size());
    if (payload.starts_with("{\"")) {
      dest.append(payload.data(), payload.data() + payload.size());
      return;
    }
    nlohmann::json line = {{"ts", api::format_time(msg.time)},
                           {"level", spdlog::level::to_string_view(msg.level).data()},
                           {"msg", std::string(payload)}};
    const std::string text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    dest.append(text.data(), text.data() + text.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<JsonLineFlag>(); }

};

std::string render_value(const nlohmann::json& value) {
  if (value.is_string()) {
    const auto& text = value.get_ref<const std::string&>();
    if (text.find_first_of(" \t\"=") == std::string::npos && !text.empty()) return text;
  }
  return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void write(spdlog::level::level_enum level, std::string_view message, const nlohmann::json& fields,
           std::string_view job_id) {
  auto logger = spdlog::default_logger_raw();
  if (!logger->should_log(level)) return;
  if (json_format.load(std::memory_order_relaxed)) {
    nlohmann::ordered_json line;
    line["ts"] = api::format_time(std::chrono::system_clock::now());
    line["level"] = spdlog::level::to_string_view(level).data();
    line["msg"] = message;
    if (!job_id.empty()) line["job_id"] = job_id;
    for (const auto& [key, value] : fields.items()) line[key] = value;
    logger->log(level, "{}", line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    return;
  }
  std::string text(message);
  if (!job_id.empty()) text += " job_id=" + std::string(job_id);
  for (const auto& [key, value] : fields.items()) text += " " + key + "=" + render_value(value);
  logger->log(level, "{}", text);
}

}  // namespace

bool enabled(spdlog::level::level_enum level) {
  return spdlog::default_logger_raw()->should_log(level);
}

void setup(const std::string& format, const std::string& level) {
  auto logger = std::make_shared<spdlog::logger>("switchyard", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  json_format = format == "json";
  if (json_format) {
    auto formatter = std::make_unique<spdlog::pattern_formatter>(spdlog::pattern_time_type::utc);
    formatter->add_flag<JsonLineFlag>('*').set_pattern("%*");
    logger->set_formatter(std::move(formatter));
  } else {
    logger->set_formatter(std::make_unique<spdlog::pattern_formatter>("%Y-%m-%dT%H:%M:%S.%eZ %^%-5l%$ %v",
                                                                      spdlog::pattern_time_type::utc));
  }
  logger->set_level(spdlog::level::from_str(level));
  logger->flush_on(spdlog::level::trace);
  spdlog::set_default_logger(std::move(logger));
}

void event(spdlog::level::level_enum level, std::string_view message, const nlohmann::json& fields) {
  write(level, message, fields, {});
}

void job(spdlog::level::level_enum level, std::string_view job_id, std::string_view message,
         const nlohmann::json& fields) {
  write(level, message, fields, job_id);
}

}  // namespace switchyard::server::log
