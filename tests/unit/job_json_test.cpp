#include <doctest/doctest.h>

#include "api/job.hpp"

using namespace switchyard;
using nlohmann::json;

namespace {
// The text the responses used to carry: the tree form, dumped as the router dumps JSON.
std::string tree_text(const api::Job& job) {
  return api::to_json(job).dump(-1, ' ', false, json::error_handler_t::replace);
}
std::string direct_text(const api::Job& job) {
  std::string out = "prefix";  // appends, never overwrites
  api::append_json(out, job);
  REQUIRE(out.rfind("prefix", 0) == 0);
  return out.substr(6);
}
api::TimePoint at(std::int64_t ms) {
  return api::TimePoint(std::chrono::milliseconds(ms));
}
}  // namespace

TEST_CASE("append_json writes the same text as to_json().dump() for every shape of job") {
  api::Job queued;
  queued.id = "0193f1c2-7a4e-7d3a-9a43-5f0d7e1b2c3d";
  queued.type = "sleep";
  queued.created_at = at(1'764'000'000'123);
  queued.timeout_ms = 30000;
  CHECK(direct_text(queued) == tree_text(queued));

  api::Job done = queued;
  done.model = api::Model::process;
  done.status = api::JobStatus::succeeded;
  done.priority = -7;
  done.attempts = 2;
  done.max_attempts = 3;
  done.timeout_ms = 86'400'000;
  done.input = json{{"n", 1000000}, {"list", {1, 2.5, "x", nullptr, true}}, {"nested", {{"b", 1}, {"a", 2}}}};
  done.result = json{{"count", 78498}, {"ratio", 0.1}, {"big", 1e300}, {"whole", 3.0}};
  done.started_at = at(1'764'000'000'124);
  done.finished_at = at(1'764'000'001'999);
  done.queue_ms = 0.41;
  done.run_ms = 1875.0004;
  done.cpu_ms = 12345.6789;
  done.worker_pid = 4242;
  CHECK(direct_text(done) == tree_text(done));

  api::Job failed = done;
  failed.status = api::JobStatus::failed;
  failed.result = nullptr;
  failed.error =
      api::JobError{"handler_error", "quote \" backslash \\ newline \n tab \t control \x01 é ✓ bad \xff utf-8"};
  failed.cpu_ms = 0.0;
  failed.queue_ms.reset();
  CHECK(direct_text(failed) == tree_text(failed));

  api::Job odd = queued;
  odd.type = "a\"type";
  odd.input = json::object();
  odd.result = json::array();
  odd.run_ms = 1e-9;
  odd.created_at = at(0);
  CHECK(direct_text(odd) == tree_text(odd));
  CHECK(json::parse(direct_text(odd))["type"] == "a\"type");
}

TEST_CASE("format_time writes RFC 3339 UTC with milliseconds") {
  CHECK(api::format_time(at(0)) == "1970-01-01T00:00:00.000Z");
  CHECK(api::format_time(at(1'764'000'000'123)) == "2025-11-24T16:00:00.123Z");
  CHECK(api::format_time(at(1'709'251'199'999)) == "2024-02-29T23:59:59.999Z");
  CHECK(api::format_time(at(951'782'400'000)) == "2000-02-29T00:00:00.000Z");
  CHECK(api::format_time(at(4'102'444'800'000)) == "2100-01-01T00:00:00.000Z");
  // Sub-millisecond parts are cut, not rounded (as before: a time never moves forward).
  CHECK(api::format_time(at(1'764'000'000'123) + std::chrono::microseconds(999)) == "2025-11-24T16:00:00.123Z");
}
