#include "api/requests.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>

#include <boost/url/params_view.hpp>
#include <boost/url/parse_query.hpp>

#include "workers/frame.hpp"

namespace switchyard::api {

using workers::FieldError;

namespace {

/// Nesting depth of a JSON text, counting brackets outside strings. Checked before parsing so
/// that a hostile document cannot drive deep recursion anywhere.
std::size_t json_depth(std::string_view text) {
  std::size_t depth = 0, max_depth = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    else if (c == '{' || c == '[') max_depth = std::max(max_depth, ++depth);
    else if ((c == '}' || c == ']') && depth > 0) --depth;
  }
  return max_depth;
}

std::string type_name(const nlohmann::json& value) {
  if (value.is_number_integer() || value.is_number_unsigned()) return "integer";
  return value.type_name();
}

/// The optional integer field `name` of `body`, checked to lie in [low, high]; a field error otherwise.
std::optional<std::int64_t> integer_field(const nlohmann::json& body, const std::string& name, std::int64_t low,
                                          std::int64_t high, const std::string& prefix,
                                          std::vector<FieldError>& errors) {
  auto it = body.find(name);
  if (it == body.end()) return std::nullopt;
  const std::string path = prefix + "/" + name;
  if (!it->is_number_integer()) {
    errors.push_back({path, "must be an integer, not " + type_name(*it)});
    return std::nullopt;
  }
  bool in_range = false;
  if (it->is_number_unsigned()) {  // non-negative: compare unsigned, so huge values cannot wrap
    const auto value = it->get<std::uint64_t>();
    in_range = high >= 0 && value <= static_cast<std::uint64_t>(high) &&
               (low <= 0 || value >= static_cast<std::uint64_t>(low));
  } else {
    const auto value = it->get<std::int64_t>();
    in_range = value >= low && value <= high;
  }
  if (!in_range) {
    errors.push_back({path, "must be between " + std::to_string(low) + " and " + std::to_string(high)});
    return std::nullopt;
  }
  return it->get<std::int64_t>();
}

}  // namespace

std::variant<nlohmann::json, Problem> parse_json_body(std::string_view body, const RequestLimits& limits) {
  if (body.find('\0') != std::string_view::npos) {
    // nlohmann's lexer stops at a NUL, so text after it would be silently ignored.
    return make_problem(400, "invalid_json", "malformed JSON: a NUL byte is not allowed in JSON text");
  }
  if (json_depth(body) > limits.max_json_depth) {
    return make_problem(400, "invalid_json",
                        "JSON nested deeper than " + std::to_string(limits.max_json_depth) + " levels");
  }
  try {
    return nlohmann::json::parse(body);
  } catch (const nlohmann::json::exception& e) {
    std::string what = e.what();
    // nlohmann's messages start with "[json.exception.parse_error.101] "; keep the useful part.
    if (auto pos = what.find("] "); pos != std::string::npos) what = what.substr(pos + 2);
    return make_problem(400, "invalid_json", "malformed JSON: " + what);
  }
}

std::variant<JobRequest, std::vector<FieldError>> parse_job_request(const nlohmann::json& body,
                                                                    const workers::Catalogue& catalogue,
                                                                    const RequestLimits& limits,
                                                                    const std::string& prefix) {
  std::vector<FieldError> errors;
  if (!body.is_object()) {
    errors.push_back({prefix.empty() ? "" : prefix, "must be a JSON object, not " + type_name(body)});
    return errors;
  }
  static const std::array<std::string_view, 6> kKnown = {"type", "input", "model", "priority", "timeout_ms",
                                                         "max_attempts"};
  for (const auto& [key, value] : body.items()) {
    if (std::find(kKnown.begin(), kKnown.end(), key) == kKnown.end()) {
      errors.push_back({(nlohmann::json::json_pointer(prefix) / key).to_string(), "unknown field"});
    }
  }
  JobRequest request;
  std::optional<std::string> model_text;

  auto type_it = body.find("type");
  if (type_it == body.end()) {
    errors.push_back({prefix + "/type", "is required"});
  } else if (!type_it->is_string()) {
    errors.push_back({prefix + "/type", "must be a string, not " + type_name(*type_it)});
  } else {
    request.type = catalogue.find(type_it->get<std::string>());
    if (request.type == nullptr) {
      errors.push_back({prefix + "/type", "unknown job type '" + type_it->get<std::string>() +
                                              "'; see GET /v1/job-types"});
    }
  }

  if (auto it = body.find("input"); it != body.end()) {
    if (!it->is_object()) errors.push_back({prefix + "/input", "must be an object, not " + type_name(*it)});
    else request.input = *it;
  }

  if (auto it = body.find("model"); it != body.end()) {
    if (!it->is_string()) {
      errors.push_back({prefix + "/model", "must be one of \"auto\", \"thread\", \"process\""});
    } else {
      model_text = it->get<std::string>();
      if (*model_text != "auto" && !parse_model(*model_text)) {
        errors.push_back({prefix + "/model", "must be one of \"auto\", \"thread\", \"process\""});
      }
    }
  }

  if (auto priority = integer_field(body, "priority", kMinPriority, kMaxPriority, prefix, errors)) {
    request.priority = static_cast<int>(*priority);
  }
  request.timeout_ms = integer_field(body, "timeout_ms", 1, limits.max_timeout_ms, prefix, errors)
                           .value_or(limits.default_timeout_ms);
  if (auto attempts = integer_field(body, "max_attempts", 1, kMaxAttempts, prefix, errors)) {
    request.max_attempts = static_cast<int>(*attempts);
  }

  if (request.type != nullptr) {
    for (auto& e : catalogue.validate(*request.type, request.input)) {
      errors.push_back({prefix + "/input" + e.path, e.message});
    }
    const bool wants_auto = !model_text || *model_text == "auto";
    request.model = wants_auto ? (request.type->kind == workers::Kind::io ? Model::thread : Model::process)
                               : parse_model(*model_text).value_or(Model::thread);
    if (request.type->process_only && request.model == Model::thread) {
      errors.push_back({prefix + "/model", "job type '" + request.type->name +
                                               "' can only run on the process model"});
    }
  }
  if (!errors.empty()) return errors;
  return request;
}

Problem validation_problem(std::vector<FieldError> errors) {
  bool unknown_type = false;
  for (const auto& e : errors) {
    if (e.message.starts_with("unknown job type")) unknown_type = true;
  }
  Problem problem;
  problem.status = 422;
  problem.code = unknown_type ? "unknown_job_type" : "validation_failed";
  problem.detail = unknown_type ? "the job type is not known to this server"
                                : "the request is well-formed JSON but breaks the schema";
  if (errors.size() == 1) problem.detail = errors[0].path + ": " + errors[0].message;
  problem.errors = std::move(errors);
  return problem;
}

std::optional<std::chrono::milliseconds> parse_wait_seconds(std::string_view text, const RequestLimits& limits) {
  if (text.empty() || text.size() > 32) return std::nullopt;
  double seconds = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), seconds);
  if (ec != std::errc() || end != text.data() + text.size() || !std::isfinite(seconds) || seconds < 0) {
    return std::nullopt;
  }
  seconds = std::min(seconds, limits.max_wait_s);
  return std::chrono::milliseconds(static_cast<std::int64_t>(seconds * 1000.0));
}

std::optional<std::chrono::milliseconds> parse_prefer_wait(std::string_view prefer, const RequestLimits& limits) {
  // Prefer: respond-async, wait=10   (preferences separated by commas, parameters by ';')
  std::size_t pos = 0;
  while (pos <= prefer.size()) {
    auto comma = prefer.find(',', pos);
    std::string_view item = prefer.substr(pos, comma == std::string_view::npos ? std::string_view::npos : comma - pos);
    item = item.substr(0, item.find(';'));
    while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
    while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
    if (item.size() > 5 && iequals(item.substr(0, 5), "wait=")) {
      auto value = item.substr(5);
      if (value.size() >= 2 && value.front() == '"' && value.back() == '"') value = value.substr(1, value.size() - 2);
      if (auto wait = parse_wait_seconds(value, limits)) return wait;
    }
    if (comma == std::string_view::npos) break;
    pos = comma + 1;
  }
  return std::nullopt;
}

std::string make_cursor(std::string_view id) { return "c1." + std::string(id); }

std::optional<std::string> parse_cursor(std::string_view cursor) {
  if (!cursor.starts_with("c1.")) return std::nullopt;
  cursor.remove_prefix(3);
  const auto id = workers::parse_uuid(cursor);
  if (!id || workers::format_uuid(*id) != cursor) return std::nullopt;  // canonical (lower-case) only
  return std::string(cursor);
}

namespace {

/// The decoded parameters of a query string, or nullopt if it is malformed.
std::optional<std::vector<std::pair<std::string, std::string>>> decoded_params(std::string_view query) {
  // Boost.URL 1.81's parse_query reads up to a NUL past the view (boostorg/url#757): parse an
  // owned, NUL-terminated copy.
  const std::string owned(query);
  if (!boost::urls::parse_query(owned)) return std::nullopt;
  std::vector<std::pair<std::string, std::string>> out;
  for (auto param : boost::urls::params_view(owned)) out.emplace_back(param.key, param.value);
  return out;
}

}  // namespace

std::variant<std::optional<std::chrono::milliseconds>, Problem> parse_wait_query(std::string_view query,
                                                                                 const RequestLimits& limits) {
  if (query.empty()) return std::optional<std::chrono::milliseconds>{};
  const auto params = decoded_params(query);
  if (!params || params->size() != 1 || params->front().first != "wait") {
    return make_problem(400, "invalid_query", "the only query parameter here is wait=<seconds>");
  }
  auto wait = parse_wait_seconds(params->front().second, limits);
  if (!wait) return make_problem(400, "invalid_query", "wait must be a number of seconds >= 0");
  return wait;
}

std::variant<ListQuery, Problem> parse_list_query(std::string_view query) {
  ListQuery out;
  if (query.empty()) return out;
  auto bad = [](std::string detail) { return make_problem(400, "invalid_query", std::move(detail)); };
  const auto params = decoded_params(query);
  if (!params) return bad("the query string is malformed");
  for (const auto& [key, value] : *params) {
    if (key == "status") {
      out.status = parse_status(value);
      if (!out.status) return bad("status must be one of queued, running, succeeded, failed, cancelled, timed_out");
    } else if (key == "type") {
      out.type = value;
    } else if (key == "model") {
      out.model = parse_model(value);
      if (!out.model) return bad("model must be thread or process");
    } else if (key == "limit") {
      std::size_t limit = 0;
      const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), limit);
      if (ec != std::errc() || end != value.data() + value.size() || limit < 1 || limit > 1000) {
        return bad("limit must be an integer from 1 to 1000");
      }
      out.limit = limit;
    } else if (key == "cursor") {
      out.after_id = parse_cursor(value);
      if (!out.after_id) return bad("cursor is not one this server issued");
    } else {
      return bad("unknown query parameter '" + key + "'");
    }
  }
  return out;
}

}  // namespace switchyard::api
