#include <doctest/doctest.h>

#include <cstdlib>

#include "server/config.hpp"

using namespace switchyard::server;

namespace {
Command parse(std::vector<const char*> args) {
  args.insert(args.begin(), "switchyard");
  return parse_command_line(static_cast<int>(args.size()), args.data());
}
}  // namespace

TEST_CASE("defaults follow API.md") {
  ::unsetenv("SWITCHYARD_LISTEN");
  auto command = parse({});
  REQUIRE(std::holds_alternative<ServeCommand>(command));
  const auto& c = std::get<ServeCommand>(command).config;
  CHECK(c.listen_host == "127.0.0.1");
  CHECK(c.listen_port == 8080);
  CHECK(c.io_threads == 2);
  CHECK(c.process_workers >= 1);
  CHECK(c.max_body_bytes == 1048576);
  CHECK_FALSE(c.diagnostics);
  CHECK(c.log_format == "text");
  CHECK(c.store == "sqlite");
  CHECK(c.data_dir == "./data");
  CHECK(c.result_ttl_s == 86400);
  CHECK(c.sqlite_sync == "full");
}

TEST_CASE("the store is chosen by flag or environment") {
  ::setenv("SWITCHYARD_STORE", "memory", 1);
  ::setenv("SWITCHYARD_DATA_DIR", "/var/lib/x", 1);
  auto from_env = parse({});
  REQUIRE(std::holds_alternative<ServeCommand>(from_env));
  CHECK(std::get<ServeCommand>(from_env).config.store == "memory");
  CHECK(std::get<ServeCommand>(from_env).config.data_dir == "/var/lib/x");
  auto flag_wins = parse({"--store", "sqlite", "--result-ttl-s", "0.5"});
  CHECK(std::get<ServeCommand>(flag_wins).config.store == "sqlite");
  CHECK(std::get<ServeCommand>(flag_wins).config.result_ttl_s == 0.5);
  ::unsetenv("SWITCHYARD_STORE");
  ::unsetenv("SWITCHYARD_DATA_DIR");
}

TEST_CASE("environment variables apply and flags win over them") {
  ::setenv("SWITCHYARD_IO_THREADS", "7", 1);
  ::setenv("SWITCHYARD_DIAGNOSTICS", "true", 1);
  auto from_env = parse({});
  REQUIRE(std::holds_alternative<ServeCommand>(from_env));
  CHECK(std::get<ServeCommand>(from_env).config.io_threads == 7);
  CHECK(std::get<ServeCommand>(from_env).config.diagnostics);
  auto flag_wins = parse({"--io-threads", "3"});
  CHECK(std::get<ServeCommand>(flag_wins).config.io_threads == 3);
  ::unsetenv("SWITCHYARD_IO_THREADS");
  ::unsetenv("SWITCHYARD_DIAGNOSTICS");
}

TEST_CASE("bad values are usage errors, not crashes") {
  for (auto args : std::vector<std::vector<const char*>>{{"--io-threads", "0"},
                                                          {"--listen", "nonsense"},
                                                          {"--listen", "127.0.0.1:99999"},
                                                          {"--log-format", "xml"},
                                                          {"--store", "redis"},
                                                          {"--sqlite-sync", "off"},
                                                          {"--data-dir", ""},
                                                          {"--result-ttl-s", "-1"},
                                                          {"--no-such-flag"},
                                                          {"--http-allow", "10.0.0.0/99"},
                                                          {"--default-timeout-ms", "5000", "--max-timeout-ms", "10"}}) {
    auto command = parse(args);
    REQUIRE(std::holds_alternative<ExitNow>(command));
    CHECK(std::get<ExitNow>(command).code != 0);
  }
}

TEST_CASE("--help exits 0 and lists the contract's flags") {
  auto command = parse({"--help"});
  REQUIRE(std::holds_alternative<ExitNow>(command));
  const auto& help = std::get<ExitNow>(command);
  CHECK(help.code == 0);
  for (const char* flag : {"--listen", "--io-threads", "--process-workers", "--queue-limit", "--default-timeout-ms",
                           "--max-timeout-ms", "--max-body-bytes", "--drain-grace-ms", "--diagnostics",
                           "--log-format", "--tokens-file", "--store", "--data-dir", "--database-url"}) {
    CHECK_MESSAGE(help.text.find(flag) != std::string::npos, flag);
  }
}

TEST_CASE("listen addresses") {
  CHECK(parse_listen("0.0.0.0:0") == std::make_pair(std::string("0.0.0.0"), std::uint16_t{0}));
  CHECK(parse_listen("[::1]:8080") == std::make_pair(std::string("::1"), std::uint16_t{8080}));
  CHECK_FALSE(parse_listen("localhost"));
  CHECK_FALSE(parse_listen(":80"));
  CHECK_FALSE(parse_listen("::1:80"));
}

TEST_CASE("worker arguments round-trip through the worker subcommand") {
  switchyard::workers::WorkerOptions options;
  options.parent = 4242;
  options.builtin.diagnostics = true;
  options.builtin.http_allow = {"10.0.0.0/8", "example.org"};
  options.builtin.http_max_response_bytes = 12345;
  options.log_format = "json";
  options.memory_mb = 256;
  options.max_files = 64;
  options.cpu_seconds = 7;
  options.sandbox = false;
  options.fail_boot = true;
  auto args = worker_arguments(options);
  std::vector<const char*> argv;
  for (auto& a : args) argv.push_back(a.c_str());
  auto command = parse(argv);
  REQUIRE(std::holds_alternative<WorkerCommand>(command));
  const auto& parsed = std::get<WorkerCommand>(command).options;
  CHECK(parsed.fd == 3);
  CHECK(parsed.parent == 4242);
  CHECK(parsed.builtin.diagnostics);
  CHECK(parsed.builtin.http_allow == options.builtin.http_allow);
  CHECK(parsed.builtin.http_max_response_bytes == 12345);
  CHECK(parsed.log_format == "json");
  CHECK(parsed.memory_mb == 256);
  CHECK(parsed.max_files == 64);
  CHECK(parsed.cpu_seconds == 7);
  CHECK_FALSE(parsed.sandbox);
  CHECK(parsed.fail_boot);

  // The defaults round-trip too: sandbox on, no CPU limit, a normal boot.
  auto plain_args = worker_arguments(switchyard::workers::WorkerOptions{});
  std::vector<const char*> plain_argv;
  for (auto& a : plain_args) plain_argv.push_back(a.c_str());
  auto plain = parse(plain_argv);
  REQUIRE(std::holds_alternative<WorkerCommand>(plain));
  CHECK(std::get<WorkerCommand>(plain).options.sandbox);
  CHECK(std::get<WorkerCommand>(plain).options.cpu_seconds == 0);
  CHECK_FALSE(std::get<WorkerCommand>(plain).options.fail_boot);
}

TEST_CASE("worker fault options") {
  auto sandbox_off = parse({"--no-worker-sandbox", "--worker-cpu-seconds", "5", "--worker-max-rss-mb", "300"});
  REQUIRE(std::holds_alternative<ServeCommand>(sandbox_off));
  const auto& c = std::get<ServeCommand>(sandbox_off).config;
  CHECK_FALSE(c.worker_sandbox);
  CHECK(c.worker_cpu_seconds == 5);
  CHECK(c.worker_max_rss_mb == 300);
  auto defaults = parse({});
  CHECK(std::get<ServeCommand>(defaults).config.worker_sandbox);
  // The boot-failure switch is a diagnostic: refused without --diagnostics.
  auto refused = parse({"--diagnostic-fail-worker-boot"});
  REQUIRE(std::holds_alternative<ExitNow>(refused));
  CHECK(std::get<ExitNow>(refused).code != 0);
  auto allowed = parse({"--diagnostics", "--diagnostic-fail-worker-boot"});
  REQUIRE(std::holds_alternative<ServeCommand>(allowed));
  CHECK(std::get<ServeCommand>(allowed).config.diagnostic_fail_worker_boot);
}
