// libFuzzer target: the request -> response path of the REST layer.
//
// The input is a short script of HTTP requests run, in order, through a real api::Router over the
// real built-in Catalogue (diagnostics on: every type and schema) and MapJobService, an in-process
// JobService that keeps jobs in a std::map. Routing, JSON parsing, schema validation (valijson),
// problem responses and listing are the real code; only the dispatcher is replaced.
//
// Input layout (see fuzz/README.md):
//   byte 0   scenario: bit 0 tokens configured, bit 1 /metrics protected, bits 2-3 health
//            (ready, starting, not ready with a reason, draining), bits 4-5 admission (accept,
//            queue_full, workers_unavailable, draining), bits 6-7 state of new jobs (queued,
//            running, succeeded, failed)
//   byte 1   bit 0 tight limits (small batch, queue, depth and wait)
//   rest     requests separated by a line "%%"; each is "METHOD TARGET", header lines
//            "Name: value" up to an empty line, then the body
//
// Every response must satisfy the REST contract's invariants (check_response); a violation aborts,
// which libFuzzer reports as a crash with the input that caused it.

#include <algorithm>
#include <array>
#include <memory>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <nlohmann/json.hpp>

#include "api/job_service.hpp"
#include "api/router.hpp"
#include "workers/frame.hpp"
#include "workers/job_type.hpp"

namespace {

using namespace switchyard;
using nlohmann::json;

constexpr std::string_view kToken = "s3cret-token";
constexpr std::string_view kOtherToken = "other token";  // a space: exercises the trimming
constexpr std::size_t kMaxRequests = 8;

// ---- the scenario -------------------------------------------------------------------------

enum class Admission { accept, queue_full, unavailable, draining };

struct Scenario {
  bool tokens = false;
  bool protect_metrics = false;
  int health = 0;  // 0 ready, 1 starting, 2 not ready (reason), 3 draining
  Admission admission = Admission::accept;
  api::JobStatus new_status = api::JobStatus::queued;
  bool tight = false;
};

Scenario read_scenario(std::uint8_t a, std::uint8_t b) {
  Scenario s;
  s.tokens = (a & 0x01) != 0;
  s.protect_metrics = (a & 0x02) != 0;
  s.health = (a >> 2) & 0x03;
  s.admission = static_cast<Admission>((a >> 4) & 0x03);
  static constexpr api::JobStatus kStates[] = {api::JobStatus::queued, api::JobStatus::running,
                                              api::JobStatus::succeeded, api::JobStatus::failed};
  s.new_status = kStates[(a >> 6) & 0x03];
  s.tight = (b & 0x01) != 0;
  return s;
}

api::RequestLimits limits_for(const Scenario& s) {
  api::RequestLimits limits;
  if (s.tight) {
    limits.default_timeout_ms = 5000;  // the server refuses a default above the maximum
    limits.max_batch = 4;
    limits.queue_limit = 2;
    limits.max_json_depth = 8;
    limits.max_wait_s = 0.5;
    limits.max_timeout_ms = 10000;
  }
  return limits;
}

const workers::Catalogue& catalogue() {
  static const workers::Catalogue instance = [] {
    workers::BuiltinOptions options;
    options.diagnostics = true;
    return workers::make_builtin_catalogue(options);
  }();
  return instance;
}

// ---- failing loudly -------------------------------------------------------------------------

struct Context {
  const api::Request* request = nullptr;
  const api::Response* response = nullptr;
};
Context current;

std::string printable(std::string_view text, std::size_t limit = 400) {
  std::string out;
  for (unsigned char c : text.substr(0, limit)) {
    if (c >= 0x20 && c < 0x7f) {
      out.push_back(static_cast<char>(c));
    } else {
      char buffer[8];
      std::snprintf(buffer, sizeof buffer, "\\x%02x", c);
      out += buffer;
    }
  }
  if (text.size() > limit) out += "...";
  return out;
}

[[noreturn]] void fail(const char* what, int line, const std::string& detail = {}) {
  std::fprintf(stderr, "\nfuzz_request: invariant violated (fuzz_request.cpp:%d): %s\n", line, what);
  if (!detail.empty()) std::fprintf(stderr, "  %s\n", detail.c_str());
  if (current.request != nullptr) {
    std::fprintf(stderr, "  request:  %s %s\n", printable(current.request->method).c_str(),
                 printable(current.request->target).c_str());
    for (const auto& [name, value] : current.request->headers) {
      std::fprintf(stderr, "            %s: %s\n", printable(name).c_str(), printable(value).c_str());
    }
    std::fprintf(stderr, "            body %s\n", printable(current.request->body).c_str());
  }
  if (current.response != nullptr) {
    std::fprintf(stderr, "  response: %d %s (route %s)\n            body %s\n", current.response->status,
                 std::string(current.response->content_type).c_str(), current.response->route.c_str(),
                 printable(current.response->body).c_str());
  }
  std::abort();
}

#define FUZZ_CHECK(cond, ...)                                 \
  do {                                                        \
    if (!(cond)) fail(#cond, __LINE__ __VA_OPT__(, ) __VA_ARGS__); \
  } while (0)

// ---- the job service -----------------------------------------------------------------------

/// A JobService that keeps jobs in a map and never runs them: a job takes the scenario's state at
/// submission, and a wait finishes it. Ids are deterministic (00000000-0000-0000-0000-00000000000N)
/// so that seeds can name them. It also checks what the router hands it: only valid requests.
class MapJobService final : public api::JobService {
 public:
  MapJobService(const workers::Catalogue& catalogue, const Scenario& scenario, const api::RequestLimits& limits)
      : catalogue_(catalogue), scenario_(scenario), limits_(limits) {}

  boost::asio::awaitable<api::SubmitResult> submit(std::vector<api::JobRequest> requests,
                                                   const std::optional<std::string>& key,
                                                   const std::string& fingerprint) override {
    co_return submit_now(std::move(requests), key, fingerprint);
  }

  api::SubmitResult submit_now(std::vector<api::JobRequest> requests, const std::optional<std::string>& key,
                               const std::string& fingerprint) {
    FUZZ_CHECK(!requests.empty());
    FUZZ_CHECK(requests.size() <= limits_.max_batch);
    for (const auto& r : requests) check_job_request(r);
    if (key) {
      FUZZ_CHECK(!key->empty() && key->size() <= 255);
      FUZZ_CHECK(std::all_of(key->begin(), key->end(), [](unsigned char c) { return c >= 0x21 && c <= 0x7e; }));
    }
    FUZZ_CHECK(fingerprint.empty() == !key.has_value());

    api::SubmitResult result;
    switch (scenario_.admission) {
      case Admission::queue_full:
        result.kind = api::SubmitResult::Kind::queue_full;
        result.detail = "the queue is full";
        return result;
      case Admission::unavailable:
        result.kind = api::SubmitResult::Kind::unavailable;
        result.detail = "the process workers fail to boot";
        return result;
      case Admission::draining:
        result.kind = api::SubmitResult::Kind::draining;
        result.detail = "the server is shutting down";
        return result;
      case Admission::accept:
        break;
    }
    if (key) {
      if (auto it = keys_.find(*key); it != keys_.end()) {
        if (it->second.first != fingerprint) {
          result.kind = api::SubmitResult::Kind::conflict;
          result.detail = "Idempotency-Key was used with a different request";
          return result;
        }
        result.kind = api::SubmitResult::Kind::replayed;
        for (const auto& id : it->second.second) result.jobs.push_back(jobs_.at(id));
        return result;
      }
    }
    std::vector<std::string> ids;
    for (auto& r : requests) {
      api::Job job;
      job.id = next_id();
      job.type = r.type->name;
      job.model = r.model;
      job.priority = r.priority;
      job.timeout_ms = r.timeout_ms;
      job.input = std::move(r.input);
      job.created_at = api::TimePoint(std::chrono::seconds(1'700'000'000));
      set_status(job, scenario_.new_status);
      ids.push_back(job.id);
      result.jobs.push_back(job);
      jobs_.emplace(job.id, std::move(job));
    }
    if (key) keys_.emplace(*key, std::make_pair(fingerprint, std::move(ids)));
    result.kind = api::SubmitResult::Kind::accepted;
    return result;
  }

  boost::asio::awaitable<std::optional<api::Job>> get(std::string id) override {
    if (auto it = jobs_.find(id); it != jobs_.end()) co_return it->second;
    co_return std::nullopt;
  }

  boost::asio::awaitable<std::optional<api::Job>> wait(std::string id, std::chrono::milliseconds max_wait) override {
    FUZZ_CHECK(max_wait.count() >= 0);
    FUZZ_CHECK(max_wait.count() <= static_cast<std::int64_t>(limits_.max_wait_s * 1000.0) + 1);
    auto it = jobs_.find(id);
    if (it == jobs_.end()) co_return std::nullopt;
    if (!api::is_terminal(it->second.status)) set_status(it->second, api::JobStatus::succeeded);
    co_return it->second;
  }

  boost::asio::awaitable<api::ListPage> list(api::ListQuery query) override {
    FUZZ_CHECK(query.limit >= 1 && query.limit <= 1000);
    if (query.after_id) FUZZ_CHECK(workers::parse_uuid(*query.after_id).has_value());
    api::ListPage page;
    for (auto it = jobs_.rbegin(); it != jobs_.rend(); ++it) {  // ids grow: newest first
      const api::Job& job = it->second;
      if (query.after_id && job.id >= *query.after_id) continue;
      if (query.status && job.status != *query.status) continue;
      if (query.type && job.type != *query.type) continue;
      if (query.model && job.model != *query.model) continue;
      if (page.jobs.size() == query.limit) {
        page.next_cursor = api::make_cursor(page.jobs.back().id);
        break;
      }
      page.jobs.push_back(job);
    }
    co_return page;
  }

  boost::asio::awaitable<api::CancelResult> cancel(std::string id) override {
    api::CancelResult result;
    auto it = jobs_.find(id);
    if (it == jobs_.end()) co_return result;  // not_found
    api::Job& job = it->second;
    if (api::is_terminal(job.status)) {
      result.kind = api::CancelResult::Kind::terminal;
    } else if (job.status == api::JobStatus::queued) {
      result.kind = api::CancelResult::Kind::dequeued;
    } else {
      result.kind = job.model == api::Model::process ? api::CancelResult::Kind::killed
                                                     : api::CancelResult::Kind::requested;
    }
    if (result.kind != api::CancelResult::Kind::terminal) set_status(job, api::JobStatus::cancelled);
    result.job = job;
    co_return result;
  }

  [[nodiscard]] json stats() const override {
    return {{"jobs", jobs_.size()}, {"idempotency_keys", keys_.size()}, {"scenario", scenario_.health}};
  }

  std::string metrics_text() override {
    return "# TYPE switchyard_jobs gauge\nswitchyard_jobs " + std::to_string(jobs_.size()) + "\n";
  }

  [[nodiscard]] api::Health health() const override {
    api::Health h;
    h.ready = scenario_.health == 0 || scenario_.health == 3;
    h.draining = scenario_.health == 3;
    if (scenario_.health == 2) h.not_ready_reason = "the process workers fail to boot";
    return h;
  }

  [[nodiscard]] const workers::Catalogue& catalogue() const override { return catalogue_; }

  [[nodiscard]] bool has(const std::string& id) const { return jobs_.contains(id); }

  /// Forgets every job and key: each input starts from an empty service.
  void reset(const Scenario& scenario) {
    scenario_ = scenario;
    jobs_.clear();
    keys_.clear();
    counter_ = 0;
  }

 private:
  /// The router must hand over only requests that passed validation.
  void check_job_request(const api::JobRequest& r) const {
    FUZZ_CHECK(r.type != nullptr);
    FUZZ_CHECK(catalogue_.find(r.type->name) == r.type, "a job type from outside the catalogue");
    FUZZ_CHECK(r.input.is_object());
    FUZZ_CHECK(catalogue_.validate(*r.type, r.input).empty(), "an input that fails its schema: " + r.input.dump());
    FUZZ_CHECK(r.priority >= api::kMinPriority && r.priority <= api::kMaxPriority);
    FUZZ_CHECK(r.timeout_ms >= 1 && r.timeout_ms <= limits_.max_timeout_ms);
    FUZZ_CHECK(!(r.type->process_only && r.model == api::Model::thread), "a process-only type on a thread");
  }

  std::string next_id() {
    workers::FrameJobId bytes{};
    auto n = ++counter_;
    for (int i = 15; i >= 8 && n != 0; --i, n >>= 8) bytes[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(n & 0xff);
    return workers::format_uuid(bytes);
  }

  static void set_status(api::Job& job, api::JobStatus status) {
    job.status = status;
    const api::TimePoint t(std::chrono::seconds(1'700'000'001));
    if (status != api::JobStatus::queued) {
      job.started_at = t;
      job.attempts = 1;
      job.worker_pid = job.model == api::Model::process ? std::optional<int>(4242) : std::nullopt;
    }
    if (api::is_terminal(status)) {
      job.finished_at = t;
      job.queue_ms = 1.5;
      job.run_ms = 2.25;
      if (status == api::JobStatus::succeeded) job.result = {{"echo", job.input}};
      if (status == api::JobStatus::failed) job.error = api::JobError{"handler_error", "it failed"};
      if (status == api::JobStatus::cancelled) job.error = api::JobError{"cancelled", "cancelled by request"};
    }
  }

  const workers::Catalogue& catalogue_;
  Scenario scenario_;
  api::RequestLimits limits_;
  std::map<std::string, api::Job> jobs_;
  std::map<std::string, std::pair<std::string, std::vector<std::string>>> keys_;  // key -> fingerprint, ids
  std::uint64_t counter_ = 0;
};

// ---- turning bytes into requests -----------------------------------------------------------

std::string_view next_line(std::string_view& text) {
  const auto end = text.find('\n');
  std::string_view line = text.substr(0, end);
  text.remove_prefix(end == std::string_view::npos ? text.size() : end + 1);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  return line;
}

api::Request parse_request(std::string_view text) {
  api::Request request;
  const std::string_view first = next_line(text);
  const auto space = first.find(' ');
  request.method = std::string(first.substr(0, space));
  request.target = space == std::string_view::npos ? "/" : std::string(first.substr(space + 1));
  while (!text.empty()) {
    const std::string_view line = next_line(text);
    if (line.empty()) break;
    const auto colon = line.find(':');
    std::string_view name = line.substr(0, colon);
    std::string_view value = colon == std::string_view::npos ? std::string_view() : line.substr(colon + 1);
    while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
    request.headers.emplace_back(std::string(name), std::string(value));
  }
  request.body = std::string(text);
  return request;
}

std::vector<std::string_view> split_requests(std::string_view text) {
  static constexpr std::string_view kSeparator = "\n%%\n";
  std::vector<std::string_view> out;
  while (out.size() + 1 < kMaxRequests) {
    const auto at = text.find(kSeparator);
    if (at == std::string_view::npos) break;
    out.push_back(text.substr(0, at));
    text.remove_prefix(at + kSeparator.size());
  }
  out.push_back(text);
  return out;
}

// ---- the invariants ------------------------------------------------------------------------

std::optional<std::string_view> header_of(const std::vector<std::pair<std::string, std::string>>& headers,
                                          std::string_view name) {
  for (const auto& [key, value] : headers) {
    if (api::iequals(key, name)) return std::string_view(value);
  }
  return std::nullopt;
}

bool is_route_template(std::string_view route) {
  static constexpr std::string_view kRoutes[] = {"/healthz",      "/readyz",   "/metrics",  "/openapi.yaml",
                                                 "/v1/job-types", "/v1/stats", "/v1/jobs",  "/v1/jobs:batch",
                                                 "/v1/jobs/{id}", "unmatched"};
  return std::find(std::begin(kRoutes), std::end(kRoutes), route) != std::end(kRoutes);
}

/// A valid RFC 6901 JSON Pointer; nlohmann throws parse_error otherwise.
std::optional<json::json_pointer> pointer(const std::string& text) {
  try {
    return json::json_pointer(text);
  } catch (const json::exception&) {
    return std::nullopt;
  }
}

/// The request body as JSON when it is JSON (for resolving error paths).
std::optional<json> body_json(const api::Request& request) {
  json parsed = json::parse(request.body, nullptr, false);
  if (parsed.is_discarded()) return std::nullopt;
  return parsed;
}

void check_problem(const api::Request& request, const api::Response& response) {
  FUZZ_CHECK(response.content_type == "application/problem+json");
  const json body = json::parse(response.body, nullptr, false);
  FUZZ_CHECK(body.is_object(), "a problem body that is not a JSON object");
  FUZZ_CHECK(body.contains("code") && body["code"].is_string() && !body["code"].get<std::string>().empty());
  FUZZ_CHECK(body.contains("status") && body["status"] == response.status);
  FUZZ_CHECK(body.contains("title") && body["title"].is_string());
  FUZZ_CHECK(body.contains("detail") && body["detail"].is_string());
  const std::string code = body["code"].get<std::string>();
  if (response.status == 401) FUZZ_CHECK(header_of(response.headers, "WWW-Authenticate").has_value());
  if (response.status == 405) FUZZ_CHECK(header_of(response.headers, "Allow").has_value());
  if (response.status == 429 || response.status == 503) {
    const auto retry = header_of(response.headers, "Retry-After");
    FUZZ_CHECK(retry.has_value() && !retry->empty() &&
               std::all_of(retry->begin(), retry->end(), [](char c) { return c >= '0' && c <= '9'; }));
  }
  if (response.status == 422) {
    FUZZ_CHECK(code == "validation_failed" || code == "unknown_job_type");
    FUZZ_CHECK(body.contains("errors") && body["errors"].is_array() && !body["errors"].empty());
    const auto request_body = body_json(request);
    FUZZ_CHECK(request_body.has_value(), "a 422 for a body that is not JSON");
    for (const auto& error : body["errors"]) {
      FUZZ_CHECK(error.is_object() && error.contains("path") && error["path"].is_string() &&
                 error.contains("message") && error["message"].is_string());
      const std::string path = error["path"].get<std::string>();
      // The contract (openapi.yaml): errors[].path is a JSON Pointer into the request body.
      const auto ptr = pointer(path);
      FUZZ_CHECK(ptr.has_value(), "errors[].path is not a JSON Pointer: " + printable(path));
      if (error["message"] == "unknown field") {
        FUZZ_CHECK(request_body->contains(*ptr), "an unknown field's path does not point at it: " + printable(path));
      }
    }
  }
}

void check_success(const api::Request& request, const api::Response& response, const MapJobService& service) {
  if (response.content_type.starts_with("application/json")) {
    const json body = json::parse(response.body, nullptr, false);
    FUZZ_CHECK(!body.is_discarded(), "a 2xx JSON body that does not parse");
    FUZZ_CHECK(body.is_object());
    if (response.route == "/v1/jobs" && request.method == "POST") {
      FUZZ_CHECK(response.status == 200 || response.status == 202);
      FUZZ_CHECK(body.contains("id") && body["id"].is_string() && service.has(body["id"].get<std::string>()));
      const auto location = header_of(response.headers, "Location");
      FUZZ_CHECK(location && *location == "/v1/jobs/" + body["id"].get<std::string>());
    }
    if (response.route == "/v1/jobs:batch") {
      FUZZ_CHECK(body.contains("jobs") && body["jobs"].is_array() && !body["jobs"].empty());
      for (const auto& job : body["jobs"]) FUZZ_CHECK(service.has(job.at("id").get<std::string>()));
    }
    if (response.route == "/v1/jobs" && request.method != "POST") {
      FUZZ_CHECK(body.contains("jobs") && body["jobs"].is_array() && body.contains("next_cursor"));
      FUZZ_CHECK(body["next_cursor"].is_null() ||
                 api::parse_cursor(body["next_cursor"].get<std::string>()).has_value());
    }
  } else {
    FUZZ_CHECK(response.route == "/metrics" || response.route == "/openapi.yaml",
               "a non-JSON 2xx from " + response.route);
  }
}

void check_response(const api::Request& request, const api::Response& response, const MapJobService& service,
                    const Scenario& scenario) {
  FUZZ_CHECK(response.status >= 200 && response.status <= 599);
  FUZZ_CHECK(response.status != 500, "an internal error: a bug, not a client mistake");
  FUZZ_CHECK(is_route_template(response.route));
  if (response.status >= 400) {
    check_problem(request, response);
  } else {
    FUZZ_CHECK(response.status < 300);
    check_success(request, response, service);
  }

  // Authentication: with tokens, a /v1 request that does not carry one is refused.
  const std::string_view target = request.target;
  const bool v1 = target.substr(0, target.find('?')).starts_with("/v1/");
  if (!scenario.tokens) {
    FUZZ_CHECK(response.status != 401);
  } else if (v1) {
    bool carries = false;
    for (const auto& [name, value] : request.headers) {
      if (api::iequals(name, "Authorization") &&
          (value.find(kToken) != std::string::npos || value.find(kOtherToken) != std::string::npos)) {
        carries = true;
      }
    }
    if (!carries) FUZZ_CHECK(response.status == 401, "a /v1 request without a token was let through");
    const auto first = request.header("Authorization");
    // Two Authorization fields are refused on purpose (which one would a proxy have checked?).
    const auto fields = std::count_if(request.headers.begin(), request.headers.end(),
                                      [](const auto& field) { return api::iequals(field.first, "Authorization"); });
    if (fields == 1 && first &&
        (*first == "Bearer " + std::string(kToken) || *first == "bearer  " + std::string(kOtherToken))) {
      FUZZ_CHECK(response.status != 401, "a valid token was refused");
    }
  }
}

/// A router and its service for one configuration (tokens, /metrics protection, tight limits):
/// built once, since the router renders the catalogue when it is made; the service is reset.
struct Fixture {
  Fixture(const Scenario& scenario, const api::RouterOptions& options)
      : service(catalogue(), scenario, options.limits), router(service, options) {}
  MapJobService service;
  api::Router router;
};

Fixture& fixture_for(const Scenario& scenario) {
  static std::array<std::unique_ptr<Fixture>, 8> cache;
  auto& slot = cache[static_cast<std::size_t>(scenario.tokens) | static_cast<std::size_t>(scenario.protect_metrics) << 1 |
                     static_cast<std::size_t>(scenario.tight) << 2];
  if (!slot) {
    api::RouterOptions options;
    options.limits = limits_for(scenario);
    if (scenario.tokens) options.tokens = {std::string(kToken), std::string(kOtherToken)};
    options.protect_metrics = scenario.protect_metrics;
    options.openapi_yaml = "openapi: 3.1.0\n";
    slot = std::make_unique<Fixture>(scenario, options);
  }
  slot->service.reset(scenario);
  return *slot;
}

api::Response run(api::Router& router, api::Request request) {
  static boost::asio::io_context io;
  io.restart();
  std::optional<api::Response> out;
  std::exception_ptr error;
  boost::asio::co_spawn(io, router.handle(std::move(request)), [&](std::exception_ptr e, api::Response r) {
    error = e;
    out = std::move(r);
  });
  io.run();
  if (error) {
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      fail("Router::handle threw", __LINE__, e.what());
    } catch (...) {
      fail("Router::handle threw a non-std exception", __LINE__);
    }
  }
  FUZZ_CHECK(out.has_value(), "Router::handle did not complete");
  return std::move(*out);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  static_cast<void>(catalogue());  // compile the schemas once, outside the timed runs
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // SWITCHYARD_FUZZ_VERBOSE=1: print each request and its response (to check what a seed does).
  static const bool verbose = std::getenv("SWITCHYARD_FUZZ_VERBOSE") != nullptr;
  if (size < 2) return -1;  // not even a scenario: keep it out of the corpus
  const Scenario scenario = read_scenario(data[0], data[1]);
  const std::string_view text(reinterpret_cast<const char*>(data + 2), size - 2);

  Fixture& fixture = fixture_for(scenario);
  MapJobService& service = fixture.service;
  api::Router& router = fixture.router;

  for (const std::string_view part : split_requests(text)) {
    const api::Request request = parse_request(part);
    current = {&request, nullptr};
    const api::Response response = run(router, request);
    current.response = &response;
    if (verbose) {
      std::fprintf(stderr, "%s %s -> %d %s\n", printable(request.method, 20).c_str(),
                   printable(request.target, 80).c_str(), response.status, printable(response.body, 160).c_str());
    }
    check_response(request, response, service, scenario);
    current = {};
  }
  return 0;
}
