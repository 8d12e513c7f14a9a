#include <doctest/doctest.h>

#include <thread>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

#include "api/router.hpp"
#include "server/dispatcher.hpp"

using namespace switchyard;
using nlohmann::json;

TEST_CASE("routes match templates, never raw ids") {
  CHECK(api::match_route("/healthz").id == api::RouteId::healthz);
  CHECK(api::match_route("/v1/jobs").id == api::RouteId::jobs);
  CHECK(api::match_route("/v1/jobs:batch").id == api::RouteId::jobs_batch);
  const auto job = api::match_route("/v1/jobs/abc");
  CHECK(job.id == api::RouteId::job);
  CHECK(job.job_id == "abc");
  CHECK(job.route_template == "/v1/jobs/{id}");
  CHECK(api::match_route("/v1/jobs/abc/def").id == api::RouteId::unmatched);
  CHECK(api::match_route("/v1/jobs/").id == api::RouteId::unmatched);
  CHECK(api::match_route("/nope").route_template == "unmatched");
}

namespace {

/// A real dispatcher on a real io_context; the process pool is not started, so process jobs
/// stay queued, which is all these tests need.
struct Fixture {
  Fixture() : catalogue(workers::make_builtin_catalogue(options())), metrics(catalogue) {
    config.io_threads = 2;
    config.process_workers = 1;
    config.queue_limit = 3;
    dispatcher = std::make_unique<server::Dispatcher>(context, config, catalogue, metrics,
                                                      std::make_unique<server::MemoryJobStore>(100));
    api::RouterOptions router_options;
    router_options.openapi_yaml = "openapi: 3.1.0\n";
    router = std::make_unique<api::Router>(*dispatcher, router_options);
    for (int i = 0; i < 2; ++i) threads.emplace_back([this] { context.run(); });
  }
  ~Fixture() {
    work.reset();
    context.stop();
  }
  static workers::BuiltinOptions options() {
    workers::BuiltinOptions o;
    o.diagnostics = true;
    return o;
  }

  api::Response call(std::string method, std::string target, std::string body = {},
                     std::vector<std::pair<std::string, std::string>> headers = {{"Content-Type", "application/json"}}) {
    api::Request request{std::move(method), std::move(target), std::move(headers), std::move(body)};
    return boost::asio::co_spawn(context, router->handle(std::move(request)), boost::asio::use_future).get();
  }

  boost::asio::io_context context;
  std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work{context.get_executor()};
  server::Config config;
  workers::Catalogue catalogue;
  server::Metrics metrics;
  std::unique_ptr<server::Dispatcher> dispatcher;
  std::unique_ptr<api::Router> router;
  std::vector<std::jthread> threads;
};

}  // namespace

TEST_CASE("the router answers every error status with problem+json") {
  Fixture f;
  SUBCASE("404 unknown path and unknown id") {
    auto r = f.call("GET", "/nope");
    CHECK(r.status == 404);
    CHECK(r.content_type == "application/problem+json");
    CHECK(json::parse(r.body)["code"] == "not_found");
    CHECK(f.call("GET", "/v1/jobs/0193f1c2-7a4e-7d3a-9a43-5f0d7e1b2c3d").status == 404);
  }
  SUBCASE("405 with Allow") {
    auto r = f.call("PUT", "/v1/jobs");
    CHECK(r.status == 405);
    REQUIRE_FALSE(r.headers.empty());
    CHECK(r.headers[0].first == "Allow");
    CHECK(r.headers[0].second == "GET, HEAD, POST");
  }
  SUBCASE("415 and 400") {
    CHECK(f.call("POST", "/v1/jobs", "{}", {{"Content-Type", "text/plain"}}).status == 415);
    CHECK(f.call("POST", "/v1/jobs", "{").status == 400);
    CHECK(f.call("POST", "/v1/jobs", "").status == 400);
    CHECK(f.call("GET", "/v1/jobs?limit=0").status == 400);
  }
  SUBCASE("422 with paths") {
    auto r = f.call("POST", "/v1/jobs", R"({"type":"sleep","input":{"ms":"x"}})");
    CHECK(r.status == 422);
    auto body = json::parse(r.body);
    CHECK(body["code"] == "validation_failed");
    CHECK(body["errors"][0]["path"] == "/input/ms");
    auto batch = f.call("POST", "/v1/jobs:batch", R"({"jobs":[{"type":"sleep","input":{"ms":1}},{"type":"zzz"}]})");
    CHECK(batch.status == 422);
    CHECK(json::parse(batch.body)["errors"][0]["path"] == "/jobs/1/type");
  }
}

TEST_CASE("submit, read, list, idempotency and admission through the router") {
  Fixture f;
  auto r = f.call("POST", "/v1/jobs", R"({"type":"sleep","input":{"ms":1}})", {{"Content-Type", "application/json"}, {"Prefer", "wait=5"}});
  CHECK(r.status == 200);
  auto job = json::parse(r.body);
  CHECK(job["status"] == "succeeded");
  CHECK(job["model"] == "thread");
  CHECK(job["worker_pid"].is_null());

  const std::vector<std::pair<std::string, std::string>> keyed = {{"Content-Type", "application/json"},
                                                                 {"Idempotency-Key", "abc"}};
  auto first = f.call("POST", "/v1/jobs", R"({"type":"primes","input":{"n":10}})", keyed);
  CHECK(first.status == 202);
  auto again = f.call("POST", "/v1/jobs", R"({"input":{"n":10},"type":"primes"})", keyed);
  CHECK(again.status == 202);  // still queued: the pool is not started
  CHECK(json::parse(again.body)["id"] == json::parse(first.body)["id"]);
  CHECK(f.call("POST", "/v1/jobs", R"({"type":"primes","input":{"n":11}})", keyed).status == 409);

  // queue_limit is 3 per model: two more fit, the next is refused with Retry-After.
  CHECK(f.call("POST", "/v1/jobs", R"({"type":"primes","input":{"n":10}})").status == 202);
  CHECK(f.call("POST", "/v1/jobs", R"({"type":"primes","input":{"n":10}})").status == 202);
  auto full = f.call("POST", "/v1/jobs", R"({"type":"primes","input":{"n":10}})");
  CHECK(full.status == 429);
  CHECK(json::parse(full.body)["code"] == "queue_full");
  bool retry_after = false;
  for (auto& [name, value] : full.headers) retry_after |= name == "Retry-After" && std::stoi(value) >= 1;
  CHECK(retry_after);

  auto list = json::parse(f.call("GET", "/v1/jobs?model=process&limit=2").body);
  CHECK(list["jobs"].size() == 2);
  CHECK(list["next_cursor"].is_string());

  auto cancel = f.call("DELETE", "/v1/jobs/" + json::parse(first.body)["id"].get<std::string>());
  CHECK(cancel.status == 200);
  CHECK(json::parse(cancel.body)["status"] == "cancelled");
  auto again_cancel = f.call("DELETE", "/v1/jobs/" + json::parse(first.body)["id"].get<std::string>());
  CHECK(again_cancel.status == 409);
}
