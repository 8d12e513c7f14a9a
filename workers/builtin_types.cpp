#include "workers/http_request_type.hpp"
#include "workers/job_type.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <openssl/evp.h>
#include <spdlog/spdlog.h>

namespace switchyard::workers {
namespace {

using Json = nlohmann::json;

double ms_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

Json integer_schema(std::int64_t minimum, std::int64_t maximum, const char* description) {
  return {{"type", "integer"}, {"minimum", minimum}, {"maximum", maximum}, {"description", description}};
}

Json object_schema(Json properties, Json required) {
  return {{"type", "object"},
          {"properties", std::move(properties)},
          {"required", std::move(required)},
          {"additionalProperties", false}};
}

// Strict RFC 4648 base64 (standard alphabet); the trailing padding may be left out.
std::optional<std::string> base64_decode(std::string_view text) {
  if (text.size() % 4 == 0) {
    for (int i = 0; i < 2 && !text.empty() && text.back() == '='; ++i) text.remove_suffix(1);
  }
  if (text.size() % 4 == 1) return std::nullopt;
  std::string out;
  out.reserve(text.size() / 4 * 3 + 2);
  std::uint32_t bits = 0;
  int count = 0;
  for (char c : text) {
    std::uint32_t v = 0;
    if (c >= 'A' && c <= 'Z') {
      v = static_cast<std::uint32_t>(c - 'A');
    } else if (c >= 'a' && c <= 'z') {
      v = static_cast<std::uint32_t>(c - 'a' + 26);
    } else if (c >= '0' && c <= '9') {
      v = static_cast<std::uint32_t>(c - '0' + 52);
    } else if (c == '+') {
      v = 62;
    } else if (c == '/') {
      v = 63;
    } else {
      return std::nullopt;
    }
    bits = (bits << 6) | v;
    if (++count == 4) {
      out += static_cast<char>((bits >> 16) & 0xff);
      out += static_cast<char>((bits >> 8) & 0xff);
      out += static_cast<char>(bits & 0xff);
      bits = 0;
      count = 0;
    }
  }
  if (count == 2) {
    out += static_cast<char>((bits >> 4) & 0xff);
  } else if (count == 3) {
    out += static_cast<char>((bits >> 10) & 0xff);
    out += static_cast<char>((bits >> 2) & 0xff);
  }
  return out;
}

boost::asio::awaitable<Outcome> run_sleep(Json input) {
  const auto ms = input.at("ms").get<std::int64_t>();
  boost::asio::steady_timer timer(co_await boost::asio::this_coro::executor);
  const auto start = std::chrono::steady_clock::now();
  timer.expires_after(std::chrono::milliseconds(ms));
  // A cancelled wait throws system_error(operation_aborted); the executor maps it.
  co_await timer.async_wait(boost::asio::use_awaitable);
  co_return Outcome::success({{"slept_ms", ms_since(start)}});
}

JobType sleep_type() {
  JobType t;
  t.name = "sleep";
  t.kind = Kind::io;
  t.description = "Waits for the given number of milliseconds on a timer without holding a thread.";
  t.input_schema = object_schema({{"ms", integer_schema(0, 86'400'000, "How long to wait, in milliseconds.")}},
                                 {"ms"});
  t.async = run_sleep;
  return t;
}

struct EvpMdDeleter {
  void operator()(EVP_MD* md) const noexcept { EVP_MD_free(md); }
};
struct EvpMdCtxDeleter {
  void operator()(EVP_MD_CTX* ctx) const noexcept { EVP_MD_CTX_free(ctx); }
};

Outcome run_hash(const Json& input, const StopFlag& stop) {
  auto data = input.at("data").get<std::string>();
  if (input.value("encoding", "utf8") == "base64") {
    auto decoded = base64_decode(data);
    if (!decoded) return Outcome::failure("handler_error", "data is not valid base64");
    data = std::move(*decoded);
  }
  const auto iterations = input.value("iterations", std::int64_t{1});
  // An explicit fetch keeps OpenSSL 3 from looking the algorithm up again on every init.
  std::unique_ptr<EVP_MD, EvpMdDeleter> md(
      EVP_MD_fetch(nullptr, input.value("algorithm", "sha256") == "sha512" ? "SHA2-512" : "SHA2-256", nullptr));
  std::unique_ptr<EVP_MD_CTX, EvpMdCtxDeleter> ctx(EVP_MD_CTX_new());
  if (!md || !ctx) return Outcome::failure("handler_error", "OpenSSL digest unavailable");

  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int length = 0;
  const void* next = data.data();
  std::size_t next_size = data.size();
  for (std::int64_t i = 0; i < iterations; ++i) {
    if (i % 1024 == 1023 && stop.stop_requested()) return Outcome::failure("cancelled", "stopped");
    if (EVP_DigestInit_ex2(ctx.get(), md.get(), nullptr) != 1 || EVP_DigestUpdate(ctx.get(), next, next_size) != 1 ||
        EVP_DigestFinal_ex(ctx.get(), digest.data(), &length) != 1) {
      return Outcome::failure("handler_error", "OpenSSL digest failed");
    }
    next = digest.data();
    next_size = length;
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(length * 2);
  for (unsigned int i = 0; i < length; ++i) {
    hex += kHex[digest[i] >> 4];
    hex += kHex[digest[i] & 0xf];
  }
  return Outcome::success({{"hex", hex}});
}

JobType hash_type() {
  JobType t;
  t.name = "hash";
  t.kind = Kind::cpu;
  t.description = "Computes an iterated SHA-256 or SHA-512 digest of the data and returns it as hex.";
  t.input_schema = object_schema(
      {{"data", {{"type", "string"}, {"maxLength", 1'048'576}, {"description", "The bytes to digest, as text or base64."}}},
       {"encoding",
        {{"type", "string"}, {"enum", {"utf8", "base64"}}, {"default", "utf8"}, {"description", "How data is encoded."}}},
       {"algorithm",
        {{"type", "string"}, {"enum", {"sha256", "sha512"}}, {"default", "sha256"}, {"description", "Digest algorithm."}}},
       {"iterations",
        {{"type", "integer"},
         {"minimum", 1},
         {"maximum", 10'000'000},
         {"default", 1},
         {"description", "Digest rounds: the first over data, each later one over the previous digest."}}}},
      {"data"});
  t.blocking = run_hash;
  t.extra_check = [](const Json& input) {
    std::vector<FieldError> errors;
    if (input.value("encoding", "utf8") == "base64" && !base64_decode(input.at("data").get<std::string>())) {
      errors.push_back({"/data", "is not valid base64"});
    }
    return errors;
  };
  return t;
}

std::uint64_t isqrt(std::uint64_t n) {
  auto r = static_cast<std::uint64_t>(std::sqrt(static_cast<double>(n)));
  while (r * r > n) --r;
  while ((r + 1) * (r + 1) <= n) ++r;
  return r;
}

/// Odd primes up to `limit` (inclusive), by a plain sieve: limit is at most sqrt(n).
std::vector<std::uint64_t> odd_primes_up_to(std::uint64_t limit) {
  std::vector<bool> composite(limit + 1, false);
  std::vector<std::uint64_t> primes;
  for (std::uint64_t p = 3; p <= limit; p += 2) {
    if (composite[p]) continue;
    primes.push_back(p);
    for (std::uint64_t m = p * p; m <= limit; m += 2 * p) composite[m] = true;
  }
  return primes;
}

// Segmented sieve over odd numbers: memory is O(sqrt(n)) for the base primes plus one segment.
Outcome run_primes(const Json& input, const StopFlag& stop) {
  const auto n = input.at("n").get<std::uint64_t>();
  if (n < 2) return Outcome::success({{"count", 0}});
  constexpr std::uint64_t kSegmentOdds = 256 * 1024;  // one byte per odd number: 256 KiB
  const auto base = odd_primes_up_to(isqrt(n));
  std::vector<std::uint64_t> next(base.size());  // next odd multiple of each base prime to strike
  for (std::size_t i = 0; i < base.size(); ++i) next[i] = base[i] * base[i];
  std::vector<unsigned char> segment(kSegmentOdds);

  std::uint64_t count = 1;  // the prime 2
  for (std::uint64_t low = 3; low <= n; low += 2 * kSegmentOdds) {
    if (stop.stop_requested()) return Outcome::failure("cancelled", "stopped");
    const std::uint64_t high = std::min(n, low + 2 * kSegmentOdds - 1);  // inclusive
    const std::uint64_t odds = (high - low) / 2 + 1;
    std::fill_n(segment.begin(), odds, static_cast<unsigned char>(1));
    for (std::size_t i = 0; i < base.size(); ++i) {
      std::uint64_t m = next[i];
      for (; m <= high; m += 2 * base[i]) segment[(m - low) / 2] = 0;
      next[i] = m;
    }
    count += static_cast<std::uint64_t>(std::count(segment.begin(), segment.begin() + static_cast<std::ptrdiff_t>(odds),
                                                   static_cast<unsigned char>(1)));
  }
  return Outcome::success({{"count", count}});
}

JobType primes_type() {
  JobType t;
  t.name = "primes";
  t.kind = Kind::cpu;
  t.description = "Counts the primes less than or equal to n with a memory-bounded segmented sieve.";
  t.input_schema =
      object_schema({{"n", integer_schema(0, 10'000'000'000, "Upper bound (inclusive) of the primes to count.")}}, {"n"});
  t.blocking = run_primes;
  return t;
}

// Where burn stores its arithmetic, so that the optimiser cannot drop the loop.
volatile std::uint64_t burn_sink = 0;

double thread_cpu_ms() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
}

Outcome run_burn(const Json& input, const StopFlag& stop) {
  const auto target = static_cast<double>(input.at("ms").get<std::int64_t>());
  const double start = thread_cpu_ms();
  std::uint64_t x = 1;
  for (;;) {
    const double used = thread_cpu_ms() - start;
    if (used >= target) return Outcome::success({{"cpu_ms", used}});
    if (stop.stop_requested()) return Outcome::failure("cancelled", "stopped after " + std::to_string(used) + " ms of CPU");
    for (int i = 0; i < 20'000; ++i) x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    burn_sink = x;
  }
}

JobType burn_type() {
  JobType t;
  t.name = "burn";
  t.kind = Kind::cpu;
  t.description = "Spins until the running thread has used the given milliseconds of CPU time.";
  t.input_schema =
      object_schema({{"ms", integer_schema(0, 3'600'000, "CPU time to consume, in milliseconds.")}}, {"ms"});
  t.blocking = run_burn;
  return t;
}

JobType noop_type() {
  JobType t;
  t.name = "noop";
  t.kind = Kind::cpu;
  t.description = "Returns an empty result at once, to measure dispatch overhead (diagnostic).";
  t.input_schema = object_schema(Json::object(), Json::array());
  t.diagnostic = true;
  t.blocking = [](const Json&, const StopFlag&) { return Outcome::success(Json::object()); };
  return t;
}

struct FreeDeleter {
  void operator()(void* p) const noexcept { std::free(p); }
};

Outcome run_alloc(const Json& input, const StopFlag& stop) {
  const auto mb = input.at("mb").get<std::uint64_t>();
  const auto hold = std::chrono::milliseconds(input.value("hold_ms", std::int64_t{0}));
  const std::size_t bytes = static_cast<std::size_t>(mb) << 20;
  std::unique_ptr<void, FreeDeleter> block(std::malloc(bytes));
  if (!block) return Outcome::failure("memory_limit", "could not allocate " + std::to_string(mb) + " MiB");
  // Writing one byte per page makes the kernel back every page, so RSS (and limits) see it all.
  auto* bytes_ptr = static_cast<volatile unsigned char*>(block.get());
  constexpr std::size_t kPage = 4096;
  constexpr std::size_t kPollEvery = std::size_t{64} << 20;
  for (std::size_t offset = 0; offset < bytes; offset += kPage) {
    if (offset % kPollEvery == 0 && stop.stop_requested()) return Outcome::failure("cancelled", "stopped");
    bytes_ptr[offset] = 1;
  }
  const auto deadline = std::chrono::steady_clock::now() + hold;
  for (auto now = std::chrono::steady_clock::now(); now < deadline; now = std::chrono::steady_clock::now()) {
    if (stop.stop_requested()) return Outcome::failure("cancelled", "stopped");
    std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(deadline - now, std::chrono::milliseconds(10)));
  }
  return Outcome::success({{"allocated_mb", mb}});
}

JobType alloc_type() {
  JobType t;
  t.name = "alloc";
  t.kind = Kind::cpu;
  t.description = "Allocates and touches the given MiB of memory, holds it, then frees it (diagnostic, for limit tests).";
  t.input_schema = object_schema({{"mb", integer_schema(1, 65'536, "Memory to allocate, in MiB.")},
                                  {"hold_ms", integer_schema(0, 600'000, "How long to hold the memory, in milliseconds.")}},
                                 {"mb"});
  t.diagnostic = true;
  t.blocking = run_alloc;
  return t;
}

// Only meaningful inside a worker process: on an io thread it would take the server down, which
// is why the dispatcher refuses the thread model for this type.
Outcome run_crash(const Json& input, const StopFlag&) {
  const auto name = input.at("signal").get<std::string>();
  const int sig = name == "SEGV" ? SIGSEGV : name == "ABRT" ? SIGABRT : SIGKILL;
  spdlog::warn("crash job raising SIG{} in pid {}", name, ::getpid());
  if (sig != SIGKILL) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
    std::signal(sig, SIG_DFL);  // a crash handler must not swallow it
  }
  std::raise(sig);
  return Outcome::failure("handler_error", "SIG" + name + " did not end the process");
}

JobType crash_type() {
  JobType t;
  t.name = "crash";
  t.kind = Kind::cpu;
  t.description =
      "Kills the worker process running it with the given signal (diagnostic, for isolation tests; process model only).";
  t.input_schema = object_schema(
      {{"signal",
        {{"type", "string"}, {"enum", {"SEGV", "ABRT", "KILL"}}, {"description", "The signal the worker raises."}}}},
      {"signal"});
  t.diagnostic = true;
  t.process_only = true;  // on a thread it would kill the server
  t.blocking = run_crash;
  return t;
}

/// A diagnostic fault-injection type that only runs inside a worker process.
JobType process_only_diagnostic(std::string name, std::string description, Json input_schema,
                                BlockingRun handler) {
  JobType t;
  t.name = std::move(name);
  t.kind = Kind::cpu;
  t.description = std::move(description);
  t.input_schema = std::move(input_schema);
  t.diagnostic = true;
  t.process_only = true;  // on an io thread it would hit the server itself
  t.blocking = std::move(handler);
  return t;
}

/// A fork bomb's first step: creates processes until told to stop or refused. In a sandboxed
/// worker the first fork() fails with EPERM and the job fails with process_limit.
Outcome run_fork(const Json& input, const StopFlag&) {
  const auto wanted = input.at("processes").get<int>();
  int forked = 0;
  for (; forked < wanted; ++forked) {
    const pid_t child = ::fork();
    if (child == 0) ::_exit(0);
    if (child < 0) {
      const int error = errno;
      return Outcome::failure("process_limit", "could not create a process after " + std::to_string(forked) +
                                                   ": fork: " + std::strerror(error));
    }
    ::waitpid(child, nullptr, 0);
  }
  return Outcome::success({{"forked", forked}});
}

JobType fork_type() {
  return process_only_diagnostic(
      "fork",
      "Tries to create the given number of processes (diagnostic: workers forbid it, so it fails "
      "process_limit; process model only).",
      object_schema({{"processes", integer_schema(1, 100'000, "How many processes to try to create.")}}, {"processes"}),
      run_fork);
}

/// Opens files until it has `count` or the worker's open-file limit stops it (file_limit).
Outcome run_open_files(const Json& input, const StopFlag&) {
  const auto wanted = input.at("count").get<int>();
  std::vector<int> fds;
  fds.reserve(static_cast<std::size_t>(std::min(wanted, 65'536)));
  int error = 0;
  while (static_cast<int>(fds.size()) < wanted) {
    const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      error = errno;
      break;
    }
    fds.push_back(fd);
  }
  const auto opened = fds.size();
  for (int fd : fds) ::close(fd);
  if (error != 0) {
    return Outcome::failure(error == EMFILE || error == ENFILE ? "file_limit" : "handler_error",
                            "could not open more than " + std::to_string(opened) + " files: " + std::strerror(error));
  }
  return Outcome::success({{"opened", opened}});
}

JobType open_files_type() {
  return process_only_diagnostic(
      "open_files",
      "Opens the given number of files at once, then closes them (diagnostic, for the open-file limit; "
      "process model only).",
      object_schema({{"count", integer_schema(1, 10'000'000, "How many files to hold open at once.")}}, {"count"}),
      run_open_files);
}

/// Stops answering: ignores SIGTERM and sleeps forever, so only the job's deadline (SIGKILL to
/// the worker) ends it.
Outcome run_hang(const Json&, const StopFlag&) {
  std::signal(SIGTERM, SIG_IGN);
  for (;;) ::pause();
}

JobType hang_type() {
  return process_only_diagnostic(
      "hang",
      "Never answers and ignores SIGTERM (diagnostic: the job's deadline must kill the worker; process model only).",
      object_schema(Json::object(), Json::array()), run_hang);
}

std::int64_t monotonic_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

/// A file descriptor that closes itself.
class OwnedFd {
 public:
  explicit OwnedFd(int fd) noexcept : fd_(fd) {}
  OwnedFd(const OwnedFd&) = delete;
  OwnedFd& operator=(const OwnedFd&) = delete;
  ~OwnedFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  [[nodiscard]] int get() const noexcept { return fd_; }

 private:
  int fd_;
};

/// The timestamp a line carries, or why it could not be written.
struct Appended {
  std::int64_t ns = 0;
  std::string error;  ///< empty when the line was written
};

/// Appends `<event> <tag> <pid> <ns>` with one write(). With O_APPEND, Linux moves to the end of
/// a regular file and writes under one inode lock, so lines from concurrent writers (workers,
/// other servers) never interleave.
Appended append_event(int fd, std::string_view event, const std::string& tag) {
  const std::int64_t ns = monotonic_ns();
  std::string line;
  line.reserve(event.size() + tag.size() + 48);
  line.append(event).append(" ").append(tag).append(" ");
  line.append(std::to_string(::getpid())).append(" ").append(std::to_string(ns)).append("\n");
  for (;;) {
    const ssize_t n = ::write(fd, line.data(), line.size());
    if (n == static_cast<ssize_t>(line.size())) return {ns, {}};
    const int error = errno;
    if (n < 0 && error == EINTR) continue;
    // A short write leaves half a line for the next writer to run into: report it.
    return {ns, "write: " + std::string(n < 0 ? std::strerror(error) : "short write")};
  }
}

Outcome run_append_log(const Json& input, const StopFlag& stop) {
  const auto path = input.at("path").get<std::string>();
  const auto tag = input.at("tag").get<std::string>();
  const auto ms = input.at("ms").get<std::int64_t>();
  OwnedFd fd(::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644));
  if (fd.get() < 0) {
    const int error = errno;
    return Outcome::failure("handler_error", "open " + path + ": " + std::strerror(error));
  }

  const Appended start = append_event(fd.get(), "start", tag);
  if (!start.error.empty()) return Outcome::failure("handler_error", start.error);
  // Timed on the clock the lines carry, so that a reader of the file can compare the two.
  const std::int64_t deadline_ns = start.ns + ms * 1'000'000;
  for (std::int64_t now = monotonic_ns(); now < deadline_ns; now = monotonic_ns()) {
    if (stop.stop_requested()) {
      const Appended stopped = append_event(fd.get(), "stop", tag);
      if (!stopped.error.empty()) return Outcome::failure("handler_error", stopped.error);
      return Outcome::failure("cancelled",
                              "stopped after " + std::to_string((stopped.ns - start.ns) / 1'000'000) + " ms");
    }
    std::this_thread::sleep_for(std::chrono::nanoseconds(std::min<std::int64_t>(deadline_ns - now, 10'000'000)));
  }
  const Appended end = append_event(fd.get(), "end", tag);
  if (!end.error.empty()) return Outcome::failure("handler_error", end.error);
  return Outcome::success({{"pid", ::getpid()}, {"started_ns", start.ns}, {"ended_ns", end.ns}});
}

JobType append_log_type() {
  JobType t;
  t.name = "append_log";
  t.kind = Kind::cpu;
  t.description =
      "Appends a start line to a file, holds for ms, then appends an end line (diagnostic: proves from the file "
      "that no job runs twice at once).";
  t.input_schema = object_schema(
      {{"path",
        {{"type", "string"},
         {"minLength", 1},
         {"maxLength", 4096},
         {"pattern", "^/"},
         {"description", "Absolute path of the file to append to; created (mode 0644) if missing."}}},
       {"tag",
        {{"type", "string"},
         {"minLength", 1},
         {"maxLength", 200},
         {"pattern", "^[^\\s]+$"},
         {"description", "Names the job in its lines; no whitespace."}}},
       {"ms", integer_schema(0, 600'000, "How long to hold between the start and end lines, in milliseconds.")}},
      {"path", "tag", "ms"});
  t.diagnostic = true;
  t.blocking = run_append_log;
  t.extra_check = [](const Json& input) {
    std::vector<FieldError> errors;
    if (input.at("path").get<std::string>().find('\0') != std::string::npos) {
      errors.push_back({"/path", "must not contain NUL"});
    }
    return errors;
  };
  return t;
}

}  // namespace

void register_builtin_types(Catalogue& catalogue, const BuiltinOptions& options) {
  catalogue.add(sleep_type());
  register_http_request_type(catalogue, options);
  catalogue.add(hash_type());
  catalogue.add(primes_type());
  catalogue.add(burn_type());
  if (options.diagnostics) {
    catalogue.add(noop_type());
    catalogue.add(alloc_type());
    catalogue.add(crash_type());
    catalogue.add(fork_type());
    catalogue.add(open_files_type());
    catalogue.add(hang_type());
    catalogue.add(append_log_type());
  }
}

}  // namespace switchyard::workers
