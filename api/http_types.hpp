#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace switchyard::api {

/// Case-insensitive ASCII comparison of header names.
bool iequals(std::string_view a, std::string_view b) noexcept;

/// An HTTP request as the handlers see it: no sockets, no Beast types.
struct Request {
  std::string method;   ///< "GET", "POST", ...
  std::string target;   ///< origin-form: path and query
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;

  /// The first header called `name` (case-insensitive), if present.
  [[nodiscard]] std::optional<std::string_view> header(std::string_view name) const;
};

/// An HTTP response as the handlers produce it.
struct Response {
  int status = 200;
  std::string_view content_type = "application/json";  ///< a string literal, never a client's text
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  std::string route = "unmatched";  ///< the route template, for metrics labels
};

}  // namespace switchyard::api
