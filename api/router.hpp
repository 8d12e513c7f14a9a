#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/awaitable.hpp>

#include "api/http_types.hpp"
#include "api/job_service.hpp"
#include "api/requests.hpp"

namespace switchyard::api {

/// Which handler a request goes to.
enum class RouteId {
  healthz, readyz, metrics, openapi, job_types, stats, jobs, jobs_batch, job, unmatched
};

/// A matched route: the handler, the template (a metrics label), the methods it allows and the
/// job id when the path has one.
struct RouteMatch {
  RouteId id = RouteId::unmatched;
  std::string_view route_template = "unmatched";
  std::string_view allow;  ///< "GET, DELETE" — for 405 and Allow
  std::string job_id;
};

/// Maps a path (without query) to its route. Pure; thread-safe.
RouteMatch match_route(std::string_view path);

/// Configuration of the REST layer.
struct RouterOptions {
  RequestLimits limits;
  std::vector<std::string> tokens;   ///< API tokens; empty = no auth
  bool protect_metrics = false;      ///< require a token for /metrics too
  std::string openapi_yaml;          ///< served at /openapi.yaml
};

/// The REST contract of API.md as a function from request to response. Never throws; anything
/// unexpected becomes a problem response, never a crash.
/// Thread-safety: handle() may run concurrently.
class Router {
 public:
  Router(JobService& service, RouterOptions options);

  /// Handles one request.
  boost::asio::awaitable<Response> handle(Request request);

 private:
  boost::asio::awaitable<Response> dispatch(Request& request, const RouteMatch& route, std::string_view query);
  boost::asio::awaitable<Response> post_job(const Request& request);
  boost::asio::awaitable<Response> post_batch(const Request& request);
  boost::asio::awaitable<Response> get_job(const std::string& id, std::string_view query);
  boost::asio::awaitable<Response> delete_job(const std::string& id);
  boost::asio::awaitable<Response> list_jobs(std::string_view query);
  [[nodiscard]] bool authorized(const Request& request) const;

  JobService& service_;
  RouterOptions options_;
  std::string job_types_body_;  // built once: the catalogue does not change
};

}  // namespace switchyard::api
