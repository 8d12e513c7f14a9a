#include "server/app.hpp"

#include <csignal>
#include <thread>
#include <vector>

#include <sys/resource.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <boost/url/parse.hpp>

#include "api/openapi_text.hpp"
#include "api/router.hpp"
#include "server/dispatcher.hpp"
#include "server/http_server.hpp"
#include "server/io_threads.hpp"
#include "server/job_store.hpp"
#include "server/log.hpp"
#include "server/metrics.hpp"
#include "server/postgres.hpp"
#include "server/postgres_store.hpp"
#include "server/sqlite_store.hpp"

namespace switchyard::server {

namespace asio = boost::asio;

namespace {

/// Each connection and each worker socket is a descriptor: use the hard limit we are given.
void raise_open_file_limit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
  }
}

std::string format_endpoint(const asio::ip::tcp::endpoint& endpoint) {
  const auto address = endpoint.address();
  const std::string host = address.is_v6() ? "[" + address.to_string() + "]" : address.to_string();
  return host + ":" + std::to_string(endpoint.port());
}

/// The job store the configuration names.
std::unique_ptr<JobStore> open_store(const Config& config) {
  if (config.store == "memory") return std::make_unique<MemoryJobStore>(config.retain_jobs);
  if (config.store == "postgres") {
    PostgresJobStore::Options options;
    options.url = config.database_url;
    options.replica_id = make_replica_id();
    options.lease = std::chrono::milliseconds(config.lease_ms);
    options.result_ttl_s = config.result_ttl_s;
    return std::make_unique<PostgresJobStore>(std::move(options));
  }
  return std::make_unique<SqliteJobStore>(config.data_dir, config.retain_jobs, config.sqlite_sync == "full");
}

}  // namespace

int run_server(const Config& config) {
  log::setup(config.log_format, config.log_level);
  raise_open_file_limit();
  std::signal(SIGPIPE, SIG_IGN);
  // A store file over the file-size limit must fail its write (EFBIG: the store answers 503
  // store_unavailable and retries), not kill the server.
  std::signal(SIGXFSZ, SIG_IGN);

  IoThreads io(config.io_threads);
  asio::io_context& context = io.main();

  workers::BuiltinOptions builtin;
  builtin.diagnostics = config.diagnostics;
  builtin.http_allow = config.http_allow;
  builtin.http_max_response_bytes = config.http_max_response_bytes;
  builtin.http_max_timeout_ms = static_cast<int>(std::min<std::int64_t>(config.max_timeout_ms, 1 << 30));
  const workers::Catalogue catalogue = workers::make_builtin_catalogue(builtin);

  std::unique_ptr<JobStore> store;
  try {
    store = open_store(config);
  } catch (const std::runtime_error& e) {  // StoreError, PgError
    log::event(spdlog::level::critical, "cannot open the job store", {{"store", config.store}, {"error", e.what()}});
    return 1;
  }
  Metrics metrics(catalogue);
  store->observe_commits([&metrics](double seconds, std::size_t changes, bool ok) {
    metrics.store_committed(seconds, changes, ok);
  });
  Dispatcher dispatcher(context, config, catalogue, metrics, std::move(store));

  api::RouterOptions router_options;
  router_options.limits.default_timeout_ms = config.default_timeout_ms;
  router_options.limits.max_timeout_ms = config.max_timeout_ms;
  router_options.limits.max_wait_s = config.max_wait_s;
  router_options.limits.queue_limit = config.queue_limit;
  router_options.tokens = config.tokens;
  router_options.protect_metrics = config.protect_metrics;
  router_options.openapi_yaml = std::string(api::openapi_yaml());
  api::Router router(dispatcher, router_options);

  HttpOptions http_options;
  http_options.max_body_bytes = config.max_body_bytes;
  http_options.max_header_bytes = config.max_header_bytes;
  http_options.max_connections = config.max_connections;
  http_options.read_timeout = std::chrono::milliseconds(config.read_timeout_ms);
  HttpServer http(io, http_options, router, metrics);

  asio::ip::tcp::endpoint endpoint;
  try {
    endpoint = http.listen(config.listen_host, config.listen_port);
  } catch (const std::exception& e) {
    log::event(spdlog::level::critical, "cannot listen", {{"listen", config.listen}, {"error", e.what()}});
    return 1;
  }

  dispatcher.spread_thread_jobs(io.contexts());
  dispatcher.start();
  http.start();
  log::event(spdlog::level::info, "listening",
             {{"address", format_endpoint(endpoint)}, {"io_threads", config.io_threads},
              {"process_workers", config.process_workers}, {"diagnostics", config.diagnostics},
              {"auth", config.tokens.empty() ? "off" : "bearer"}, {"store", config.store}});

  asio::signal_set signals(context, SIGTERM, SIGINT);
  signals.async_wait([&](const boost::system::error_code& error, int signal_number) {
    if (error) return;
    log::event(spdlog::level::info, "signal received, draining",
               {{"signal", signal_number == SIGTERM ? "SIGTERM" : "SIGINT"}, {"grace_ms", config.drain_grace_ms}});
    asio::co_spawn(
        context,
        [&]() -> asio::awaitable<void> {
          co_await dispatcher.drain(std::chrono::milliseconds(config.drain_grace_ms));
          http.stop();
          // Let responses already being written (long-polls woken by the drain) go out.
          asio::steady_timer linger(context, std::chrono::milliseconds(100));
          co_await linger.async_wait(asio::use_awaitable);
          log::event(spdlog::level::info, "stopped");
          io.stop();
        },
        asio::detached);
  });

  io.run();
  return 0;
}

int run_migrate(const MigrateCommand& command) {
  log::setup("text", "info");
  try {
    PgConnection connection(command.database_url);
    const int applied = migrate_postgres(connection);
    std::printf("switchyard schema at version %d on %s (%d migration%s applied)\n", postgres_schema_version(),
                redact_database_url(command.database_url).c_str(), applied, applied == 1 ? "" : "s");
    return 0;
  } catch (const PgError& e) {
    std::fprintf(stderr, "migrate: %s\n", e.what());
    return 1;
  }
}

int run_healthcheck(const HealthcheckCommand& command) {
  namespace beast = boost::beast;
  namespace http = beast::http;
  auto url = boost::urls::parse_uri(command.url);
  if (!url || url->scheme() != "http") {
    std::fprintf(stderr, "healthcheck: expected an http:// URL, got '%s'\n", command.url.c_str());
    return 2;
  }
  asio::io_context context;
  bool healthy = false;
  std::string problem = "timed out";
  const std::string host = url->host();
  const std::string port = url->has_port() ? std::string(url->port()) : "80";
  const std::string target = url->encoded_target().empty() ? "/" : std::string(url->encoded_target());
  asio::co_spawn(
      context,
      [&]() -> asio::awaitable<void> {
        asio::ip::tcp::resolver resolver(context);
        beast::tcp_stream stream(context);
        const auto endpoints = co_await resolver.async_resolve(host, port, asio::use_awaitable);
        co_await stream.async_connect(endpoints, asio::use_awaitable);
        http::request<http::empty_body> request{http::verb::get, target, 11};
        request.set(http::field::host, host);
        request.set(http::field::connection, "close");
        co_await http::async_write(stream, request, asio::use_awaitable);
        beast::flat_buffer buffer;
        http::response<http::string_body> response;
        co_await http::async_read(stream, buffer, response, asio::use_awaitable);
        healthy = response.result_int() == 200;
        problem = "status " + std::to_string(response.result_int());
      },
      [&](std::exception_ptr error) {
        if (!error) return;
        try {
          std::rethrow_exception(error);
        } catch (const std::exception& e) {
          problem = e.what();
        }
      });
  context.run_for(std::chrono::milliseconds(static_cast<long>(command.timeout_s * 1000)));
  if (!healthy) std::fprintf(stderr, "healthcheck: %s: %s\n", command.url.c_str(), problem.c_str());
  return healthy ? 0 : 1;
}

}  // namespace switchyard::server
