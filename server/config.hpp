#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "workers/worker_main.hpp"

namespace switchyard::server {

/// Everything the server can be told, by flag or SWITCHYARD_* environment variable (the flag
/// wins). Defaults match API.md's configuration table.
struct Config {
  std::string listen = "127.0.0.1:8080";
  std::string listen_host = "127.0.0.1";  ///< parsed from listen
  std::uint16_t listen_port = 8080;        ///< parsed from listen; 0 picks a free port
  int io_threads = 2;
  int process_workers = 0;                 ///< 0 = number of cores
  std::size_t queue_limit = 10000;         ///< per model
  std::size_t thread_concurrency = 10000;  ///< thread-model jobs running at once
  std::int64_t default_timeout_ms = 30000;
  std::int64_t max_timeout_ms = 3600000;
  std::size_t max_body_bytes = 1 << 20;
  std::size_t max_header_bytes = 16 << 10;
  std::size_t max_connections = 10000;
  std::int64_t read_timeout_ms = 30000;    ///< per request read, including keep-alive idle time
  double max_wait_s = 60;
  std::int64_t drain_grace_ms = 10000;
  std::size_t retain_jobs = 10000;         ///< terminal jobs kept; the oldest-finished go first
  bool diagnostics = false;
  std::string log_format = "text";
  std::string log_level = "info";
  std::string tokens_file;
  bool protect_metrics = false;
  std::vector<std::string> http_allow;
  std::size_t http_max_response_bytes = 1 << 20;
  std::size_t worker_memory_mb = 0;        ///< per-worker address-space limit; 0 = none
  std::size_t worker_max_files = 1024;     ///< per-worker open-file limit
  std::size_t worker_max_jobs = 0;         ///< recycle a worker after this many jobs; 0 = never
  std::size_t worker_max_jobs_jitter = 0;  ///< plus a random 0..jitter, so workers recycle apart
  std::size_t worker_max_rss_mb = 0;       ///< recycle a worker whose RSS passed this after a job; 0 = never
  std::size_t worker_cpu_seconds = 0;      ///< CPU seconds one process-model job may use; 0 = no limit
  bool worker_sandbox = true;              ///< seccomp: jobs in workers cannot fork or exec
  bool diagnostic_fail_worker_boot = false;  ///< diagnostic: every worker fails before hello
  double result_ttl_s = 86400;             ///< finished jobs are deleted this long after they finish; 0 = never
  std::string store = "sqlite";
  std::string data_dir = "./data";
  std::string sqlite_sync = "full";       ///< full: fsync per commit; normal: survives a server crash, not power loss
  std::string database_url;
  std::int64_t lease_ms = 15000;          ///< postgres: a replica's lease on the jobs it runs

  std::vector<std::string> tokens;         ///< loaded from tokens_file
};

/// What the command line asked for.
struct ServeCommand { Config config; };
struct WorkerCommand { workers::WorkerOptions options; };
struct HealthcheckCommand { std::string url; double timeout_s = 2; };
struct MigrateCommand { std::string database_url; };
/// --help, --version or a usage error: print `text` and exit with `code`.
struct ExitNow { int code = 0; std::string text; };

using Command = std::variant<ServeCommand, WorkerCommand, HealthcheckCommand, MigrateCommand, ExitNow>;

/// Parses argv and the environment (`getenv`) into a command. Never exits the process.
Command parse_command_line(int argc, const char* const* argv);

/// Splits "host:port" or "[v6]:port"; nullopt if malformed.
std::optional<std::pair<std::string, std::uint16_t>> parse_listen(const std::string& text);

/// The worker-mode argv (after the executable) that recreates `options` in a worker process.
std::vector<std::string> worker_arguments(const workers::WorkerOptions& options);

}  // namespace switchyard::server
