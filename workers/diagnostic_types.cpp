#include "workers/diagnostic_types.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>

#include "workers/schema_helpers.hpp"

namespace switchyard::workers {
namespace {

using Json = nlohmann::json;

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

void register_diagnostic_types(Catalogue& catalogue) {
  catalogue.add(noop_type());
  catalogue.add(alloc_type());
  catalogue.add(crash_type());
  catalogue.add(fork_type());
  catalogue.add(open_files_type());
  catalogue.add(hang_type());
  catalogue.add(append_log_type());
}

}  // namespace switchyard::workers
