#include <doctest/doctest.h>

#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <optional>
#include <ostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <openssl/evp.h>

#include "workers/http_request_type.hpp"
#include "workers/job_type.hpp"

#include "tests/unit/field_error_printing.hpp"

namespace {

namespace asio = boost::asio;
namespace http = boost::beast::http;
using asio::ip::tcp;
using switchyard::workers::BuiltinOptions;
using switchyard::workers::Catalogue;
using switchyard::workers::FieldError;
using switchyard::workers::JobType;
using switchyard::workers::Kind;
using switchyard::workers::make_builtin_catalogue;
using switchyard::workers::Outcome;
using switchyard::workers::StopFlag;
using switchyard::workers::StopReason;
using Errors = std::vector<FieldError>;
using Json = nlohmann::json;

const Catalogue& catalogue() {
  static const Catalogue instance = [] {
    BuiltinOptions options;
    options.diagnostics = true;
    return make_builtin_catalogue(options);
  }();
  return instance;
}

const JobType& type(std::string_view name) {
  const JobType* t = catalogue().find(name);
  REQUIRE(t != nullptr);
  return *t;
}

BuiltinOptions allowing(std::vector<std::string> allow) {
  BuiltinOptions options;
  options.http_allow = std::move(allow);
  return options;
}

Errors errors(std::string_view name, const char* input) {
  return catalogue().validate(type(name), Json::parse(input));
}

Outcome run_blocking(std::string_view name, const Json& input) {
  StopFlag stop;
  return type(name).blocking(input, stop);
}

double thread_cpu_ms() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
}

std::string sha256_hex(const std::string& bytes, bool raw = false) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(bytes.data(), bytes.size(), md, &len, EVP_sha256(), nullptr);
  if (raw) return std::string(reinterpret_cast<char*>(md), len);
  std::ostringstream out;
  for (unsigned int i = 0; i < len; ++i) {
    static constexpr char kHex[] = "0123456789abcdef";
    out << kHex[md[i] >> 4] << kHex[md[i] & 0xf];
  }
  return out.str();
}

std::uint64_t naive_prime_count(std::uint64_t n) {
  std::vector<bool> composite(n + 1, false);
  std::uint64_t count = 0;
  for (std::uint64_t i = 2; i <= n; ++i) {
    if (composite[i]) continue;
    ++count;
    for (std::uint64_t m = i * i; m <= n; m += i) composite[m] = true;
  }
  return count;
}

/// Runs an async job on `ioc` to completion; rethrows what the job threw.
Outcome run_async(asio::io_context& ioc, const JobType& t, Json input, std::function<void()> on_done = {},
                  asio::cancellation_slot slot = {}) {
  std::optional<Outcome> outcome;
  std::exception_ptr error;
  asio::co_spawn(ioc, t.async(std::move(input)),
                 asio::bind_cancellation_slot(slot, [&](std::exception_ptr e, Outcome o) {
                   error = e;
                   outcome = std::move(o);
                   if (on_done) on_done();
                 }));
  ioc.run();
  ioc.restart();
  if (error) std::rethrow_exception(error);
  REQUIRE(outcome.has_value());
  return *outcome;
}

/// A loopback HTTP server for one test: answers each request with `respond`, or holds the
/// connection open without answering when `respond` is empty.
struct TestServer {
  using Respond = std::function<http::response<http::string_body>(const http::request<http::string_body>&)>;

  TestServer(asio::io_context& ioc, Respond respond_with)
      : acceptor(ioc, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)),
        port(acceptor.local_endpoint().port()),
        respond(std::move(respond_with)) {
    asio::co_spawn(ioc, serve(), asio::detached);
  }
  [[nodiscard]] std::string url(const std::string& path = "/") const {
    return "http://127.0.0.1:" + std::to_string(port) + path;
  }
  void stop() {
    boost::system::error_code ignored;
    acceptor.close(ignored);
    for (auto& socket : held) socket.close(ignored);
  }

  asio::awaitable<void> serve() {
    for (;;) {
      auto [ec, socket] = co_await acceptor.async_accept(asio::as_tuple(asio::use_awaitable));
      if (ec) co_return;
      ++accepted;
      if (!respond) {
        held.push_back(std::move(socket));
        continue;
      }
      boost::beast::flat_buffer buffer;
      http::request<http::string_body> request;
      auto [read_ec, n] = co_await http::async_read(socket, buffer, request, asio::as_tuple(asio::use_awaitable));
      if (read_ec) continue;
      last_request = request;
      auto response = respond(request);
      response.prepare_payload();
      co_await http::async_write(socket, response, asio::as_tuple(asio::use_awaitable));
      boost::system::error_code ignored;
      socket.shutdown(tcp::socket::shutdown_both, ignored);
    }
  }

  tcp::acceptor acceptor;
  std::uint16_t port;
  Respond respond;
  std::vector<tcp::socket> held;
  http::request<http::string_body> last_request;
  int accepted = 0;
};

http::response<http::string_body> reply(http::status status, std::string body) {
  http::response<http::string_body> response{status, 11};
  response.body() = std::move(body);
  return response;
}

}  // namespace

TEST_CASE("builtin catalogue: names, kinds and published schemas") {
  std::vector<std::string> names;
  const Catalogue plain = make_builtin_catalogue({});
  for (const auto& t : plain.types()) names.push_back(t.name);
  CHECK(names == std::vector<std::string>{"sleep", "http.request", "hash", "primes", "burn"});

  names.clear();
  for (const auto& t : catalogue().types()) {
    names.push_back(t.name);
    INFO(t.name);
    CHECK(t.input_schema.at("type") == "object");
    CHECK(t.input_schema.at("additionalProperties") == false);
    CHECK(t.input_schema.contains("required"));
    CHECK_FALSE(t.description.empty());
    const bool fault = t.name == "crash" || t.name == "fork" || t.name == "open_files" || t.name == "hang";
    CHECK(t.diagnostic == (t.name == "noop" || t.name == "alloc" || t.name == "append_log" || fault));
    CHECK(t.process_only == fault);
    CHECK(static_cast<bool>(t.async) == (t.kind == Kind::io));
    CHECK(static_cast<bool>(t.blocking) == (t.kind == Kind::cpu));
  }
  CHECK(names == std::vector<std::string>{"sleep", "http.request", "hash", "primes", "burn", "noop", "alloc", "crash",
                                          "fork", "open_files", "hang", "append_log"});
  CHECK(type("sleep").kind == Kind::io);
  CHECK(type("http.request").kind == Kind::io);
  CHECK(type("primes").kind == Kind::cpu);
  CHECK_THROWS_AS(make_builtin_catalogue(allowing({"10.0.0.0/40"})), std::invalid_argument);
}

TEST_CASE("sleep: validation") {
  CHECK(errors("sleep", R"({"ms": 0})").empty());
  CHECK(errors("sleep", R"({"ms": 86400000})").empty());
  CHECK(errors("sleep", R"({})") == Errors{{"/ms", "is required"}});
  CHECK(errors("sleep", R"({"ms": "10"})") == Errors{{"/ms", "must be an integer"}});
  CHECK(errors("sleep", R"({"ms": 10.5})") == Errors{{"/ms", "must be an integer"}});
  CHECK(errors("sleep", R"({"ms": -1})") == Errors{{"/ms", "must be >= 0"}});
  CHECK(errors("sleep", R"({"ms": 86400001})") == Errors{{"/ms", "must be <= 86400000"}});
  CHECK(errors("sleep", R"({"ms": 1, "extra": 1})") == Errors{{"/extra", "unknown field"}});
  CHECK(errors("sleep", R"([1])") == Errors{{"", "must be an object"}});
}

TEST_CASE("sleep: waits on a timer and is cancellable through its slot") {
  asio::io_context ioc;
  SUBCASE("finishes") {
    auto outcome = run_async(ioc, type("sleep"), Json{{"ms", 30}});
    REQUIRE(outcome.ok);
    CHECK(outcome.result.at("slept_ms").get<double>() >= 30.0);
    CHECK(outcome.result.at("slept_ms").get<double>() < 5000.0);
  }
  SUBCASE("cancelled") {
    asio::cancellation_signal signal;
    asio::steady_timer trigger(ioc, std::chrono::milliseconds(20));
    trigger.async_wait([&](boost::system::error_code) { signal.emit(asio::cancellation_type::terminal); });
    const auto start = std::chrono::steady_clock::now();
    try {
      run_async(ioc, type("sleep"), Json{{"ms", 60'000}}, {}, signal.slot());
      FAIL("sleep was not cancelled");
    } catch (const boost::system::system_error& e) {
      CHECK(e.code() == asio::error::operation_aborted);
    }
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(5));
  }
}

TEST_CASE("hash: validation") {
  CHECK(errors("hash", R"({"data": "abc"})").empty());
  CHECK(errors("hash", R"({"data": "YWJj", "encoding": "base64", "algorithm": "sha512", "iterations": 3})").empty());
  CHECK(errors("hash", R"({})") == Errors{{"/data", "is required"}});
  CHECK(errors("hash", R"({"data": 1})") == Errors{{"/data", "must be a string"}});
  CHECK(errors("hash", R"({"data": "a", "algorithm": "md5"})") ==
        Errors{{"/algorithm", R"(must be one of "sha256", "sha512")"}});
  CHECK(errors("hash", R"({"data": "a", "encoding": "hex"})") ==
        Errors{{"/encoding", R"(must be one of "utf8", "base64")"}});
  CHECK(errors("hash", R"({"data": "a", "iterations": 0})") == Errors{{"/iterations", "must be >= 1"}});
  CHECK(errors("hash", R"({"data": "a", "iterations": 10000001})") == Errors{{"/iterations", "must be <= 10000000"}});
  CHECK(errors("hash", R"({"data": "a", "salt": "x"})") == Errors{{"/salt", "unknown field"}});
  CHECK(errors("hash", R"({"data": "not base64!", "encoding": "base64"})") == Errors{{"/data", "is not valid base64"}});
  CHECK(errors("hash", R"({"data": "YWJ", "encoding": "base64"})").empty());  // padding may be left out
  CHECK(errors("hash", R"({"data": "Y", "encoding": "base64"})") == Errors{{"/data", "is not valid base64"}});
  CHECK(errors("hash", R"({"data": "YW=j", "encoding": "base64"})") == Errors{{"/data", "is not valid base64"}});
  Json big{{"data", std::string(1'048'577, 'x')}};
  CHECK(catalogue().validate(type("hash"), big) == Errors{{"/data", "must be at most 1048576 characters long"}});
}

TEST_CASE("hash: digests") {
  const std::string abc_sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
  CHECK(run_blocking("hash", Json{{"data", "abc"}}).result == Json{{"hex", abc_sha256}});
  CHECK(sha256_hex("abc") == abc_sha256);
  CHECK(run_blocking("hash", Json{{"data", "YWJj"}, {"encoding", "base64"}}).result.at("hex") == abc_sha256);
  CHECK(run_blocking("hash", Json{{"data", "abc"}, {"iterations", 2}}).result.at("hex") ==
        sha256_hex(sha256_hex("abc", true)));
  CHECK(run_blocking("hash", Json{{"data", "abc"}, {"iterations", 3}}).result.at("hex") ==
        sha256_hex(sha256_hex(sha256_hex("abc", true), true)));
  CHECK(run_blocking("hash", Json{{"data", "abc"}, {"algorithm", "sha512"}}).result.at("hex") ==
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f");

  StopFlag stop;
  stop.request(StopReason::cancel);
  auto stopped = type("hash").blocking(Json{{"data", "abc"}, {"iterations", 10'000'000}}, stop);
  CHECK_FALSE(stopped.ok);
  CHECK(stopped.error_code == "cancelled");
}

TEST_CASE("primes: validation") {
  CHECK(errors("primes", R"({"n": 10000000000})").empty());
  CHECK(errors("primes", R"({"n": 10000000001})") == Errors{{"/n", "must be <= 10000000000"}});
  CHECK(errors("primes", R"({"n": -1})") == Errors{{"/n", "must be >= 0"}});
  CHECK(errors("primes", R"({"n": 1e3})") == Errors{{"/n", "must be an integer"}});
  CHECK(errors("primes", R"({"n": 18446744073709551615})") == Errors{{"/n", "must be <= 10000000000"}});
  CHECK(errors("primes", R"({"n": null})") == Errors{{"/n", "must be an integer"}});
  CHECK(errors("primes", R"({})") == Errors{{"/n", "is required"}});
}

TEST_CASE("primes: counts") {
  auto count = [](std::uint64_t n) { return run_blocking("primes", Json{{"n", n}}).result.at("count").get<std::uint64_t>(); };
  CHECK(count(0) == 0);
  CHECK(count(1) == 0);
  CHECK(count(2) == 1);
  CHECK(count(3) == 2);
  CHECK(count(100) == 25);
  CHECK(count(1'000'000) == 78'498);
  CHECK(count(10'000'000) == 664'579);
  // Around the edges of the 2 * 256 Ki-number segments.
  for (std::uint64_t n : {524'287ULL, 524'288ULL, 524'289ULL, 524'290ULL, 524'291ULL, 1'048'577ULL, 1'048'579ULL}) {
    INFO(n);
    CHECK(count(n) == naive_prime_count(n));
  }

  StopFlag stop;
  stop.request(StopReason::timeout);
  auto stopped = type("primes").blocking(Json{{"n", 10'000'000'000ULL}}, stop);
  CHECK_FALSE(stopped.ok);
  CHECK(stopped.error_code == "cancelled");
}

TEST_CASE("burn: validation") {
  CHECK(errors("burn", R"({"ms": 3600000})").empty());
  CHECK(errors("burn", R"({"ms": 3600001})") == Errors{{"/ms", "must be <= 3600000"}});
  CHECK(errors("burn", R"({"ms": true})") == Errors{{"/ms", "must be an integer"}});
  auto found = errors("burn", R"({"seconds": 1})");
  std::sort(found.begin(), found.end(), [](auto& x, auto& y) { return x.path < y.path; });
  CHECK(found == Errors{{"/ms", "is required"}, {"/seconds", "unknown field"}});
}

TEST_CASE("burn: spends thread CPU time and stops when asked") {
  SUBCASE("runs to its target") {
    const double before = thread_cpu_ms();
    auto outcome = run_blocking("burn", Json{{"ms", 60}});
    const double used = thread_cpu_ms() - before;
    REQUIRE(outcome.ok);
    CHECK(outcome.result.at("cpu_ms").get<double>() >= 60.0);
    CHECK(used >= 60.0);
  }
  SUBCASE("stops early") {
    StopFlag stop;
    std::thread stopper([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      stop.request(StopReason::cancel);
    });
    const auto start = std::chrono::steady_clock::now();
    auto outcome = type("burn").blocking(Json{{"ms", 60'000}}, stop);
    stopper.join();
    CHECK_FALSE(outcome.ok);
    CHECK(outcome.error_code == "cancelled");
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(5));
  }
}

TEST_CASE("noop, alloc, crash: validation and runs") {
  CHECK(errors("noop", "{}").empty());
  CHECK(errors("noop", R"({"x": 1})") == Errors{{"/x", "unknown field"}});
  CHECK(run_blocking("noop", Json::object()).result == Json::object());

  CHECK(errors("alloc", R"({"mb": 0})") == Errors{{"/mb", "must be >= 1"}});
  CHECK(errors("alloc", R"({"mb": 65537})") == Errors{{"/mb", "must be <= 65536"}});
  CHECK(errors("alloc", R"({"mb": 1, "hold_ms": 600001})") == Errors{{"/hold_ms", "must be <= 600000"}});
  CHECK(errors("alloc", R"({"hold_ms": 1})") == Errors{{"/mb", "is required"}});
  auto allocated = run_blocking("alloc", Json{{"mb", 8}, {"hold_ms", 20}});
  REQUIRE(allocated.ok);
  CHECK(allocated.result == Json{{"allocated_mb", 8}});
  StopFlag stop;
  stop.request(StopReason::cancel);
  CHECK(type("alloc").blocking(Json{{"mb", 1}, {"hold_ms", 600'000}}, stop).error_code == "cancelled");

  CHECK(errors("crash", R"({"signal": "TERM"})") == Errors{{"/signal", R"(must be one of "SEGV", "ABRT", "KILL")"}});
  CHECK(errors("crash", R"({})") == Errors{{"/signal", "is required"}});
}

TEST_CASE("append_log: validation") {
  CHECK(errors("append_log", R"({"path": "/tmp/x.log", "tag": "job-1", "ms": 0})").empty());
  CHECK(errors("append_log", R"({"path": "/tmp/x.log", "tag": "a", "ms": 600000})").empty());
  CHECK(errors("append_log", R"({"path": "x.log", "tag": "a", "ms": 1})") ==
        Errors{{"/path", "must match the pattern \"^/\""}});
  const auto empty_path = errors("append_log", R"({"path": "", "tag": "a", "ms": 1})");
  REQUIRE(empty_path.size() == 1);
  CHECK(empty_path[0].path == "/path");
  CHECK(errors("append_log", R"({"path": "/tmp/x\u0000y", "tag": "a", "ms": 1})") ==
        Errors{{"/path", "must not contain NUL"}});
  Json long_path{{"path", "/" + std::string(4096, 'p')}, {"tag", "a"}, {"ms", 1}};
  CHECK(catalogue().validate(type("append_log"), long_path) ==
        Errors{{"/path", "must be at most 4096 characters long"}});
  CHECK(errors("append_log", R"({"path": "/tmp/x", "ms": 1})") == Errors{{"/tag", "is required"}});
  CHECK(errors("append_log", R"({"path": "/tmp/x", "tag": "", "ms": 1})") ==
        Errors{{"/tag", "must be at least 1 characters long"}});
  for (const char* tag : {"a b", "a\nb", "a\tb", " a", "a\r"}) {
    INFO(tag);
    CHECK(catalogue().validate(type("append_log"), Json{{"path", "/tmp/x"}, {"tag", tag}, {"ms", 1}}) ==
          Errors{{"/tag", R"(must match the pattern "^[^\\s]+$")"}});
  }
  Json long_tag{{"path", "/tmp/x"}, {"tag", std::string(201, 't')}, {"ms", 1}};
  CHECK(catalogue().validate(type("append_log"), long_tag) == Errors{{"/tag", "must be at most 200 characters long"}});
  CHECK(errors("append_log", R"({"path": "/tmp/x", "tag": "a", "ms": 600001})") ==
        Errors{{"/ms", "must be <= 600000"}});
  CHECK(errors("append_log", R"({"path": "/tmp/x", "tag": "a"})") == Errors{{"/ms", "is required"}});
}

namespace {

/// A fresh directory under $TMPDIR (or /tmp), removed with what it holds.
struct TempDir {
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string pattern = std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/switchyard-unit-XXXXXX";
    REQUIRE(mkdtemp(pattern.data()) != nullptr);
    path = pattern;
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string path;
};

std::vector<std::vector<std::string>> read_fields(const std::string& path) {
  std::ifstream file(path);
  std::vector<std::vector<std::string>> lines;
  for (std::string line; std::getline(file, line);) {
    std::istringstream words(line);
    lines.emplace_back(std::istream_iterator<std::string>(words), std::istream_iterator<std::string>());
  }
  return lines;
}

std::int64_t monotonic_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

}  // namespace

TEST_CASE("append_log: writes a start and an end line around its hold") {
  TempDir dir;
  const std::string log = dir.path + "/jobs.log";
  const std::string pid = std::to_string(getpid());

  SUBCASE("runs to its end") {
    const std::int64_t before = monotonic_ns();
    auto outcome = run_blocking("append_log", Json{{"path", log}, {"tag", "job-1"}, {"ms", 30}});
    const std::int64_t after = monotonic_ns();
    REQUIRE(outcome.ok);
    const auto started = outcome.result.at("started_ns").get<std::int64_t>();
    const auto ended = outcome.result.at("ended_ns").get<std::int64_t>();
    CHECK(outcome.result.at("pid") == getpid());
    CHECK(before <= started);
    CHECK(ended - started >= 30'000'000);
    CHECK(ended <= after);
    CHECK(read_fields(log) == std::vector<std::vector<std::string>>{{"start", "job-1", pid, std::to_string(started)},
                                                                    {"end", "job-1", pid, std::to_string(ended)}});
    // A second run appends; it does not truncate.
    REQUIRE(run_blocking("append_log", Json{{"path", log}, {"tag", "job-2"}, {"ms", 0}}).ok);
    const auto lines = read_fields(log);
    REQUIRE(lines.size() == 4);
    CHECK(lines[2][0] == "start");
    CHECK(lines[2][1] == "job-2");
    CHECK(lines[3][0] == "end");
  }
  SUBCASE("stops early and says so in the file") {
    StopFlag stop;
    std::thread stopper([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      stop.request(StopReason::cancel);
    });
    const auto start = std::chrono::steady_clock::now();
    auto outcome = type("append_log").blocking(Json{{"path", log}, {"tag", "long"}, {"ms", 600'000}}, stop);
    stopper.join();
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(5));
    CHECK_FALSE(outcome.ok);
    CHECK(outcome.error_code == "cancelled");
    const auto lines = read_fields(log);
    REQUIRE(lines.size() == 2);
    CHECK(lines[0][0] == "start");
    CHECK(lines[1][0] == "stop");
    CHECK(lines[1][1] == "long");
    CHECK(lines[1][2] == pid);
    CHECK(std::stoll(lines[1][3]) - std::stoll(lines[0][3]) >= 50'000'000);
  }
  SUBCASE("a file it cannot open is handler_error") {
    auto outcome = run_blocking("append_log", Json{{"path", dir.path + "/missing/jobs.log"}, {"tag", "t"}, {"ms", 0}});
    CHECK_FALSE(outcome.ok);
    CHECK(outcome.error_code == "handler_error");
    CHECK(outcome.error_message == "open " + dir.path + "/missing/jobs.log: No such file or directory");
  }
  SUBCASE("a write that fails is handler_error") {
    if (access("/dev/full", W_OK) != 0) return;  // a minimal container may not have it
    auto outcome = run_blocking("append_log", Json{{"path", "/dev/full"}, {"tag", "t"}, {"ms", 0}});
    CHECK_FALSE(outcome.ok);
    CHECK(outcome.error_code == "handler_error");
    CHECK(outcome.error_message == "write: No space left on device");
  }
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;  // sanitizer runtimes reserve address space; RLIMIT_AS breaks them
#else
constexpr bool kSanitized = false;
#endif

TEST_CASE("alloc: a failed allocation is memory_limit" * doctest::skip(kSanitized)) {
  // Under an address-space limit the allocation fails cleanly; run it in a child to keep the limit there.
  std::fflush(nullptr);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    rlimit limit{std::size_t{512} << 20, std::size_t{512} << 20};
    setrlimit(RLIMIT_AS, &limit);
    StopFlag stop;
    auto outcome = type("alloc").blocking(Json{{"mb", 1024}}, stop);
    _exit(!outcome.ok && outcome.error_code == "memory_limit" && outcome.error_message == "could not allocate 1024 MiB"
              ? 0
              : 1);
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("crash: the process dies of the requested signal") {
  for (const auto& [name, signal] : {std::pair{"SEGV", SIGSEGV}, std::pair{"ABRT", SIGABRT}, std::pair{"KILL", SIGKILL}}) {
    INFO(name);
    std::fflush(nullptr);  // else the child may flush our buffered output a second time
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      rlimit no_core{0, 0};
      setrlimit(RLIMIT_CORE, &no_core);
      std::signal(SIGSEGV, SIG_IGN);  // the job must restore the default disposition itself
      StopFlag stop;
      type("crash").blocking(Json{{"signal", name}}, stop);
      _exit(0);
    }
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == signal);
  }
}

TEST_CASE("http.request: validation") {
  auto& t = type("http.request");
  auto check = [&](const Json& input) { return catalogue().validate(t, input); };
  CHECK(check(Json{{"url", "http://127.0.0.1:8080/x?y=1"}, {"method", "POST"}, {"headers", {{"X-A", "b"}}},
                   {"body", "{}"}, {"timeout_ms", 1000}})
            .empty());
  CHECK(check(Json::object()) == Errors{{"/url", "is required"}});
  CHECK(check(Json{{"url", 5}}) == Errors{{"/url", "must be a string"}});
  CHECK(check(Json{{"url", "https://example.com/"}}) == Errors{{"/url", "only http:// is supported"}});
  CHECK(check(Json{{"url", "ftp://example.com/"}}) == Errors{{"/url", "must be an http:// URL"}});
  CHECK(check(Json{{"url", "not a url"}}) == Errors{{"/url", "is not a valid absolute URL"}});
  CHECK(check(Json{{"url", "http://user:pw@example.com/"}}) == Errors{{"/url", "must not contain user info"}});
  CHECK(check(Json{{"url", "http://example.com:99999/"}}) == Errors{{"/url", "has an invalid port"}});
  CHECK(check(Json{{"url", "http:///path"}}) == Errors{{"/url", "must name a host"}});
  CHECK(check(Json{{"url", "http://a/"}, {"method", "FETCH"}}) ==
        Errors{{"/method", R"(must be one of "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")"}});
  CHECK(check(Json{{"url", "http://a/"}, {"headers", {{"X-Foo", 5}}}}) == Errors{{"/headers/X-Foo", "must be a string"}});
  CHECK(check(Json{{"url", "http://a/"}, {"headers", "x"}}) == Errors{{"/headers", "must be an object"}});
  CHECK(check(Json{{"url", "http://a/"}, {"headers", {{"Bad Name", "v"}}}}) ==
        Errors{{"/headers/Bad Name", "is not a valid header name"}});
  CHECK(check(Json{{"url", "http://a/"}, {"headers", {{"X-A", "v\r\nX-Evil: 1"}}}}) ==
        Errors{{"/headers/X-A", "must not contain CR, LF or NUL"}});
  CHECK(check(Json{{"url", "http://a/"}, {"headers", {{"content-length", "1"}}}}) ==
        Errors{{"/headers/content-length", "is set by the client and cannot be given"}});
  CHECK(check(Json{{"url", "http://a/"}, {"timeout_ms", 0}}) == Errors{{"/timeout_ms", "must be >= 1"}});
  CHECK(check(Json{{"url", "http://a/"}, {"timeout_ms", 30001}}) == Errors{{"/timeout_ms", "must be <= 30000"}});
  CHECK(check(Json{{"url", "http://a/"}, {"follow", true}}) == Errors{{"/follow", "unknown field"}});
  CHECK(check(Json{{"url", "http://a/"}, {"body", 1}}) == Errors{{"/body", "must be a string"}});
}

TEST_CASE("http.request: talks to a loopback server") {
  asio::io_context ioc;
  TestServer server(ioc, [](const http::request<http::string_body>& request) {
    if (request.target() == "/redirect") {
      auto response = reply(http::status::found, "");
      response.set(http::field::location, "/elsewhere");
      return response;
    }
    if (request.target() == "/binary") {
      auto response = reply(http::status::ok, std::string("\x00\xff\xfe", 3));
      response.set("X-Latin1", "caf\xe9");
      return response;
    }
    if (request.target() == "/head") {
      auto response = reply(http::status::ok, std::string(100, 'x'));
      return response;
    }
    auto response = reply(http::status::created, std::string(request.method_string()) + " " +
                                                     std::string(request.target()) + " " + request.body());
    response.set("X-Echo", request["X-Test"]);
    response.insert("X-Multi", "1");
    response.insert("X-Multi", "2");
    return response;
  });
  auto run = [&](Json input) { return run_async(ioc, type("http.request"), std::move(input), [&] { server.stop(); }); };

  SUBCASE("GET with headers") {
    auto outcome = run(Json{{"url", server.url("/path?q=1")}, {"headers", {{"X-Test", "hello"}}}});
    REQUIRE(outcome.ok);
    CHECK(outcome.result.at("status") == 201);
    CHECK(outcome.result.at("body") == "GET /path?q=1 ");
    CHECK(outcome.result.at("headers").at("x-echo") == "hello");
    CHECK(outcome.result.at("headers").at("x-multi") == "1, 2");
    CHECK_FALSE(outcome.result.contains("body_encoding"));
    CHECK(outcome.result.at("elapsed_ms").get<double>() >= 0.0);
    CHECK(server.last_request[http::field::host] == "127.0.0.1:" + std::to_string(server.port));
  }
  SUBCASE("POST with a body") {
    auto outcome = run(Json{{"url", server.url("/submit")}, {"method", "POST"}, {"body", R"({"a":1})"}});
    REQUIRE(outcome.ok);
    CHECK(outcome.result.at("body") == R"(POST /submit {"a":1})");
    CHECK(server.last_request[http::field::content_length] == "7");
  }
  SUBCASE("redirects are returned, not followed") {
    auto outcome = run(Json{{"url", server.url("/redirect")}});
    REQUIRE(outcome.ok);
    CHECK(outcome.result.at("status") == 302);
    CHECK(outcome.result.at("headers").at("location") == "/elsewhere");
    CHECK(server.accepted == 1);
  }
  SUBCASE("a body that is not UTF-8 comes back as base64") {
    auto outcome = run(Json{{"url", server.url("/binary")}});
    REQUIRE(outcome.ok);
    CHECK(outcome.result.at("body") == "AP/+");
    CHECK(outcome.result.at("body_encoding") == "base64");
    CHECK(outcome.result.at("headers").at("x-latin1") == "caf\u00e9");
  }
  SUBCASE("HEAD does not wait for a body") {
    auto outcome = run(Json{{"url", server.url("/head")}, {"method", "HEAD"}, {"timeout_ms", 5000}});
    REQUIRE(outcome.ok);
    CHECK(outcome.result.at("status") == 200);
    CHECK(outcome.result.at("body") == "");
  }
}

TEST_CASE("http.request: a response over the cap fails with response_too_large") {
  asio::io_context ioc;
  TestServer server(ioc, [](const auto&) { return reply(http::status::ok, std::string(4096, 'x')); });
  BuiltinOptions options;
  options.http_max_response_bytes = 1024;
  Catalogue small = make_builtin_catalogue(options);
  auto outcome = run_async(ioc, *small.find("http.request"), Json{{"url", server.url()}}, [&] { server.stop(); });
  CHECK_FALSE(outcome.ok);
  CHECK(outcome.error_code == "response_too_large");
}

TEST_CASE("http.request: timeout_ms and cancellation") {
  asio::io_context ioc;
  TestServer silent(ioc, nullptr);  // accepts, never answers
  SUBCASE("timeout") {
    const auto start = std::chrono::steady_clock::now();
    auto outcome =
        run_async(ioc, type("http.request"), Json{{"url", silent.url()}, {"timeout_ms", 200}}, [&] { silent.stop(); });
    CHECK_FALSE(outcome.ok);
    CHECK(outcome.error_code == "timeout");
    CHECK(std::chrono::steady_clock::now() - start >= std::chrono::milliseconds(190));
    CHECK(silent.accepted == 1);
  }
  SUBCASE("cancelled through the slot") {
    asio::cancellation_signal signal;
    asio::steady_timer trigger(ioc, std::chrono::milliseconds(100));
    trigger.async_wait([&](boost::system::error_code) { signal.emit(asio::cancellation_type::terminal); });
    try {
      run_async(ioc, type("http.request"), Json{{"url", silent.url()}}, [&] { silent.stop(); }, signal.slot());
      FAIL("the request was not cancelled");
    } catch (const boost::system::system_error& e) {
      CHECK(e.code() == asio::error::operation_aborted);
    }
  }
}

TEST_CASE("http.request: denied destinations are never contacted") {
  asio::io_context ioc;
  tcp::acceptor acceptor(ioc, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  const std::string url = "http://127.0.0.1:" + std::to_string(acceptor.local_endpoint().port()) + "/";
  Catalogue restricted = make_builtin_catalogue(allowing({"10.0.0.0/8"}));
  auto outcome = run_async(ioc, *restricted.find("http.request"), Json{{"url", url}});
  CHECK_FALSE(outcome.ok);
  CHECK(outcome.error_code == "destination_denied");
  CHECK(outcome.error_message.find("127.0.0.1") != std::string::npos);
  // No connection is waiting in the backlog.
  acceptor.non_blocking(true);
  boost::system::error_code ec;
  tcp::socket socket(ioc);
  acceptor.accept(socket, ec);
  CHECK(ec == asio::error::would_block);
}

TEST_CASE("http.request: connection refused is http_error") {
  asio::io_context ioc;
  std::uint16_t port = 0;
  {
    tcp::acceptor probe(ioc, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    port = probe.local_endpoint().port();
  }
  auto outcome = run_async(ioc, type("http.request"), Json{{"url", "http://127.0.0.1:" + std::to_string(port) + "/"}});
  CHECK_FALSE(outcome.ok);
  CHECK(outcome.error_code == "http_error");
}

TEST_CASE("http.request: a host name is resolved and every address checked") {
  // Only where /etc/hosts answers for localhost, so that no DNS query leaves the machine.
  std::ifstream hosts("/etc/hosts");
  std::string text((std::istreambuf_iterator<char>(hosts)), std::istreambuf_iterator<char>());
  if (text.find("localhost") == std::string::npos) return;
  asio::io_context ioc;
  TestServer server(ioc, [](const auto&) { return reply(http::status::ok, "named"); });
  const std::string url = "http://localhost:" + std::to_string(server.port) + "/";
  auto outcome = run_async(ioc, type("http.request"), Json{{"url", url}}, [&] { server.stop(); });
  REQUIRE(outcome.ok);
  CHECK(outcome.result.at("body") == "named");

  Catalogue by_name = make_builtin_catalogue(allowing({"other.example"}));
  auto denied = run_async(ioc, *by_name.find("http.request"), Json{{"url", url}});
  CHECK(denied.error_code == "destination_denied");
}

TEST_CASE("destination_allowed: policy") {
  using switchyard::workers::destination_allowed;
  auto ip = [](const char* text) { return boost::asio::ip::make_address(text); };
  const std::vector<std::string> none;

  SUBCASE("empty allow list means loopback only") {
    CHECK(destination_allowed("127.0.0.1", ip("127.0.0.1"), none));
    CHECK(destination_allowed("x", ip("127.8.9.10"), none));
    CHECK(destination_allowed("x", ip("::1"), none));
    CHECK(destination_allowed("x", ip("::ffff:127.0.0.1"), none));
    CHECK_FALSE(destination_allowed("x", ip("10.0.0.1"), none));
    CHECK_FALSE(destination_allowed("x", ip("0.0.0.0"), none));
    CHECK_FALSE(destination_allowed("x", ip("::"), none));
    CHECK_FALSE(destination_allowed("x", ip("169.254.169.254"), none));
  }
  SUBCASE("IPv4 CIDR and single addresses") {
    const std::vector<std::string> allow{"10.0.0.0/9", "192.168.1.10"};
    CHECK(destination_allowed("x", ip("10.0.0.1"), allow));
    CHECK(destination_allowed("x", ip("10.127.255.255"), allow));
    CHECK_FALSE(destination_allowed("x", ip("10.128.0.0"), allow));
    CHECK(destination_allowed("x", ip("192.168.1.10"), allow));
    CHECK_FALSE(destination_allowed("x", ip("192.168.1.11"), allow));
    CHECK_FALSE(destination_allowed("x", ip("127.0.0.1"), allow));  // a list replaces the loopback default
    CHECK(destination_allowed("x", ip("::ffff:10.1.2.3"), allow));
  }
  SUBCASE("IPv6") {
    const std::vector<std::string> allow{"2001:db8::/32", "[fd12::1]"};
    CHECK(destination_allowed("x", ip("2001:db8::1"), allow));
    CHECK(destination_allowed("x", ip("2001:db8:ffff::1"), allow));
    CHECK_FALSE(destination_allowed("x", ip("2001:db9::1"), allow));
    CHECK(destination_allowed("x", ip("fd12::1"), allow));
    CHECK_FALSE(destination_allowed("x", ip("fd12::2"), allow));
    CHECK_FALSE(destination_allowed("x", ip("32.1.13.184"), allow));  // an IPv4 address never matches an IPv6 block
    CHECK_FALSE(destination_allowed("x", ip("::1"), allow));
  }
  SUBCASE("host names match the URL host exactly, case-insensitively") {
    const std::vector<std::string> allow{"api.example.com"};
    CHECK(destination_allowed("api.example.com", ip("203.0.113.5"), allow));
    CHECK(destination_allowed("API.Example.COM", ip("203.0.113.5"), allow));
    CHECK_FALSE(destination_allowed("evil.example.com", ip("203.0.113.5"), allow));
    CHECK_FALSE(destination_allowed("api.example.com.evil", ip("203.0.113.5"), allow));
  }
  SUBCASE("link-local and metadata need an explicit block") {
    for (const auto& allow : {std::vector<std::string>{"0.0.0.0/0", "::/0"}, std::vector<std::string>{"169.254.169.254.nip"},
                              std::vector<std::string>{"metadata"}}) {
      CHECK_FALSE(destination_allowed("metadata", ip("169.254.169.254"), allow));
      CHECK_FALSE(destination_allowed("metadata", ip("169.254.1.1"), allow));
      CHECK_FALSE(destination_allowed("metadata", ip("fe80::1"), allow));
      CHECK_FALSE(destination_allowed("metadata", ip("::ffff:169.254.169.254"), allow));
      CHECK_FALSE(destination_allowed("metadata", ip("fd00:ec2::254"), allow));
    }
    CHECK(destination_allowed("x", ip("169.254.169.254"), {"169.254.169.254"}));
    CHECK(destination_allowed("x", ip("169.254.169.254"), {"169.254.0.0/16"}));
    CHECK_FALSE(destination_allowed("x", ip("169.254.169.254"), {"169.254.1.0/24"}));
    CHECK_FALSE(destination_allowed("x", ip("169.254.169.254"), {"169.0.0.0/8"}));
    CHECK(destination_allowed("x", ip("fe80::1"), {"fe80::/10"}));
    CHECK(destination_allowed("x", ip("fd00:ec2::254"), {"fd00:ec2::254/128"}));
    CHECK_FALSE(destination_allowed("x", ip("fd00:ec2::254"), {"fd00::/8"}));
    CHECK(destination_allowed("x", ip("fd00::1"), {"fd00::/8"}));
  }
  SUBCASE("malformed entries match nothing and are rejected at startup") {
    using switchyard::workers::check_http_allow_list;
    CHECK_FALSE(destination_allowed("x", ip("10.0.0.1"), {"10.0.0.0/33"}));
    CHECK_NOTHROW(check_http_allow_list({"localhost", "api.example.com", "10.0.0.0/8", "::1", "[::1]", "fe80::/10"}));
    for (const char* bad : {"10.0.0.0/33", "::/129", "1.2.3.4/x", "1.2.3.4/", "bad host!", "", "10.0.0.0/8/8", "fe80::zz"}) {
      INFO(bad);
      CHECK_THROWS_AS(check_http_allow_list({bad}), std::invalid_argument);
    }
  }
}
