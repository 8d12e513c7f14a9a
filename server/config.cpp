#include "server/config.hpp"

#include <charconv>
#include <fstream>
#include <sstream>
#include <thread>

#include <CLI/CLI.hpp>

#include "workers/http_request_type.hpp"

namespace switchyard::server {

std::optional<std::pair<std::string, std::uint16_t>> parse_listen(const std::string& text) {
  std::string host;
  std::string port_text;
  if (!text.empty() && text.front() == '[') {
    const auto close = text.find(']');
    if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':') return std::nullopt;
    host = text.substr(1, close - 1);
    port_text = text.substr(close + 2);
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string::npos || text.find(':') != colon) return std::nullopt;
    host = text.substr(0, colon);
    port_text = text.substr(colon + 1);
  }
  unsigned port = 0;
  const auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (host.empty() || port_text.empty() || ec != std::errc() || end != port_text.data() + port_text.size() ||
      port > 65535) {
    return std::nullopt;
  }
  return std::make_pair(host, static_cast<std::uint16_t>(port));
}

std::vector<std::string> worker_arguments(const workers::WorkerOptions& options) {
  std::vector<std::string> args = {"worker", "--fd", std::to_string(options.fd), "--parent",
                                   std::to_string(options.parent)};
  if (options.builtin.diagnostics) args.emplace_back("--diagnostics");
  for (const auto& entry : options.builtin.http_allow) {
    args.emplace_back("--http-allow");
    args.push_back(entry);
  }
  args.emplace_back("--http-max-response-bytes");
  args.push_back(std::to_string(options.builtin.http_max_response_bytes));
  args.emplace_back("--max-timeout-ms");
  args.push_back(std::to_string(options.builtin.http_max_timeout_ms));
  args.emplace_back("--log-format");
  args.push_back(options.log_format);
  if (options.memory_mb > 0) {
    args.emplace_back("--memory-mb");
    args.push_back(std::to_string(options.memory_mb));
  }
  if (options.max_files > 0) {
    args.emplace_back("--max-files");
    args.push_back(std::to_string(options.max_files));
  }
  if (options.cpu_seconds > 0) {
    args.emplace_back("--cpu-seconds");
    args.push_back(std::to_string(options.cpu_seconds));
  }
  if (!options.sandbox) args.emplace_back("--no-sandbox");
  if (options.fail_boot) args.emplace_back("--fail-boot");
  return args;
}

namespace {

/// Sanitizer builds say so in --version (tests skip what sanitizers cannot run, e.g. RLIMIT_AS).
const char* build_flavour() {
#if defined(__SANITIZE_ADDRESS__)
  return " (address sanitizer)";
#elif defined(__SANITIZE_THREAD__)
  return " (thread sanitizer)";
#else
  return "";
#endif
}

std::vector<std::string> load_tokens(const std::string& path) {
  std::ifstream file(path);
  if (!file) throw CLI::ValidationError("--tokens-file", "cannot read " + path);
  std::vector<std::string> tokens;
  std::string line;
  while (std::getline(file, line)) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) line.pop_back();
    std::size_t start = line.find_first_not_of(" \t");
    if (start == std::string::npos || line[start] == '#') continue;
    tokens.push_back(line.substr(start));
  }
  if (tokens.empty()) throw CLI::ValidationError("--tokens-file", path + " holds no token");
  return tokens;
}

void add_serve_options(CLI::App& app, Config& c) {
  auto env = [](const char* name) { return std::string("SWITCHYARD_") + name; };
  app.add_option("--listen", c.listen, "host:port to listen on (port 0 picks a free port)")
      ->envname(env("LISTEN"))->capture_default_str();
  app.add_option("--io-threads", c.io_threads,
                 "io threads, each with its own io_context (HTTP, io jobs); cpu jobs sent to the thread model get "
                 "io-threads - 1 threads of their own (at least 1)")
      ->envname(env("IO_THREADS"))
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  app.add_option("--process-workers", c.process_workers, "worker processes (0 = one per core)")
      ->envname(env("PROCESS_WORKERS"))->check(CLI::Range(0, 1024))->capture_default_str();
  app.add_option("--queue-limit", c.queue_limit, "queued jobs per model before 429")
      ->envname(env("QUEUE_LIMIT"))->check(CLI::Range(1, 10000000))->capture_default_str();
  app.add_option("--thread-concurrency", c.thread_concurrency, "thread-model jobs running at once")
      ->envname(env("THREAD_CONCURRENCY"))->check(CLI::Range(1, 1000000))->capture_default_str();
  app.add_option("--default-timeout-ms", c.default_timeout_ms, "timeout_ms of a job that gives none")
      ->envname(env("DEFAULT_TIMEOUT_MS"))->check(CLI::Range(std::int64_t{1}, std::int64_t{86400000}))->capture_default_str();
  app.add_option("--max-timeout-ms", c.max_timeout_ms, "largest timeout_ms a job may ask for")
      ->envname(env("MAX_TIMEOUT_MS"))->check(CLI::Range(std::int64_t{1}, std::int64_t{86400000}))->capture_default_str();
  app.add_option("--max-body-bytes", c.max_body_bytes, "largest request body (413 above)")
      ->envname(env("MAX_BODY_BYTES"))->check(CLI::Range(std::size_t{64}, std::size_t{64} << 20))->capture_default_str();
  app.add_option("--max-header-bytes", c.max_header_bytes, "largest request header block (431 above)")
      ->envname(env("MAX_HEADER_BYTES"))->check(CLI::Range(std::size_t{1024}, std::size_t{1} << 20))->capture_default_str();
  app.add_option("--max-connections", c.max_connections, "open client connections; more get 503 and are closed")
      ->envname(env("MAX_CONNECTIONS"))->check(CLI::Range(std::size_t{1}, std::size_t{1000000}))->capture_default_str();
  app.add_option("--read-timeout-ms", c.read_timeout_ms, "deadline to read one request, keep-alive idle included")
      ->envname(env("READ_TIMEOUT_MS"))->check(CLI::Range(std::int64_t{100}, std::int64_t{3600000}))->capture_default_str();
  app.add_option("--max-wait-s", c.max_wait_s, "cap on Prefer: wait and ?wait, in seconds")
      ->envname(env("MAX_WAIT_S"))->check(CLI::Range(0.0, 3600.0))->capture_default_str();
  app.add_option("--drain-grace-ms", c.drain_grace_ms, "on SIGTERM, how long running jobs may finish")
      ->envname(env("DRAIN_GRACE_MS"))->check(CLI::Range(std::int64_t{0}, std::int64_t{3600000}))->capture_default_str();
  app.add_option("--retain-jobs", c.retain_jobs, "finished jobs kept for reading; oldest-finished evicted first")
      ->envname(env("RETAIN_JOBS"))->check(CLI::Range(std::size_t{1}, std::size_t{100000000}))->capture_default_str();
  app.add_flag("--diagnostics", c.diagnostics, "enable the diagnostic job types noop, alloc, crash, fork, open_files, hang, append_log")
      ->envname(env("DIAGNOSTICS"));
  app.add_option("--log-format", c.log_format, "text or json (JSON lines)")
      ->envname(env("LOG_FORMAT"))->check(CLI::IsMember({"text", "json"}))->capture_default_str();
  app.add_option("--log-level", c.log_level, "trace, debug, info, warn, error")
      ->envname(env("LOG_LEVEL"))->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}))->capture_default_str();
  app.add_option("--tokens-file", c.tokens_file, "file of API tokens, one per line; enables Bearer auth on /v1")
      ->envname(env("TOKENS_FILE"));
  app.add_flag("--protect-metrics", c.protect_metrics, "require a token for /metrics too")
      ->envname(env("PROTECT_METRICS"));
  app.add_option("--http-allow", c.http_allow, "http.request destinations: host names or CIDRs (default: loopback only)")
      ->envname(env("HTTP_ALLOW"))->delimiter(',');
  app.add_option("--http-max-response-bytes", c.http_max_response_bytes, "largest response body an http.request job reads")
      ->envname(env("HTTP_MAX_RESPONSE_BYTES"))->check(CLI::Range(std::size_t{1}, std::size_t{64} << 20))->capture_default_str();
  app.add_option("--worker-memory-mb", c.worker_memory_mb,
                 "address-space limit of each worker process in MiB (0 = none); a job over it fails memory_limit")
      ->envname(env("WORKER_MEMORY_MB"))->check(CLI::Range(std::size_t{0}, std::size_t{1} << 20))->capture_default_str();
  app.add_option("--worker-max-files", c.worker_max_files, "open-file limit of each worker process (0 = inherit)")
      ->envname(env("WORKER_MAX_FILES"))->check(CLI::Range(std::size_t{0}, std::size_t{1} << 20))->capture_default_str();
  app.add_option("--worker-max-jobs", c.worker_max_jobs, "replace a worker after this many jobs (0 = never)")
      ->envname(env("WORKER_MAX_JOBS"))->check(CLI::Range(std::size_t{0}, std::size_t{1} << 30))->capture_default_str();
  app.add_option("--worker-max-jobs-jitter", c.worker_max_jobs_jitter,
                 "add a random 0..N to --worker-max-jobs per worker, so they do not recycle together")
      ->envname(env("WORKER_MAX_JOBS_JITTER"))->check(CLI::Range(std::size_t{0}, std::size_t{1} << 30))->capture_default_str();
  app.add_option("--worker-max-rss-mb", c.worker_max_rss_mb,
                 "replace a worker after a job once its peak resident memory passed this many MiB (0 = never)")
      ->envname(env("WORKER_MAX_RSS_MB"))->check(CLI::Range(std::size_t{0}, std::size_t{1} << 20))->capture_default_str();
  app.add_option("--worker-cpu-seconds", c.worker_cpu_seconds,
                 "CPU seconds one process-model job may use; past it the job fails cpu_limit (0 = no limit)")
      ->envname(env("WORKER_CPU_SECONDS"))->check(CLI::Range(std::size_t{0}, std::size_t{1} << 24))->capture_default_str();
  app.add_flag("--worker-sandbox,!--no-worker-sandbox", c.worker_sandbox,
               "seccomp filter in workers: jobs cannot fork or exec (on by default)")
      ->envname(env("WORKER_SANDBOX"))->capture_default_str();
  app.add_flag("--diagnostic-fail-worker-boot", c.diagnostic_fail_worker_boot,
               "diagnostic (needs --diagnostics): every worker exits before it is ready, to test boot-failure handling")
      ->envname(env("DIAGNOSTIC_FAIL_WORKER_BOOT"))->group("");
  app.add_option("--result-ttl-s", c.result_ttl_s,
                 "delete a finished job this many seconds after it finished (0 = keep; --retain-jobs bounds both)")
      ->envname(env("RESULT_TTL_S"))->check(CLI::Range(0.0, 10.0 * 365 * 86400))->capture_default_str();
  app.add_option("--store", c.store,
                 "job store: sqlite (durable, in --data-dir), postgres (durable, shared by several replicas; "
                 "needs --database-url) or memory (jobs are lost on restart)")
      ->envname(env("STORE"))->check(CLI::IsMember({"sqlite", "postgres", "memory"}))->capture_default_str();
  app.add_option("--data-dir", c.data_dir, "data directory of the sqlite store")
      ->envname(env("DATA_DIR"))->capture_default_str()
      ->check([](const std::string& dir) { return dir.empty() ? std::string("must not be empty") : std::string(); });
  app.add_option("--sqlite-sync", c.sqlite_sync,
                 "full: each commit is fsynced before the 202 (survives power loss); normal: survives a crash "
                 "or kill -9 of the server, not of the machine")
      ->envname(env("SQLITE_SYNC"))->check(CLI::IsMember({"full", "normal"}))->capture_default_str();
  app.add_option("--database-url", c.database_url, "PostgreSQL connection URI (store postgres)")->envname(env("DATABASE_URL"));
  app.add_option("--lease-ms", c.lease_ms,
                 "store postgres: a replica's hold on the jobs it runs, renewed every third of it; jobs of a replica "
                 "that stops renewing are taken over by the others after it expires")
      ->envname(env("LEASE_MS"))->check(CLI::Range(std::int64_t{1000}, std::int64_t{3600000}))->capture_default_str();
}

}  // namespace

Command parse_command_line(int argc, const char* const* argv) {
  Config config;
  CLI::App app{"Switchyard: a REST job-execution service with a thread pool for I/O jobs and worker processes for CPU jobs", "switchyard"};
  app.set_version_flag("--version", std::string("switchyard 0.1.0") + build_flavour());
  add_serve_options(app, config);

  workers::WorkerOptions worker;
  int max_timeout_ms = worker.builtin.http_max_timeout_ms;
  auto* worker_cmd = app.add_subcommand("worker", "internal: run as a worker process (started by the server)");
  worker_cmd->group("");  // hidden from --help
  worker_cmd->add_option("--fd", worker.fd)->required();
  worker_cmd->add_option("--parent", worker.parent)->required();
  worker_cmd->add_flag("--diagnostics", worker.builtin.diagnostics);
  worker_cmd->add_option("--http-allow", worker.builtin.http_allow);
  worker_cmd->add_option("--http-max-response-bytes", worker.builtin.http_max_response_bytes);
  worker_cmd->add_option("--max-timeout-ms", max_timeout_ms);
  worker_cmd->add_option("--log-format", worker.log_format)->check(CLI::IsMember({"text", "json"}));
  worker_cmd->add_option("--memory-mb", worker.memory_mb);
  worker_cmd->add_option("--max-files", worker.max_files);
  worker_cmd->add_option("--cpu-seconds", worker.cpu_seconds);
  worker_cmd->add_flag("!--no-sandbox", worker.sandbox);
  worker_cmd->add_flag("--fail-boot", worker.fail_boot);

  HealthcheckCommand health;
  auto* health_cmd = app.add_subcommand("healthcheck", "GET /healthz of a running server; exit 0 if it answers 200");
  health_cmd->add_option("--url", health.url, "URL to check (default: http://<listen>/healthz)");
  health_cmd->add_option("--timeout-s", health.timeout_s, "give up after this many seconds")->check(CLI::Range(0.1, 60.0));

  MigrateCommand migrate;
  auto* migrate_cmd = app.add_subcommand(
      "migrate", "apply the PostgreSQL schema migrations to --database-url and exit (servers also do it at start)");
  migrate_cmd->add_option("--database-url", migrate.database_url, "PostgreSQL connection URI")
      ->envname("SWITCHYARD_DATABASE_URL")->required();

  try {
    app.parse(argc, argv);
    if (migrate_cmd->parsed()) return migrate;
    if (worker_cmd->parsed()) {
      worker.builtin.http_max_timeout_ms = max_timeout_ms;
      return WorkerCommand{worker};
    }
    auto listen = parse_listen(config.listen);
    if (!listen) throw CLI::ValidationError("--listen", "expected host:port, got '" + config.listen + "'");
    config.listen_host = listen->first;
    config.listen_port = listen->second;
    if (health_cmd->parsed()) {
      if (health.url.empty()) {
        const std::string host = config.listen_host == "0.0.0.0" ? "127.0.0.1" : config.listen_host;
        health.url = "http://" + host + ":" + std::to_string(config.listen_port) + "/healthz";
      }
      return health;
    }
    if (config.diagnostic_fail_worker_boot && !config.diagnostics) {
      throw CLI::ValidationError("--diagnostic-fail-worker-boot", "needs --diagnostics");
    }
    if (config.default_timeout_ms > config.max_timeout_ms) {
      throw CLI::ValidationError("--default-timeout-ms", "must not exceed --max-timeout-ms");
    }
    if (config.store == "postgres" && config.database_url.empty()) {
      throw CLI::ValidationError("--store postgres", "needs --database-url (or SWITCHYARD_DATABASE_URL)");
    }
    if (config.process_workers == 0) config.process_workers = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    if (!config.tokens_file.empty()) config.tokens = load_tokens(config.tokens_file);
    try {
      workers::check_http_allow_list(config.http_allow);
    } catch (const std::invalid_argument& e) {
      throw CLI::ValidationError("--http-allow", e.what());
    }
    return ServeCommand{std::move(config)};
  } catch (const CLI::ParseError& e) {
    std::ostringstream out, err;
    const int code = app.exit(e, out, err);
    return ExitNow{code, out.str() + err.str()};
  }
}

}  // namespace switchyard::server
