#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <vector>

#include "workers/job_type.hpp"

#include "tests/unit/field_error_printing.hpp"

namespace {

using switchyard::workers::Catalogue;
using switchyard::workers::FieldError;
using switchyard::workers::JobType;
using switchyard::workers::Kind;
using switchyard::workers::Outcome;
using switchyard::workers::StopFlag;
using switchyard::workers::StopReason;
using Json = nlohmann::json;

JobType blocking_type(std::string name, Json schema) {
  JobType t;
  t.name = std::move(name);
  t.input_schema = std::move(schema);
  t.blocking = [](const Json&, const StopFlag&) { return Outcome::success(Json::object()); };
  return t;
}

// A schema with nesting, arrays and awkward member names, to exercise the path translation.
Json nested_schema() {
  return Json::parse(R"({
    "type": "object",
    "additionalProperties": false,
    "required": ["count"],
    "properties": {
      "count": {"type": "integer", "minimum": 0, "maximum": 10},
      "ratio": {"type": "number", "exclusiveMinimum": 0},
      "mode": {"type": "string", "enum": ["fast", "slow"]},
      "name": {"type": "string", "minLength": 2, "maxLength": 4},
      "a/b": {"type": "integer"},
      "m~n": {"type": "integer"},
      "items": {"type": "array", "items": {"type": "integer", "minimum": 0}},
      "tags": {"type": "object", "additionalProperties": {"type": "string"}},
      "inner": {"type": "object", "additionalProperties": false, "required": ["x"],
                "properties": {"x": {"type": "boolean"}}}
    }
  })");
}

}  // namespace

TEST_CASE("to_string names kinds and stop reasons") {
  CHECK(to_string(Kind::io) == "io");
  CHECK(to_string(Kind::cpu) == "cpu");
  CHECK(to_string(StopReason::none) == "none");
  CHECK(to_string(StopReason::timeout) == "timeout");
  CHECK(to_string(StopReason::cancel) == "cancel");
  CHECK(to_string(StopReason::shutdown) == "shutdown");
}

TEST_CASE("StopFlag keeps the first reason") {
  StopFlag flag;
  CHECK_FALSE(flag.stop_requested());
  CHECK(flag.request(StopReason::timeout));
  CHECK_FALSE(flag.request(StopReason::cancel));
  CHECK(flag.reason() == StopReason::timeout);
}

TEST_CASE("Catalogue::add rejects malformed types") {
  Catalogue catalogue;
  catalogue.add(blocking_type("a", Json{{"type", "object"}}));

  SUBCASE("duplicate name") {
    CHECK_THROWS_WITH_AS(catalogue.add(blocking_type("a", Json{{"type", "object"}})), "duplicate job type 'a'",
                         std::invalid_argument);
  }
  SUBCASE("no implementation") {
    JobType t;
    t.name = "none";
    t.input_schema = Json::object();
    CHECK_THROWS_AS(catalogue.add(t), std::invalid_argument);
  }
  SUBCASE("two implementations") {
    JobType t = blocking_type("both", Json::object());
    t.async = [](Json) -> boost::asio::awaitable<Outcome> { co_return Outcome::success(nullptr); };
    CHECK_THROWS_AS(catalogue.add(t), std::invalid_argument);
  }
  SUBCASE("schema that does not compile") {
    CHECK_THROWS_AS(catalogue.add(blocking_type("bad", Json{{"type", "no-such-type"}})), std::invalid_argument);
    CHECK_THROWS_AS(catalogue.add(blocking_type("bad", Json{{"minimum", "zero"}})), std::invalid_argument);
  }
  SUBCASE("schema that is not an object") {
    CHECK_THROWS_AS(catalogue.add(blocking_type("bad", Json::array())), std::invalid_argument);
  }
  SUBCASE("empty name") { CHECK_THROWS_AS(catalogue.add(blocking_type("", Json::object())), std::invalid_argument); }
  CHECK(catalogue.types().size() == 1);  // a rejected type leaves nothing behind
}

TEST_CASE("Catalogue::find and types keep insertion order") {
  Catalogue catalogue;
  catalogue.add(blocking_type("z", Json::object()));
  catalogue.add(blocking_type("a", Json::object()));
  REQUIRE(catalogue.types().size() == 2);
  CHECK(catalogue.types()[0].name == "z");
  CHECK(catalogue.types()[1].name == "a");
  REQUIRE(catalogue.find("a") != nullptr);
  CHECK(catalogue.find("a")->name == "a");
  CHECK(catalogue.find("missing") == nullptr);

  Catalogue moved = std::move(catalogue);
  REQUIRE(moved.find("z") != nullptr);
  CHECK(moved.validate(*moved.find("z"), Json::object()).empty());
}

TEST_CASE("Catalogue::validate reports JSON Pointer paths and clear messages") {
  Catalogue catalogue;
  catalogue.add(blocking_type("t", nested_schema()));
  const JobType& type = *catalogue.find("t");
  auto errors = [&](const char* input) { return catalogue.validate(type, Json::parse(input)); };

  CHECK(errors(R"({"count": 3})").empty());
  CHECK(errors("5") == std::vector<FieldError>{{"", "must be an object"}});
  CHECK(errors("{}") == std::vector<FieldError>{{"/count", "is required"}});
  CHECK(errors(R"({"count": "3"})") == std::vector<FieldError>{{"/count", "must be an integer"}});
  CHECK(errors(R"({"count": 1.5})") == std::vector<FieldError>{{"/count", "must be an integer"}});
  // One error per leaf: the type error wins over the range error.
  CHECK(errors(R"({"count": -1.5})") == std::vector<FieldError>{{"/count", "must be an integer"}});
  CHECK(errors(R"({"count": -1})") == std::vector<FieldError>{{"/count", "must be >= 0"}});
  CHECK(errors(R"({"count": 11})") == std::vector<FieldError>{{"/count", "must be <= 10"}});
  CHECK(errors(R"({"count": 1, "ratio": 0})") == std::vector<FieldError>{{"/ratio", "must be > 0"}});
  CHECK(errors(R"({"count": 1, "mode": "medium"})") ==
        std::vector<FieldError>{{"/mode", R"(must be one of "fast", "slow")"}});
  CHECK(errors(R"({"count": 1, "name": "a"})") ==
        std::vector<FieldError>{{"/name", "must be at least 2 characters long"}});
  CHECK(errors(R"({"count": 1, "name": "abcde"})") ==
        std::vector<FieldError>{{"/name", "must be at most 4 characters long"}});

  SUBCASE("unknown fields are all named, each at its own path") {
    auto found = errors(R"({"count": 1, "extra": 1, "more": 2})");
    std::sort(found.begin(), found.end(), [](auto& x, auto& y) { return x.path < y.path; });
    CHECK(found == std::vector<FieldError>{{"/extra", "unknown field"}, {"/more", "unknown field"}});
  }
  SUBCASE("member names are escaped per RFC 6901") {
    CHECK(errors(R"({"count": 1, "a/b": "x"})") == std::vector<FieldError>{{"/a~1b", "must be an integer"}});
    CHECK(errors(R"({"count": 1, "m~n": "x"})") == std::vector<FieldError>{{"/m~0n", "must be an integer"}});
    CHECK(errors(R"({"count": 1, "tags": {"x/y~z": 1}})") ==
          std::vector<FieldError>{{"/tags/x~1y~0z", "must be a string"}});
  }
  SUBCASE("array items and nested objects, without parent summaries") {
    CHECK(errors(R"({"count": 1, "items": [0, 1, 2, -3]})") ==
          std::vector<FieldError>{{"/items/3", "must be >= 0"}});
    CHECK(errors(R"({"count": 1, "inner": {}})") == std::vector<FieldError>{{"/inner/x", "is required"}});
    CHECK(errors(R"({"count": 1, "inner": {"x": true, "y": 0}})") ==
          std::vector<FieldError>{{"/inner/y", "unknown field"}});
    CHECK(errors(R"({"count": 1, "inner": {"x": 1}})") == std::vector<FieldError>{{"/inner/x", "must be a boolean"}});
  }
  SUBCASE("several problems at once") {
    auto found = errors(R"({"count": 99, "mode": 1, "extra": true})");
    std::sort(found.begin(), found.end(), [](auto& x, auto& y) { return x.path < y.path; });
    CHECK(found == std::vector<FieldError>{
                       {"/count", "must be <= 10"}, {"/extra", "unknown field"}, {"/mode", "must be a string"}});
  }
}

TEST_CASE("Catalogue::validate runs the extra check only when the schema passed") {
  Catalogue catalogue;
  JobType t = blocking_type("t", Json::parse(R"({"type": "object", "properties": {"n": {"type": "integer"}}})"));
  int calls = 0;
  t.extra_check = [&calls](const Json& input) {
    ++calls;
    return input.value("n", 0) == 13 ? std::vector<FieldError>{{"/n", "is unlucky"}} : std::vector<FieldError>{};
  };
  catalogue.add(std::move(t));
  const JobType& type = *catalogue.find("t");

  CHECK(catalogue.validate(type, Json{{"n", "x"}}) == std::vector<FieldError>{{"/n", "must be an integer"}});
  CHECK(calls == 0);
  CHECK(catalogue.validate(type, Json{{"n", 13}}) == std::vector<FieldError>{{"/n", "is unlucky"}});
  CHECK(catalogue.validate(type, Json{{"n", 12}}).empty());
  CHECK(calls == 2);
}

TEST_CASE("Catalogue::validate is safe to call from several threads") {
  Catalogue catalogue;
  auto schema = nested_schema();
  schema["properties"]["name"]["pattern"] = "^[a-z]+$";  // valijson caches regexes per validator
  catalogue.add(blocking_type("t", schema));
  const JobType& type = *catalogue.find("t");
  const Json good = Json::parse(R"({"count": 2, "name": "abc", "items": [1, 2]})");
  const Json bad = Json::parse(R"({"count": 2, "name": "ABC", "items": [1, -2]})");

  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&] {
      for (int k = 0; k < 500; ++k) {
        if (!catalogue.validate(type, good).empty()) ++wrong;
        if (catalogue.validate(type, bad).size() != 2) ++wrong;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  CHECK(wrong == 0);
  auto found = catalogue.validate(type, bad);
  std::sort(found.begin(), found.end(), [](auto& x, auto& y) { return x.path < y.path; });
  CHECK(found == std::vector<FieldError>{{"/items/1", "must be >= 0"}, {"/name", R"(must match the pattern "^[a-z]+$")"}});
}
