// libFuzzer target: the small parsers of the REST layer (api/requests.hpp, match_route), each
// with the promises its header makes. fuzz_request reaches them too, through the router; here
// they run alone, so millions of inputs a minute go through them.
//
// Byte 0 chooses the parser (mod 6), the rest is its text:
//   0 parse_list_query   1 parse_cursor   2 parse_wait_seconds   3 parse_prefer_wait
//   4 parse_json_body (byte 1: the depth limit, 1..64)   5 match_route

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <variant>

#include <nlohmann/json.hpp>

#include "api/requests.hpp"
#include "api/router.hpp"
#include "workers/frame.hpp"

namespace {

using namespace switchyard;
using nlohmann::json;

#define FUZZ_CHECK(cond)                                                                              \
  do {                                                                                                \
    if (!(cond)) {                                                                                    \
      std::fprintf(stderr, "\nfuzz_parsers: invariant violated (fuzz_parsers.cpp:%d): %s\n", __LINE__, \
                   #cond);                                                                            \
      std::abort();                                                                                   \
    }                                                                                                 \
  } while (0)

bool is_canonical_uuid(std::string_view id) {
  const auto parsed = workers::parse_uuid(id);
  return parsed && workers::format_uuid(*parsed) == id;
}

void check_problem(const api::Problem& problem, std::string_view code) {
  FUZZ_CHECK(problem.status == 400);
  FUZZ_CHECK(problem.code == code);
  FUZZ_CHECK(!problem.detail.empty());
}

void list_query(std::string_view raw) {
  // The raw bytes, not a NUL-terminated copy: parse_list_query must not read past its view
  // (Boost.URL 1.81's parse_query would, boostorg/url#757; fuzz/reproducers/ has the input).
  const std::string_view text = raw;
  const auto parsed = api::parse_list_query(text);
  if (const auto* problem = std::get_if<api::Problem>(&parsed)) {
    check_problem(*problem, "invalid_query");
    FUZZ_CHECK(!text.empty());
    return;
  }
  const auto& query = std::get<api::ListQuery>(parsed);
  FUZZ_CHECK(query.limit >= 1 && query.limit <= 1000);
  if (query.after_id) {
    FUZZ_CHECK(is_canonical_uuid(*query.after_id));
    FUZZ_CHECK(api::parse_cursor(api::make_cursor(*query.after_id)) == query.after_id);
  }
}

void cursor(std::string_view text) {
  const auto id = api::parse_cursor(text);
  if (!id) return;
  FUZZ_CHECK(text.size() == 3 + 36);
  FUZZ_CHECK(is_canonical_uuid(*id));
  FUZZ_CHECK(api::make_cursor(*id) == text);
}

void wait_value(std::string_view text, bool prefer) {
  api::RequestLimits limits;
  limits.max_wait_s = 60;
  const auto wait = prefer ? api::parse_prefer_wait(text, limits) : api::parse_wait_seconds(text, limits);
  if (!wait) return;
  FUZZ_CHECK(wait->count() >= 0);
  FUZZ_CHECK(wait->count() <= 60'000);
  if (!prefer) FUZZ_CHECK(!text.empty() && text.size() <= 32);
}

std::size_t depth_of(const json& value) {
  if (!value.is_structured()) return 0;
  std::size_t deepest = 0;
  for (const auto& child : value) deepest = std::max(deepest, depth_of(child));
  return deepest + 1;
}

void json_body(std::string_view text, std::uint8_t depth_byte) {
  api::RequestLimits limits;
  limits.max_json_depth = 1 + depth_byte % 64;
  const auto parsed = api::parse_json_body(text, limits);
  if (const auto* problem = std::get_if<api::Problem>(&parsed)) {
    check_problem(*problem, "invalid_json");
    return;
  }
  const json& value = std::get<json>(parsed);
  FUZZ_CHECK(!value.is_discarded());
  FUZZ_CHECK(depth_of(value) <= limits.max_json_depth);
  // What was accepted is what nlohmann reads from the same text.
  FUZZ_CHECK(value == json::parse(text));
}

void route(std::string_view path) {
  const api::RouteMatch match = api::match_route(path);
  if (match.id == api::RouteId::unmatched) {
    FUZZ_CHECK(match.route_template == "unmatched");
    FUZZ_CHECK(match.allow.empty());
    return;
  }
  FUZZ_CHECK(!match.allow.empty());
  if (match.id == api::RouteId::job) {
    FUZZ_CHECK(!match.job_id.empty());
    FUZZ_CHECK(match.job_id.find('/') == std::string::npos);
    FUZZ_CHECK(path == "/v1/jobs/" + match.job_id);
    FUZZ_CHECK(match.route_template == "/v1/jobs/{id}");
  } else {
    FUZZ_CHECK(match.job_id.empty());
    FUZZ_CHECK(path == match.route_template);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return -1;
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (data[0] % 6) {
    case 0: list_query(text); break;
    case 1: cursor(text); break;
    case 2: wait_value(text, false); break;
    case 3: wait_value(text, true); break;
    case 4:
      if (text.empty()) return -1;
      json_body(text.substr(1), static_cast<std::uint8_t>(text[0]));
      break;
    case 5: route(text); break;
  }
  return 0;
}
