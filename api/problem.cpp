#include "api/problem.hpp"

#include <cctype>

#include <nlohmann/json.hpp>

namespace switchyard::api {

bool iequals(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
  }
  return true;
}

std::optional<std::string_view> Request::header(std::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (iequals(key, name)) return std::string_view(value);
  }
  return std::nullopt;
}

std::string_view status_title(int status) noexcept {
  switch (status) {
    case 200: return "OK";
    case 202: return "Accepted";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    default: return "Error";
  }
}

Problem make_problem(int status, std::string code, std::string detail) {
  return Problem{status, std::move(code), std::move(detail), {}, {}, nlohmann::json::object()};
}

Response to_response(const Problem& problem) {
  nlohmann::json body = {
      {"type", "about:blank"},
      {"title", status_title(problem.status)},
      {"status", problem.status},
      {"detail", problem.detail},
      {"code", problem.code},
  };
  for (const auto& [key, value] : problem.extensions.items()) body[key] = value;
  if (!problem.errors.empty()) {
    auto& errors = body["errors"] = nlohmann::json::array();
    for (const auto& e : problem.errors) errors.push_back({{"path", e.path}, {"message", e.message}});
  }
  Response response;
  response.status = problem.status;
  response.content_type = "application/problem+json";
  response.headers = problem.headers;
  response.body = body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return response;
}

}  // namespace switchyard::api
