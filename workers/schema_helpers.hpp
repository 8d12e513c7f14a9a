#pragma once

#include <cstdint>
#include <utility>

#include <nlohmann/json.hpp>

namespace switchyard::workers {

/// JSON Schema pieces the built-in job types declare their input with.
inline nlohmann::json integer_schema(std::int64_t minimum, std::int64_t maximum, const char* description) {
  return {{"type", "integer"}, {"minimum", minimum}, {"maximum", maximum}, {"description", description}};
}

/// An object with exactly these properties (no others).
inline nlohmann::json object_schema(nlohmann::json properties, nlohmann::json required) {
  return {{"type", "object"},
          {"properties", std::move(properties)},
          {"required", std::move(required)},
          {"additionalProperties", false}};
}

}  // namespace switchyard::workers
