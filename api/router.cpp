#include "api/router.hpp"

#include <algorithm>
#include <array>
#include <cstring>

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <spdlog/spdlog.h>

namespace switchyard::api {

namespace {

constexpr std::string_view kJobsPrefix = "/v1/jobs/";

std::string dump(const nlohmann::json& value) {
  return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

Response json_response(int status, const nlohmann::json& body) {
  Response response;
  response.status = status;
  response.body = dump(body);
  return response;
}

/// A response whose body is one job resource.
Response job_response(int status, const Job& job) {
  Response response;
  response.status = status;
  append_json(response.body, job);
  return response;
}

/// `{"jobs": [...]}` and, for a listing, its `next_cursor` (the keys in nlohmann::json's order).
Response jobs_response(int status, const std::vector<Job>& jobs, const std::optional<std::string>* cursor = nullptr) {
  Response response;
  response.status = status;
  std::string& body = response.body;
  body.reserve(64 + jobs.size() * 512);
  body += R"({"jobs":[)";
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    if (i > 0) body += ',';
    append_json(body, jobs[i]);
  }
  body += ']';
  if (cursor != nullptr) {
    body += R"(,"next_cursor":)";
    body += *cursor ? dump(nlohmann::json(**cursor)) : std::string("null");
  }
  body += '}';
  return response;
}

bool method_allowed(std::string_view allow, std::string_view method) {
  std::size_t pos = 0;
  while (pos < allow.size()) {
    auto end = allow.find(',', pos);
    auto item = allow.substr(pos, end == std::string_view::npos ? std::string_view::npos : end - pos);
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    if (item == method) return true;
    if (end == std::string_view::npos) break;
    pos = end + 1;
  }
  return false;
}

/// application/json, optionally with parameters (charset=utf-8).
bool is_json_content_type(std::optional<std::string_view> value) {
  if (!value) return false;
  auto type = value->substr(0, value->find(';'));
  while (!type.empty() && (type.back() == ' ' || type.back() == '\t')) type.remove_suffix(1);
  return iequals(type, "application/json");
}

/// 1..255 visible ASCII characters.
bool valid_idempotency_key(std::string_view key) {
  if (key.empty() || key.size() > 255) return false;
  for (unsigned char c : key) {
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

std::array<unsigned char, SHA256_DIGEST_LENGTH> sha256(std::string_view text) {
  std::array<unsigned char, SHA256_DIGEST_LENGTH> digest{};
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), digest.data());
  return digest;
}

Response accepted_or_done(const Job& job, bool replay, std::optional<std::chrono::milliseconds> waited = {}) {
  const bool terminal = is_terminal(job.status);
  Response response = job_response(terminal && (replay || waited) ? 200 : 202, job);
  response.headers.emplace_back("Location", "/v1/jobs/" + job.id);
  if (waited) {
    std::string seconds = std::to_string(waited->count() / 1000);
    if (const auto ms = waited->count() % 1000; ms != 0) {
      seconds += "." + std::to_string(1000 + ms).substr(1);
      while (seconds.back() == '0') seconds.pop_back();
    }
    response.headers.emplace_back("Preference-Applied", "wait=" + seconds);
  }
  return response;
}

/// A short, fixed-size fingerprint of a request body for idempotency checks.
std::string fingerprint(std::string_view kind, const nlohmann::json& body) {
  const auto digest = sha256(dump(body));
  std::string out(kind);
  static constexpr char kHex[] = "0123456789abcdef";
  for (unsigned char byte : digest) {
    out.push_back(kHex[byte >> 4]);
    out.push_back(kHex[byte & 0x0f]);
  }
  return out;
}

}  // namespace

RouteMatch match_route(std::string_view path) {
  if (path == "/healthz") return {RouteId::healthz, "/healthz", "GET, HEAD", {}};
  if (path == "/readyz") return {RouteId::readyz, "/readyz", "GET, HEAD", {}};
  if (path == "/metrics") return {RouteId::metrics, "/metrics", "GET, HEAD", {}};
  if (path == "/openapi.yaml") return {RouteId::openapi, "/openapi.yaml", "GET, HEAD", {}};
  if (path == "/v1/job-types") return {RouteId::job_types, "/v1/job-types", "GET, HEAD", {}};
  if (path == "/v1/stats") return {RouteId::stats, "/v1/stats", "GET, HEAD", {}};
  if (path == "/v1/jobs") return {RouteId::jobs, "/v1/jobs", "GET, HEAD, POST", {}};
  if (path == "/v1/jobs:batch") return {RouteId::jobs_batch, "/v1/jobs:batch", "POST", {}};
  if (path.starts_with(kJobsPrefix)) {
    auto id = path.substr(kJobsPrefix.size());
    if (!id.empty() && id.find('/') == std::string_view::npos) {
      return {RouteId::job, "/v1/jobs/{id}", "GET, HEAD, DELETE", std::string(id)};
    }
  }
  return {};
}

Router::Router(JobService& service, RouterOptions options) : service_(service), options_(std::move(options)) {
  nlohmann::json types = nlohmann::json::array();
  for (const auto& type : service_.catalogue().types()) {
    types.push_back({{"name", type.name},
                     {"kind", workers::to_string(type.kind)},
                     {"default_model", type.kind == workers::Kind::io ? "thread" : "process"},
                     {"description", type.description},
                     {"diagnostic", type.diagnostic},
                     {"input_schema", type.input_schema}});
  }
  job_types_body_ = dump(nlohmann::json{{"job_types", types}});
}

bool Router::authorized(const Request& request) const {
  if (options_.tokens.empty()) return true;
  auto header = request.header("Authorization");
  // Two Authorization fields are ambiguous (which one would a proxy have checked?): refuse.
  const auto fields = std::count_if(request.headers.begin(), request.headers.end(),
                                    [](const auto& field) { return iequals(field.first, "Authorization"); });
  if (fields != 1) return false;
  if (!header || header->size() < 7 || !iequals(header->substr(0, 7), "Bearer ")) return false;
  auto presented = header->substr(7);
  while (!presented.empty() && presented.front() == ' ') presented.remove_prefix(1);
  // Compare digests so that neither the content nor the length of a token leaks through timing.
  const auto digest = sha256(presented);
  bool match = false;
  for (const auto& token : options_.tokens) {
    const auto expected = sha256(token);
    match |= CRYPTO_memcmp(digest.data(), expected.data(), digest.size()) == 0;
  }
  return match;
}

boost::asio::awaitable<Response> Router::handle(Request request) {
  const std::string target = request.target;
  const auto query_at = target.find('?');
  const std::string_view path = std::string_view(target).substr(0, query_at);
  const std::string_view query =
      query_at == std::string::npos ? std::string_view() : std::string_view(target).substr(query_at + 1);
  const RouteMatch route = match_route(path);
  Response response;
  try {
    if (path.starts_with("/v1/") && !authorized(request)) {
      // Every /v1 request needs a token, even to learn that a path or method does not exist.
      Problem problem = make_problem(401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required");
      problem.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"switchyard\"");
      response = to_response(problem);
    } else if (route.id == RouteId::unmatched) {
      response = to_response(make_problem(404, "not_found", "no route for " + std::string(path.substr(0, 200))));
    } else if (!method_allowed(route.allow, request.method)) {
      Problem problem = make_problem(405, "method_not_allowed",
                                     request.method.substr(0, 20) + " is not allowed on " + std::string(route.route_template));
      problem.headers.emplace_back("Allow", std::string(route.allow));
      response = to_response(problem);
    } else {
      response = co_await dispatch(request, route, query);
    }
  } catch (const StoreUnavailable& e) {
    spdlog::warn("job store unavailable on {} {}: {}", request.method, route.route_template, e.what());
    Problem problem = make_problem(503, "store_unavailable",
                                   "the job store cannot be reached (the server log says why); retry later");
    problem.headers.emplace_back("Retry-After", "5");
    response = to_response(problem);
  } catch (const std::exception& e) {
    // A bug of ours, not something the client did: say so, keep serving.
    spdlog::error("unhandled error on {} {}: {}", request.method, route.route_template, e.what());
    response = to_response(make_problem(500, "internal_error", "the server failed to handle this request"));
  }
  response.route = std::string(route.route_template);
  co_return response;
}

boost::asio::awaitable<Response> Router::dispatch(Request& request, const RouteMatch& route, std::string_view query) {
  // /v1 paths were checked in handle(); /metrics is protected only when configured.
  if (route.id == RouteId::metrics && options_.protect_metrics && !authorized(request)) {
    Problem problem = make_problem(401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required");
    problem.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"switchyard\"");
    co_return to_response(problem);
  }
  const bool is_get = request.method == "GET" || request.method == "HEAD";
  switch (route.id) {
    case RouteId::healthz: {
      static const Response kOk = json_response(200, {{"status", "ok"}});
      co_return kOk;
    }
    case RouteId::readyz: {
      const Health health = service_.health();
      if (health.ready && !health.draining) co_return json_response(200, {{"status", "ready"}});
      Problem problem = health.draining ? make_problem(503, "draining", "the server is shutting down")
                                        : make_problem(503, "not_ready",
                                                       health.not_ready_reason.empty() ? "the worker pools are not up yet"
                                                                                       : health.not_ready_reason);
      problem.headers.emplace_back("Retry-After", "1");
      co_return to_response(problem);
    }
    case RouteId::metrics: {
      Response response;
      response.content_type = "text/plain; version=0.0.4; charset=utf-8";
      response.body = service_.metrics_text();
      co_return response;
    }
    case RouteId::openapi: {
      Response response;
      response.content_type = "application/yaml";
      response.body = options_.openapi_yaml;
      co_return response;
    }
    case RouteId::job_types: {
      Response response;
      response.body = job_types_body_;
      co_return response;
    }
    case RouteId::stats:
      co_return json_response(200, service_.stats());
    case RouteId::jobs:
      if (is_get) co_return co_await list_jobs(query);
      co_return co_await post_job(request);
    case RouteId::jobs_batch:
      co_return co_await post_batch(request);
    case RouteId::job:
      if (is_get) co_return co_await get_job(route.job_id, query);
      co_return co_await delete_job(route.job_id);
    case RouteId::unmatched:
      break;
  }
  co_return to_response(make_problem(404, "not_found", "no such route"));
}

namespace {

/// Checks content type and parses the body of a POST; a problem response if either fails.
std::optional<Response> read_json_body(const Request& request, const RequestLimits& limits, nlohmann::json& out) {
  if (!is_json_content_type(request.header("Content-Type"))) {
    return to_response(make_problem(415, "unsupported_media_type", "the request body must be application/json"));
  }
  if (request.body.empty()) return to_response(make_problem(400, "invalid_json", "the request body is empty"));
  auto parsed = parse_json_body(request.body, limits);
  if (auto* problem = std::get_if<Problem>(&parsed)) return to_response(*problem);
  out = std::move(std::get<nlohmann::json>(parsed));
  return std::nullopt;
}

/// The Idempotency-Key header, or a 400 response if it is malformed.
std::optional<Response> read_idempotency_key(const Request& request, std::optional<std::string>& key) {
  if (auto header = request.header("Idempotency-Key")) {
    if (!valid_idempotency_key(*header)) {
      return to_response(make_problem(400, "invalid_header", "Idempotency-Key must be 1 to 255 visible ASCII characters"));
    }
    key = std::string(*header);
  }
  return std::nullopt;
}

Response refusal(const SubmitResult& result) {
  Problem problem;
  switch (result.kind) {
    case SubmitResult::Kind::conflict:
      problem = make_problem(409, "conflict", result.detail);
      break;
    case SubmitResult::Kind::queue_full:
      problem = make_problem(429, "queue_full", result.detail);
      problem.headers.emplace_back("Retry-After", std::to_string(result.retry_after_s));
      break;
    case SubmitResult::Kind::unavailable:
      problem = make_problem(503, "workers_unavailable", result.detail);
      problem.headers.emplace_back("Retry-After", std::to_string(result.retry_after_s));
      break;
    case SubmitResult::Kind::store_unavailable:
      problem = make_problem(503, "store_unavailable", result.detail);
      problem.headers.emplace_back("Retry-After", std::to_string(result.retry_after_s));
      break;
    default:
      problem = make_problem(503, "draining", result.detail);
      problem.headers.emplace_back("Retry-After", std::to_string(result.retry_after_s));
      break;
  }
  return to_response(problem);
}

}  // namespace

boost::asio::awaitable<Response> Router::post_job(const Request& request) {
  nlohmann::json body;
  if (auto problem = read_json_body(request, options_.limits, body)) co_return *problem;
  std::optional<std::string> key;
  if (auto problem = read_idempotency_key(request, key)) co_return *problem;
  auto parsed = parse_job_request(body, service_.catalogue(), options_.limits);
  if (auto* errors = std::get_if<std::vector<workers::FieldError>>(&parsed)) {
    co_return to_response(validation_problem(std::move(*errors)));
  }
  std::vector<JobRequest> requests;
  requests.push_back(std::move(std::get<JobRequest>(parsed)));
  // The fingerprint (a SHA-256 of the canonical body) only matters with an Idempotency-Key.
  // (A local, not a ?: in the co_await statement: GCC 12 destroys such a temporary twice.)
  std::string print;
  if (key) print = fingerprint("job:", body);
  SubmitResult result = co_await service_.submit(std::move(requests), key, print);
  if (result.kind != SubmitResult::Kind::accepted && result.kind != SubmitResult::Kind::replayed) {
    co_return refusal(result);
  }
  const bool replay = result.kind == SubmitResult::Kind::replayed;
  Job job = std::move(result.jobs.front());
  if (auto prefer = request.header("Prefer")) {
    if (auto wait = parse_prefer_wait(*prefer, options_.limits)) {
      if (!is_terminal(job.status)) {
        if (auto waited = co_await service_.wait_submitted(job, *wait)) job = std::move(*waited);
      }
      co_return accepted_or_done(job, replay, *wait);
    }
  }
  co_return accepted_or_done(job, replay);
}

boost::asio::awaitable<Response> Router::post_batch(const Request& request) {
  nlohmann::json body;
  if (auto problem = read_json_body(request, options_.limits, body)) co_return *problem;
  std::optional<std::string> key;
  if (auto problem = read_idempotency_key(request, key)) co_return *problem;

  std::vector<workers::FieldError> errors;
  if (!body.is_object()) {
    co_return to_response(validation_problem({{"", "must be an object with a \"jobs\" array"}}));
  }
  for (const auto& [name, value] : body.items()) {
    if (name != "jobs") errors.push_back({(nlohmann::json::json_pointer() / name).to_string(), "unknown field"});
  }
  auto jobs_it = body.find("jobs");
  if (jobs_it == body.end()) {
    errors.push_back({"/jobs", "is required"});
  } else if (!jobs_it->is_array()) {
    errors.push_back({"/jobs", "must be an array"});
  } else if (jobs_it->empty() || jobs_it->size() > options_.limits.max_batch) {
    errors.push_back({"/jobs", "must hold 1 to " + std::to_string(options_.limits.max_batch) + " job requests"});
  }
  std::vector<JobRequest> requests;
  if (errors.empty()) {
    requests.reserve(jobs_it->size());
    for (std::size_t i = 0; i < jobs_it->size(); ++i) {
      auto parsed = parse_job_request((*jobs_it)[i], service_.catalogue(), options_.limits, "/jobs/" + std::to_string(i));
      if (auto* item_errors = std::get_if<std::vector<workers::FieldError>>(&parsed)) {
        errors.insert(errors.end(), item_errors->begin(), item_errors->end());
        if (errors.size() > 100) break;  // enough to act on; bounded response size
      } else {
        requests.push_back(std::move(std::get<JobRequest>(parsed)));
      }
    }
  }
  if (errors.empty()) {
    std::size_t per_model[2] = {0, 0};
    for (const auto& r : requests) ++per_model[r.model == Model::thread ? 0 : 1];
    if (std::max(per_model[0], per_model[1]) > options_.limits.queue_limit) {
      errors.push_back({"/jobs", "more jobs for one model than its queue can ever hold (" +
                                     std::to_string(options_.limits.queue_limit) + ")"});
    }
  }
  if (!errors.empty()) co_return to_response(validation_problem(std::move(errors)));

  std::string print;
  if (key) print = fingerprint("batch:", body);
  SubmitResult result = co_await service_.submit(std::move(requests), key, print);
  if (result.kind != SubmitResult::Kind::accepted && result.kind != SubmitResult::Kind::replayed) {
    co_return refusal(result);
  }
  const bool all_terminal =
      std::all_of(result.jobs.begin(), result.jobs.end(), [](const Job& job) { return is_terminal(job.status); });
  const bool replay = result.kind == SubmitResult::Kind::replayed;
  co_return jobs_response(replay && all_terminal ? 200 : 202, result.jobs);
}

boost::asio::awaitable<Response> Router::get_job(const std::string& id, std::string_view query) {
  auto parsed = parse_wait_query(query, options_.limits);
  if (auto* problem = std::get_if<Problem>(&parsed)) co_return to_response(*problem);
  const auto wait = std::get<std::optional<std::chrono::milliseconds>>(parsed);
  // Not a conditional expression: GCC 12 destroys a co_await temporary in ?: twice.
  std::optional<Job> job;
  if (wait) {
    job = co_await service_.wait(id, *wait);
  } else {
    job = co_await service_.get(id);
  }
  if (!job) co_return to_response(make_problem(404, "not_found", "no job with this id"));
  co_return job_response(200, *job);
}

boost::asio::awaitable<Response> Router::delete_job(const std::string& id) {
  CancelResult result = co_await service_.cancel(id);
  switch (result.kind) {
    case CancelResult::Kind::not_found:
      co_return to_response(make_problem(404, "not_found", "no job with this id"));
    case CancelResult::Kind::terminal: {
      Problem problem = make_problem(
          409, "conflict", "the job is already " + std::string(to_string(result.job->status)) + "; nothing to cancel");
      problem.extensions["job_status"] = to_string(result.job->status);
      co_return to_response(problem);
    }
    default:
      break;
  }
  Response response = job_response(200, *result.job);
  const char* how = result.kind == CancelResult::Kind::dequeued ? "dequeued"
                    : result.kind == CancelResult::Kind::killed ? "killed"
                                                                : "requested";
  response.headers.emplace_back("Switchyard-Cancellation", how);
  co_return response;
}

boost::asio::awaitable<Response> Router::list_jobs(std::string_view query) {
  auto parsed = parse_list_query(query);
  if (auto* problem = std::get_if<Problem>(&parsed)) co_return to_response(*problem);
  const ListPage page = co_await service_.list(std::get<ListQuery>(parsed));
  co_return jobs_response(200, page.jobs, &page.next_cursor);
}

}  // namespace switchyard::api
