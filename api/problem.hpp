#pragma once

#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "api/http_types.hpp"
#include "workers/job_type.hpp"

namespace switchyard::api {

/// An RFC 9457 problem: what went wrong, with a stable machine-readable `code`.
struct Problem {
  int status = 400;
  std::string code;
  std::string detail;
  std::vector<workers::FieldError> errors;                   ///< for validation problems
  std::vector<std::pair<std::string, std::string>> headers;  ///< Allow, Retry-After, WWW-Authenticate
  nlohmann::json extensions = nlohmann::json::object();      ///< extra members (RFC 9457 extensions)
};

/// The standard reason phrase of an HTTP status ("Not Found").
std::string_view status_title(int status) noexcept;

/// A problem+json response for `problem`.
Response to_response(const Problem& problem);

/// Shorthand for a problem without field errors.
Problem make_problem(int status, std::string code, std::string detail);

}  // namespace switchyard::api
