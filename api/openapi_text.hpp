#pragma once

#include <string_view>

namespace switchyard::api {

/// The text of api/openapi.yaml as of this build.
std::string_view openapi_yaml() noexcept;

}  // namespace switchyard::api
