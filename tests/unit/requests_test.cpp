#include <doctest/doctest.h>

#include "api/requests.hpp"

using namespace switchyard;
using nlohmann::json;

namespace {
const workers::Catalogue& catalogue() {
  static const workers::Catalogue instance = [] {
    workers::BuiltinOptions options;
    options.diagnostics = true;
    return workers::make_builtin_catalogue(options);
  }();
  return instance;
}

std::vector<workers::FieldError> errors_of(const json& body, const std::string& prefix = "") {
  auto parsed = api::parse_job_request(body, catalogue(), api::RequestLimits{}, prefix);
  REQUIRE(std::holds_alternative<std::vector<workers::FieldError>>(parsed));
  return std::get<std::vector<workers::FieldError>>(parsed);
}

bool has_path(const std::vector<workers::FieldError>& errors, const std::string& path) {
  for (const auto& e : errors) {
    if (e.path == path) return true;
  }
  return false;
}
}  // namespace

TEST_CASE("a valid request resolves the model from the type's kind") {
  auto io = api::parse_job_request(json{{"type", "sleep"}, {"input", {{"ms", 5}}}}, catalogue(), {});
  REQUIRE(std::holds_alternative<api::JobRequest>(io));
  CHECK(std::get<api::JobRequest>(io).model == api::Model::thread);
  CHECK(std::get<api::JobRequest>(io).timeout_ms == 30000);
  auto cpu = api::parse_job_request(json{{"type", "primes"}, {"input", {{"n", 10}}}, {"priority", 7}}, catalogue(), {});
  REQUIRE(std::holds_alternative<api::JobRequest>(cpu));
  CHECK(std::get<api::JobRequest>(cpu).model == api::Model::process);
  CHECK(std::get<api::JobRequest>(cpu).priority == 7);
  auto forced = api::parse_job_request(json{{"type", "burn"}, {"input", {{"ms", 1}}}, {"model", "thread"}}, catalogue(), {});
  REQUIRE(std::holds_alternative<api::JobRequest>(forced));
  CHECK(std::get<api::JobRequest>(forced).model == api::Model::thread);
}

TEST_CASE("every bad field is reported with its JSON Pointer") {
  const auto errors = errors_of(json{{"type", 5}, {"input", "x"}, {"model", "gpu"}, {"priority", 1.5},
                                     {"timeout_ms", 0}, {"extra", true}});
  CHECK(has_path(errors, "/type"));
  CHECK(has_path(errors, "/input"));
  CHECK(has_path(errors, "/model"));
  CHECK(has_path(errors, "/priority"));
  CHECK(has_path(errors, "/timeout_ms"));
  CHECK(has_path(errors, "/extra"));
}

TEST_CASE("unknown field names are escaped in their JSON Pointer (found by fuzz_request)") {
  const auto errors = errors_of(json{{"type", "noop"}, {"input", json::object()}, {"a/b~c", 1}}, "/jobs/2");
  CHECK(has_path(errors, "/jobs/2/a~1b~0c"));
  CHECK_FALSE(has_path(errors, "/jobs/2/a/b~c"));
}

TEST_CASE("type is required and must be known") {
  CHECK(has_path(errors_of(json::object()), "/type"));
  const auto unknown = errors_of(json{{"type", "nope"}});
  REQUIRE(unknown.size() == 1);
  CHECK(api::validation_problem(unknown).code == "unknown_job_type");
  CHECK(api::validation_problem(errors_of(json{{"type", "sleep"}, {"input", {{"ms", -1}}}})).code ==
        "validation_failed");
}

TEST_CASE("input errors point into /input and carry the batch prefix") {
  CHECK(has_path(errors_of(json{{"type", "sleep"}, {"input", {{"ms", "soon"}}}}), "/input/ms"));
  CHECK(has_path(errors_of(json{{"type", "sleep"}, {"input", json::object()}}, "/jobs/3"), "/jobs/3/input/ms"));
}

TEST_CASE("numbers out of range never wrap around") {
  CHECK(has_path(errors_of(json{{"type", "sleep"}, {"input", {{"ms", 1}}}, {"priority", 18446744073709551615ull}}),
                 "/priority"));
  CHECK(has_path(errors_of(json{{"type", "sleep"}, {"input", {{"ms", 1}}}, {"timeout_ms", 99999999999}}),
                 "/timeout_ms"));
  CHECK(has_path(errors_of(json{{"type", "sleep"}, {"input", {{"ms", 1}}}, {"priority", -1001}}), "/priority"));
}

TEST_CASE("process-only types are refused on the thread model") {
  const auto errors = errors_of(json{{"type", "crash"}, {"input", {{"signal", "SEGV"}}}, {"model", "thread"}});
  CHECK(has_path(errors, "/model"));
}

TEST_CASE("JSON bodies: malformed, invalid UTF-8, too deep") {
  api::RequestLimits limits;
  CHECK(std::holds_alternative<json>(api::parse_json_body(R"({"a":[1,2,{"b":"}"}]})", limits)));
  auto bad = api::parse_json_body("{\"a\":", limits);
  REQUIRE(std::holds_alternative<api::Problem>(bad));
  CHECK(std::get<api::Problem>(bad).code == "invalid_json");
  CHECK(std::holds_alternative<api::Problem>(api::parse_json_body("{\"a\":\"\xff\xfe\"}", limits)));
  CHECK(std::holds_alternative<api::Problem>(api::parse_json_body(std::string(65, '[') + std::string(65, ']'), limits)));
  CHECK(std::holds_alternative<json>(api::parse_json_body(std::string(64, '[') + std::string(64, ']'), limits)));
  CHECK(std::holds_alternative<api::Problem>(api::parse_json_body("1e999999", limits)));
}

TEST_CASE("Prefer: wait and ?wait are parsed and capped") {
  api::RequestLimits limits;
  CHECK(api::parse_prefer_wait("wait=5", limits) == std::chrono::milliseconds(5000));
  CHECK(api::parse_prefer_wait("respond-async, wait=2.5", limits) == std::chrono::milliseconds(2500));
  CHECK(api::parse_prefer_wait("WAIT=1", limits) == std::chrono::milliseconds(1000));
  CHECK(api::parse_prefer_wait("wait=600", limits) == std::chrono::milliseconds(60000));
  CHECK_FALSE(api::parse_prefer_wait("wait=soon", limits));
  CHECK_FALSE(api::parse_prefer_wait("return=minimal", limits));
  CHECK(api::parse_wait_seconds("0", limits) == std::chrono::milliseconds(0));
  CHECK_FALSE(api::parse_wait_seconds("-1", limits));
  CHECK_FALSE(api::parse_wait_seconds("1s", limits));
  CHECK_FALSE(api::parse_wait_seconds("nan", limits));
}

TEST_CASE("list queries") {
  auto ok = api::parse_list_query("status=failed&type=hash&model=process&limit=5");
  REQUIRE(std::holds_alternative<api::ListQuery>(ok));
  const auto& query = std::get<api::ListQuery>(ok);
  CHECK(query.status == api::JobStatus::failed);
  CHECK(query.type == "hash");
  CHECK(query.model == api::Model::process);
  CHECK(query.limit == 5);
  for (const char* bad : {"limit=0", "limit=1001", "limit=x", "status=done", "model=gpu", "cursor=abc", "bogus=1"}) {
    auto parsed = api::parse_list_query(bad);
    REQUIRE_MESSAGE(std::holds_alternative<api::Problem>(parsed), bad);
    CHECK(std::get<api::Problem>(parsed).status == 400);
    CHECK(std::get<api::Problem>(parsed).code == "invalid_query");
  }
  const std::string id = "0193f1c2-7a4e-7d3a-9a43-5f0d7e1b2c3d";
  CHECK(api::parse_cursor(api::make_cursor(id)) == id);
}
