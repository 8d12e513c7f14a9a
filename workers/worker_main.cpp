#include "workers/worker_main.hpp"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <exception>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <sched.h>
#include <seccomp.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/system/system_error.hpp>

#include "workers/cpu_time.hpp"
#include "workers/frame.hpp"

namespace switchyard::workers {
namespace {

/// The worker's end of the socket, read in pieces as large as what has arrived (64 KiB, or a
/// larger frame's whole size): the server sends a run frame's header and payload together, so
/// one read() usually takes the whole frame, where reading the header and then the payload cost
/// two system calls per job.
class FrameInput {
 public:
  explicit FrameInput(int fd) : fd_(fd) {}

  /// Makes `size` unread bytes available and returns them (valid until the next call), or
  /// nullopt on end of file or error.
  std::optional<std::string_view> take(std::size_t size) {
    if (end_ - begin_ < size) {
      // Unread bytes (none, usually: the server sends nothing ahead) move to the front; the
      // buffer keeps at least a piece's room.
      if (begin_ < end_) std::memmove(buffer_.data(), buffer_.data() + begin_, end_ - begin_);
      end_ -= begin_;
      begin_ = 0;
      if (end_ == 0 && buffer_.size() > kPiece && size <= kPiece) {
        buffer_ = std::string(kPiece, '\0');  // a large frame's room is not kept for the small ones after it
      }
      if (buffer_.size() < size) buffer_.resize(std::max(size, kPiece));
      while (end_ < size) {
        const ssize_t n = ::read(fd_, buffer_.data() + end_, buffer_.size() - end_);
        if (n == 0) return std::nullopt;
        if (n < 0) {
          if (errno == EINTR) continue;
          return std::nullopt;
        }
        end_ += static_cast<std::size_t>(n);
      }
    }
    const std::string_view bytes(buffer_.data() + begin_, size);
    begin_ += size;
    return bytes;
  }

 private:
  static constexpr std::size_t kPiece = 64 * 1024;
  int fd_;
  std::string buffer_;
  std::size_t begin_ = 0;  // unread bytes are [begin_, end_)
  std::size_t end_ = 0;
};

bool write_all(int fd, const std::string& data) {
  const char* p = data.data();
  std::size_t left = data.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += n;
    left -= static_cast<std::size_t>(n);
  }
  return true;
}

/// Runs an async job type to completion on a private io_context (an io type forced onto the
/// process model). Nothing else runs here, so the single thread is the worker's own.
Outcome run_async(const JobType& type, const nlohmann::json& input) {
  boost::asio::io_context context(1);
  Outcome outcome = Outcome::failure("handler_error", "job did not complete");
  boost::asio::co_spawn(context, type.async(input),
                        [&outcome](std::exception_ptr error, Outcome result) {
                          if (error) {
                            try {
                              std::rethrow_exception(error);
                            } catch (const std::exception& e) {
                              outcome = Outcome::failure("handler_error", e.what());
                            }
                          } else {
                            outcome = std::move(result);
                          }
                        });
  context.run();
  return outcome;
}

Outcome run_job(const Catalogue& catalogue, const nlohmann::json& request) {
  const auto* type = catalogue.find(request.at("type").get<std::string>());
  if (type == nullptr) return Outcome::failure("handler_error", "unknown job type in run frame");
  const auto& input = request.at("input");
  try {
    if (type->blocking) {
      static const StopFlag never_stopped;  // a worker is stopped by being killed
      return type->blocking(input, never_stopped);
    }
    return run_async(*type, input);
  } catch (const std::bad_alloc&) {
    return Outcome::failure("memory_limit", "the job ran out of memory");
  } catch (const std::exception& e) {
    return Outcome::failure("handler_error", e.what());
  }
}

void set_limit(int resource, rlim_t soft, rlim_t hard, const char* name) {
  const rlimit limit{soft, hard};
  if (::setrlimit(resource, &limit) != 0) {
    std::fprintf(stderr, "switchyard worker: setrlimit(%s): %s\n", name, std::strerror(errno));
  }
}

/// Gives the next job `seconds` of CPU time from now: SIGXCPU ends the worker past it, and the
/// server reports the job failed with cpu_limit. The hard limit stays where it is, so the soft
/// limit can move forward for every job.
/// `used_ms` is the process's CPU time now; `hard` the hard limit (which the worker never moves).
void arm_cpu_limit(std::size_t seconds, double used_ms, rlim_t hard) {
  const auto used_s = static_cast<rlim_t>(used_ms / 1000.0) + 1;
  rlim_t soft = used_s + seconds;
  if (hard != RLIM_INFINITY) soft = std::min(soft, hard);
  set_limit(RLIMIT_CPU, soft, hard, "RLIMIT_CPU");
}

}  // namespace

bool install_process_sandbox(std::string& problem) {
  scmp_filter_ctx filter = ::seccomp_init(SCMP_ACT_ALLOW);
  if (filter == nullptr) {
    problem = "seccomp_init failed";
    return false;
  }
  int rc = 0;
  const auto deny = [&](int syscall, std::uint32_t action) {
    if (rc == 0) rc = ::seccomp_rule_add(filter, action, syscall, 0);
  };
  deny(SCMP_SYS(fork), SCMP_ACT_ERRNO(EPERM));
  deny(SCMP_SYS(vfork), SCMP_ACT_ERRNO(EPERM));
  deny(SCMP_SYS(execve), SCMP_ACT_ERRNO(EPERM));
  deny(SCMP_SYS(execveat), SCMP_ACT_ERRNO(EPERM));
  // clone3 passes its flags in memory, where a filter cannot look: ENOSYS makes glibc fall back
  // to clone, whose flags can be checked.
  deny(SCMP_SYS(clone3), SCMP_ACT_ERRNO(ENOSYS));
  if (rc == 0) {
    rc = ::seccomp_rule_add(filter, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1,
                            SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, 0));
  }
  if (rc == 0) rc = ::seccomp_load(filter);  // also sets no_new_privs
  ::seccomp_release(filter);
  if (rc != 0) {
    problem = std::strerror(-rc);
    return false;
  }
  return true;
}

int worker_main(const WorkerOptions& options) {
  // Die with the server, and notice if it died before this line ran.
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (options.parent != 0 && ::getppid() != options.parent) return 0;
  std::signal(SIGPIPE, SIG_IGN);
  std::signal(SIGINT, SIG_IGN);  // Ctrl-C reaches the whole process group; the server decides
  if (options.fail_boot) {
    std::fprintf(stderr, "switchyard worker: failing before hello on purpose (--diagnostic-fail-worker-boot)\n");
    return 3;
  }

  // Limits apply to the whole worker, so a job over them fails alone (std::bad_alloc becomes
  // memory_limit) and the server replaces the worker.
  if (options.memory_mb > 0) {
    set_limit(RLIMIT_AS, options.memory_mb << 20, options.memory_mb << 20, "RLIMIT_AS");
  }
  if (options.max_files > 0) set_limit(RLIMIT_NOFILE, options.max_files, options.max_files, "RLIMIT_NOFILE");
  set_limit(RLIMIT_CORE, 0, 0, "RLIMIT_CORE");  // a crashing job must not fill the disk with cores
  if (options.sandbox) {
    std::string problem;
    if (!install_process_sandbox(problem)) {
      std::fprintf(stderr, "switchyard worker: seccomp filter refused (%s); jobs could create processes\n",
                   problem.c_str());
    }
  }

  const Catalogue catalogue = make_builtin_catalogue(options.builtin);
  const int fd = options.fd;
  const FrameJobId no_job{};
  nlohmann::json hello = {{"pid", ::getpid()}, {"cpu_total_ms", process_cpu_ms()}};
  if (!write_all(fd, encode_frame(FrameType::hello, no_job, hello.dump()))) return 1;

  rlimit cpu_limit{};
  const bool limit_cpu = options.cpu_seconds > 0 && ::getrlimit(RLIMIT_CPU, &cpu_limit) == 0;
  FrameInput input(fd);
  for (;;) {
    const auto header_bytes = input.take(kFrameHeaderSize);
    if (!header_bytes) return 0;  // server closed
    const auto decoded = decode_frame_header(std::span<const std::uint8_t, kFrameHeaderSize>(
        reinterpret_cast<const std::uint8_t*>(header_bytes->data()), kFrameHeaderSize));
    if (!decoded.header || decoded.header->type != FrameType::run) {
      std::fprintf(stderr, "switchyard worker: bad frame from server\n");
      return 2;
    }
    const auto payload = input.take(decoded.header->length);
    if (!payload) return 0;

    nlohmann::json request = nlohmann::json::parse(*payload, nullptr, false);
    if (!request.is_object() || !request.contains("type") || !request["type"].is_string() ||
        !request.contains("input")) {
      std::fprintf(stderr, "switchyard worker: malformed run payload\n");
      return 2;
    }
    const double cpu_before = process_cpu_ms();
    if (limit_cpu) arm_cpu_limit(options.cpu_seconds, cpu_before, cpu_limit.rlim_max);
    Outcome outcome = run_job(catalogue, request);
    const double cpu_after = process_cpu_ms();

    nlohmann::json reply = {{"ok", outcome.ok}, {"cpu_ms", cpu_after - cpu_before}, {"cpu_total_ms", cpu_after}};
    if (outcome.ok) {
      reply["result"] = std::move(outcome.result);
    } else {
      reply["error"] = {{"code", outcome.error_code}, {"message", outcome.error_message}};
    }
    std::string text = reply.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    if (text.size() > kMaxFramePayload) {
      text = nlohmann::json{{"ok", false}, {"cpu_ms", cpu_after - cpu_before}, {"cpu_total_ms", cpu_after},
                            {"error", {{"code", "handler_error"}, {"message", "result larger than the frame limit"}}}}
                 .dump();
    }
    if (!write_all(fd, encode_frame(FrameType::result, decoded.header->job_id, text))) return 0;
  }
}

}  // namespace switchyard::workers
