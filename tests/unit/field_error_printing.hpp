#pragma once

#include <doctest/doctest.h>

#include <ostream>
#include <sstream>
#include <vector>

#include "workers/job_type.hpp"

namespace switchyard::workers {
/// How doctest prints a validation error when a check fails.
inline std::ostream& operator<<(std::ostream& out, const FieldError& error) {
  return out << '{' << '"' << error.path << "\": " << error.message << '}';
}
}  // namespace switchyard::workers

/// How doctest prints a list of validation errors when a check fails.
template <>
struct doctest::StringMaker<std::vector<switchyard::workers::FieldError>> {
  static doctest::String convert(const std::vector<switchyard::workers::FieldError>& errors) {
    std::ostringstream out;
    for (const auto& error : errors) out << error << ' ';
    return out.str().c_str();
  }
};
