#include "workers/process_pool.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <random>
#include <variant>

#include <fcntl.h>
#include <pthread.h>
#include <spawn.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/experimental/concurrent_channel.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <spdlog/spdlog.h>

extern char** environ;

namespace switchyard::workers {

namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;
using Clock = std::chrono::steady_clock;

std::string_view to_string(RestartReason reason) noexcept {
  switch (reason) {
    case RestartReason::crash: return "crash";
    case RestartReason::timeout: return "timeout";
    case RestartReason::cancel: return "cancel";
    case RestartReason::recycle: return "recycle";
    case RestartReason::memory: return "memory";
  }
  return "crash";
}

namespace {

/// What one request/response exchange with a worker produced.
struct Exchange {
  enum class Kind { reply, io_error, protocol_error } kind = Kind::io_error;
  Outcome outcome;
  double cpu_ms = 0;
  double cpu_total_ms = 0;
  std::string problem;  // for io_error / protocol_error
};

/// A frame read from a worker, or why none could be read.
struct ReadFrame {
  bool ok = false;
  bool protocol_error = false;
  FrameHeader header;
  std::string payload;
  std::string problem;
};

/// Reads one frame. A worker sends nothing until asked, then exactly one frame: so the reader
/// waits until the socket is readable and then takes whatever has arrived in one call, usually
/// the whole frame. (A read attempted at once would find nothing, and reading the header and
/// the payload separately costs another system call.) The socket must be in non-blocking mode.
asio::awaitable<ReadFrame> read_frame(asio::local::stream_protocol::socket& socket) {
  constexpr std::size_t kFirstRead = 4096;
  constexpr std::size_t kSlack = 64;
  ReadFrame frame;
  std::string bytes(kFirstRead, '\0');
  std::size_t have = 0;
  std::size_t need = kFrameHeaderSize;
  bool header_read = false;
  bool wait = true;      // the answer takes a while: no point reading before the socket is readable
  bool filled = false;   // the last read filled its buffer: more may be waiting in the socket
  while (have < need) {  // need grows from the header to the whole frame once the header is read
    if (wait) {
      auto [wait_error] = co_await socket.async_wait(asio::socket_base::wait_read, asio::as_tuple(asio::use_awaitable));
      if (wait_error) {
        frame.problem = wait_error.message();
        co_return frame;
      }
    }
    boost::system::error_code read_error;
    const std::size_t room = bytes.size() - have;
    const std::size_t got = socket.read_some(asio::buffer(bytes.data() + have, room), read_error);
    have += got;
    filled = got == room;
    wait = read_error == asio::error::would_block;  // after a read, more may have arrived already
    if (wait) continue;
    if (read_error) {
      frame.problem = read_error.message();  // "End of file" when the worker is gone
      co_return frame;
    }
    if (!header_read && have >= kFrameHeaderSize) {
      const auto decoded = decode_frame_header(std::span<const std::uint8_t, kFrameHeaderSize>(
          reinterpret_cast<const std::uint8_t*>(bytes.data()), kFrameHeaderSize));
      if (!decoded.header) {
        frame.protocol_error = true;
        frame.problem = std::string("malformed frame header: ") + std::string(to_string(decoded.error));
        co_return frame;
      }
      frame.header = *decoded.header;
      header_read = true;
      need = kFrameHeaderSize + frame.header.length;
    }
    // Room for a few bytes past the frame too, so that bytes a worker sent after a large frame
    // are caught here, on its own job, as they are after a small one, not on its next job.
    if (header_read && bytes.size() < need + kSlack) bytes.resize(need + kSlack);
  }
  if (have == need && filled) {
    // The read that ended the frame filled its buffer to the byte (a frame of exactly the first
    // buffer's 4096 bytes): what followed, if anything, is still in the socket. The same flag
    // tells below whether the count of bytes after the frame is exact or a lower bound.
    std::array<char, kSlack> more{};
    boost::system::error_code more_error;
    const std::size_t extra = socket.read_some(asio::buffer(more), more_error);
    if (!more_error) {  // would_block: nothing followed; end of file: the next job sees it
      have += extra;
      filled = extra == more.size();
    }
  }
  if (have > need) {
    frame.protocol_error = true;
    // After a read that filled its buffer, more may be in the socket: the count is a lower bound.
    frame.problem = std::to_string(have - need) + (filled ? " or more" : "") + " bytes followed the frame unasked";
    co_return frame;
  }
  bytes.resize(need);
  bytes.erase(0, kFrameHeaderSize);  // in place: the buffer becomes the payload, no second allocation
  frame.payload = std::move(bytes);
  frame.ok = true;
  co_return frame;
}

/// Peak resident set size (VmHWM) of a live process, from /proc/<pid>/status; 0 if unreadable.
/// The peak, as Celery's max_memory_per_child: a worker that once grew that large keeps its
/// heap fragmented even after the job freed its memory.
std::size_t peak_resident_bytes(pid_t pid) {
  std::FILE* file = std::fopen(("/proc/" + std::to_string(pid) + "/status").c_str(), "r");
  if (file == nullptr) return 0;
  std::size_t kib = 0;
  char line[256];
  while (std::fgets(line, sizeof line, file) != nullptr) {
    unsigned long value = 0;
    if (std::sscanf(line, "VmHWM: %lu kB", &value) == 1) {
      kib = value;
      break;
    }
  }
  std::fclose(file);
  return kib << 10;
}

Exchange interpret_reply(const ReadFrame& frame, const FrameJobId& expected) {
  ResultReply reply = decode_result(frame.header, frame.payload, expected);
  Exchange result;
  result.kind = reply.valid ? Exchange::Kind::reply : Exchange::Kind::protocol_error;
  result.problem = std::move(reply.problem);
  result.outcome = std::move(reply.outcome);
  result.cpu_ms = reply.cpu_ms;
  result.cpu_total_ms = reply.cpu_total_ms;
  return result;
}

}  // namespace

/// Supervises one worker process at a time: boots it, feeds it jobs, replaces it.
class ProcessPool::Slot {
 public:
  Slot(ProcessPool& pool, int index)
      : pool_(pool),
        index_(index),
        strand_(asio::make_strand(pool.slots_context_)),
        socket_(strand_),
        deadline_(strand_),
        runs_(strand_, 1),
        exits_(strand_, 1) {}

  using RunChannel = asio::experimental::concurrent_channel<void(boost::system::error_code, std::shared_ptr<Execution>)>;
  using ExitChannel = asio::experimental::concurrent_channel<void(boost::system::error_code, ExitInfo)>;

  asio::strand<asio::io_context::executor_type>& strand() { return strand_; }
  RunChannel& runs() { return runs_; }

  /// Reports the job the worker finished before the current one, if any (see deferred_).
  void report_deferred() {
    if (!deferred_) return;
    Deferred done = std::move(*deferred_);
    deferred_.reset();
    pool_.observer_.on_finished(*done.run, std::move(done.report));
  }

  /// The running job, if any (for terminate()); guarded by the pool mutex.
  std::shared_ptr<Execution> current;

  asio::awaitable<void> run() {
    int failures = 0;
    while (!pool_.is_closed()) {
      const bool up = co_await boot();
      if (!up) {
        ++failures;
        if (failures == pool_.options_.boot_failures_before_unready) {
          pool_.failing_slots_.fetch_add(1);
          spdlog::error("worker slot {}: {} boots failed in a row: the process pool is not ready (/readyz 503){}",
                        index_, failures,
                        pool_.workers_up_.load() == 0 ? "; process-model jobs are refused (503) until a worker boots" : "");
        }
        const auto backoff = std::chrono::milliseconds(std::min(100 * (1 << std::min(failures - 1, 7)), 10000));
        spdlog::warn("worker slot {}: boot failed ({} in a row), retrying in {} ms", index_, failures, backoff.count());
        co_await pause(backoff);
        continue;
      }
      if (failures >= pool_.options_.boot_failures_before_unready) pool_.failing_slots_.fetch_sub(1);
      failures = 0;
      if (recycling_) {
        recycling_ = false;
        pool_.recycling_.store(false);  // the replacement is up: another worker may recycle now
      }
      jobs_done_ = 0;
      job_limit_ = pool_.options_.max_jobs == 0
                       ? 0
                       : pool_.options_.max_jobs +
                             (pool_.options_.max_jobs_jitter == 0 ? 0 : random_() % (pool_.options_.max_jobs_jitter + 1));
      pool_.worker_up();
      co_await serve();
      pool_.workers_up_.fetch_sub(1);
      co_await retire();
    }
    if (failures >= pool_.options_.boot_failures_before_unready) pool_.failing_slots_.fetch_sub(1);
  }

 private:
  /// Sleeps up to `duration`, waking early when the pool closes.
  asio::awaitable<void> pause(std::chrono::milliseconds duration) {
    asio::steady_timer timer(strand_);
    const auto until = Clock::now() + duration;
    while (!pool_.is_closed() && Clock::now() < until) {
      timer.expires_after(std::min<Clock::duration>(std::chrono::milliseconds(50), until - Clock::now()));
      co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
    }
  }

  /// Starts a worker process and waits for its hello frame.
  asio::awaitable<bool> boot() {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
      spdlog::error("worker slot {}: socketpair failed: {}", index_, std::strerror(errno));
      co_return false;
    }
    // The child's end goes to fd 3; keep the source above 3 so dup2 really copies (and so
    // clears close-on-exec) instead of being a no-op.
    const int child_fd = ::fcntl(fds[1], F_DUPFD_CLOEXEC, 10);
    ::close(fds[1]);
    pid_ = spawn(child_fd);
    ::close(child_fd);
    if (pid_ <= 0) {
      ::close(fds[0]);
      co_return false;
    }
    pool_.reaper_.watch(pid_, [this](const ExitInfo& info) {
      exits_.try_send(boost::system::error_code{}, info);
      pool_.wake_if_idle(*this);  // an idle worker that died is replaced now, not at the next job
    });
    socket_ = asio::local::stream_protocol::socket(strand_);
    socket_.assign(asio::local::stream_protocol(), fds[0]);
    socket_.non_blocking(true);  // read_frame reads only once the socket is readable

    asio::steady_timer deadline(strand_, pool_.options_.boot_timeout);
    auto first = co_await (read_frame(socket_) || deadline.async_wait(asio::use_awaitable));
    bool ok = false;
    if (first.index() == 0) {
      const auto& frame = std::get<0>(first);
      if (frame.ok && frame.header.type == FrameType::hello) {
        auto hello = nlohmann::json::parse(frame.payload, nullptr, false);
        if (hello.is_object()) {
          cpu_total_ms_ = hello.value("cpu_total_ms", 0.0);
          ok = true;
        }
      }
      if (!ok) spdlog::error("worker slot {}: pid {} did not say hello: {}", index_, pid_, frame.problem);
    } else {
      spdlog::error("worker slot {}: pid {} did not boot within {} ms", index_, pid_, pool_.options_.boot_timeout.count());
    }
    if (!ok) {
      pool_.reaper_.signal_group(pid_, SIGKILL);
      const auto info = co_await await_exit();
      spdlog::error("worker slot {}: pid {} ended with {}", index_, pid_, info.describe());
    }
    co_return ok;
  }

  pid_t spawn(int child_fd) {
    std::vector<std::string> args;
    args.push_back(pool_.options_.executable);
    args.insert(args.end(), pool_.options_.worker_args.begin(), pool_.options_.worker_args.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);

    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&actions);
    posix_spawnattr_init(&attr);
    posix_spawn_file_actions_adddup2(&actions, child_fd, 3);
    // Nothing else crosses over: not the listening socket, not client connections, not other
    // workers' sockets (Asio does not open every descriptor close-on-exec).
    posix_spawn_file_actions_addclosefrom_np(&actions, 4);
    sigset_t empty;
    sigemptyset(&empty);
    sigset_t defaults;
    sigemptyset(&defaults);
    for (int sig : {SIGCHLD, SIGTERM, SIGINT, SIGPIPE, SIGHUP, SIGXCPU, SIGXFSZ}) sigaddset(&defaults, sig);
    posix_spawnattr_setsigmask(&attr, &empty);
    posix_spawnattr_setsigdefault(&attr, &defaults);
    posix_spawnattr_setpgroup(&attr, 0);  // its own process group, killed as one
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    pid_t pid = -1;
    const int rc = ::posix_spawn(&pid, argv[0], &actions, &attr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) {
      spdlog::error("worker slot {}: cannot start {}: {}", index_, argv[0], std::strerror(rc));
      return -1;
    }
    return pid;
  }

  /// Waits for the current pid's exit; SIGKILLs it if it takes longer than exit_timeout.
  asio::awaitable<ExitInfo> await_exit() {
    asio::steady_timer deadline(strand_, pool_.options_.exit_timeout);
    for (int round = 0;; ++round) {
      auto exited = co_await (exits_.async_receive(asio::use_awaitable) || deadline.async_wait(asio::use_awaitable));
      if (exited.index() == 0) co_return std::get<0>(exited);
      spdlog::warn("worker slot {}: pid {} still alive after {} ms, sending SIGKILL", index_, pid_,
                   pool_.options_.exit_timeout.count());
      pool_.reaper_.signal_group(pid_, SIGKILL);
      pool_.reaper_.reap();
      deadline.expires_after(round < 5 ? pool_.options_.exit_timeout : std::chrono::hours(24));
    }
  }

  /// Feeds jobs to the live worker until it must be replaced or the pool closes.
  asio::awaitable<void> serve() {
    for (;;) {
      auto run = co_await pool_.next_run(*this);
      if (!run) {
        report_deferred();
        if (died_while_idle()) {  // woken by its exit (kill -9, OOM killer) while it waited
          exited_ = true;
          pool_.observer_.on_worker_restart(RestartReason::crash);
        }
        co_return;  // else closed: retire() closes the socket, the worker reads EOF and exits
      }
      if (run->stop_flag().stop_requested()) {  // cancelled between the queue and here
        report_deferred();
        pool_.finish(*this, *run, RunReport{Outcome::failure("cancelled", "stopped before it started"),
                                            run->stop_flag().reason(), 0, std::nullopt, false});
        continue;
      }
      if (died_while_idle()) {
        // Killed from outside (OOM killer, kill -9) while it waited: the job is not its to fail.
        report_deferred();
        pool_.give_back(*this, std::move(run));
        exited_ = true;
        pool_.observer_.on_worker_restart(RestartReason::crash);
        co_return;
      }
      if (!co_await run_one(run)) co_return;
    }
  }

  /// True if the idle worker has already exited; its exit is then consumed.
  bool died_while_idle() {
    return exits_.try_receive([this](boost::system::error_code, ExitInfo info) {
      spdlog::warn("worker slot {}: idle pid {} died with {}", index_, pid_, info.describe());
    });
  }

  /// Runs one job; returns false when the worker is gone (killed or crashed).
  asio::awaitable<bool> run_one(std::shared_ptr<Execution> run) {
    const pid_t pid = pid_;
    auto& reaper = pool_.reaper_;
    std::string frame;
    try {
      frame = encode_frame(FrameType::run, run->id(),
                           nlohmann::json{{"type", run->type().name}, {"input", run->input()}}.dump());
    } catch (const std::exception& e) {
      report_deferred();
      pool_.finish(*this, *run, RunReport{Outcome::failure("handler_error", std::string("cannot send the job to a worker: ") + e.what()),
                                          StopReason::none, 0, std::nullopt, false});
      co_return true;
    }
    run->arm_stop([&reaper, pid](StopReason reason) {
      reaper.signal_group(pid, reason == StopReason::shutdown ? SIGTERM : SIGKILL);
    });

    // The deadline aborts the exchange from a completion handler rather than racing it with
    // `||`: that operator spawns two coroutines per job and its losing timer throws
    // operation_aborted, an exception per job on the hottest path of the process model.
    const std::uint64_t generation = ++deadline_generation_;
    timed_out_ = false;
    deadline_.expires_after(run->timeout());
    deadline_.async_wait([this, generation](boost::system::error_code error) {
      // Both run on the strand; a handler queued just before the reply came finds a newer
      // generation and leaves the next job alone.
      if (error || generation != deadline_generation_) return;
      timed_out_ = true;
      boost::system::error_code ignored;
      socket_.cancel(ignored);  // the exchange returns an io_error; the worker is killed below
    });
    Exchange outcome = co_await exchange(std::move(frame), *run, pid);
    ++deadline_generation_;
    deadline_.cancel();
    run->disarm_stop();

    if (!timed_out_ && outcome.kind == Exchange::Kind::reply) {
      auto& reply = outcome;
      cpu_total_ms_ = reply.cpu_total_ms;
      const StopReason stopped = run->stop_flag().reason();
      const bool out_of_memory = !reply.outcome.ok && reply.outcome.error_code == "memory_limit";
      RunReport report{std::move(reply.outcome), stopped, reply.cpu_ms, pid, true};
      if (stopped == StopReason::none) {
        ++jobs_done_;
        const std::string why = out_of_memory ? std::string() : recycle_reason(pid);
        // One worker recycled at a time: if another is being replaced, this one goes after its
        // next job.
        const bool recycle = !why.empty() && !pool_.recycling_.exchange(true);
        if (!out_of_memory && !recycle) {
          // The worker goes on: its next job is written before this one is reported.
          pool_.release(*this, *run);
          deferred_ = Deferred{std::move(run), std::move(report)};
          co_return true;
        }
        pool_.finish(*this, *run, std::move(report));
        if (out_of_memory) {
          // Its heap may be fragmented or half-torn: a fresh process is cheaper than doubt.
          spdlog::info("worker slot {}: pid {} hit its memory limit, replacing it", index_, pid);
          pool_.observer_.on_worker_restart(RestartReason::memory);
          co_return false;  // retire() closes the socket; the worker exits on EOF
        }
        recycling_ = true;
        spdlog::info("worker slot {}: pid {} recycled {}", index_, pid, why);
        pool_.observer_.on_worker_restart(RestartReason::recycle);
        co_return false;
      }
      // The answer won the race, but the stop may already have signalled the worker: never
      // reuse a worker that was told to die.
      pool_.finish(*this, *run, std::move(report));
      reaper.signal_group(pid, SIGKILL);
      const ExitInfo info = co_await await_exit();
      exited_ = true;
      spdlog::info("worker slot {}: pid {} replaced after a late stop ({})", index_, pid, info.describe());
      if (stopped != StopReason::shutdown) {
        pool_.observer_.on_worker_restart(stopped == StopReason::cancel ? RestartReason::cancel : RestartReason::timeout);
      }
      co_return false;
    }

    RestartReason restart = RestartReason::crash;
    RunReport report;
    report.worker_pid = pid;
    if (timed_out_) {
      run->request_stop(StopReason::timeout);  // loses to a cancel that came first
      reaper.signal_group(pid, SIGKILL);
    } else if (outcome.kind == Exchange::Kind::protocol_error) {
      spdlog::error("worker slot {}: pid {} broke the protocol ({}), killing it", index_, pid, outcome.problem);
      reaper.signal_group(pid, SIGKILL);
      report.outcome = Outcome::failure("worker_protocol_error", outcome.problem);
    }
    const ExitInfo info = co_await await_exit();
    exited_ = true;
    report.cpu_ms = std::max(0.0, info.cpu_ms - cpu_total_ms_);
    report.stopped = run->stop_flag().reason();
    switch (report.stopped) {
      case StopReason::timeout:
        restart = RestartReason::timeout;
        report.outcome = Outcome::failure("timeout", "the job ran longer than its timeout_ms; worker process " +
                                                         std::to_string(pid) + " was killed");
        break;
      case StopReason::cancel:
        restart = RestartReason::cancel;
        report.outcome = Outcome::failure("cancelled", "cancelled while running; worker process " +
                                                           std::to_string(pid) + " was killed (SIGKILL)");
        break;
      case StopReason::shutdown:
        report.outcome = Outcome::failure("shutdown", "the server shut down while the job ran; worker process " +
                                                          std::to_string(pid) + " was stopped");
        break;
      case StopReason::none:
        if (report.outcome.error_code.empty() && info.signal() == SIGXCPU) {
          report.outcome = Outcome::failure("cpu_limit", "the job used up the CPU time a job may have; worker process " +
                                                             std::to_string(pid) + " was ended by SIGXCPU");
        } else if (report.outcome.error_code.empty()) {
          report.outcome = Outcome::failure("worker_crashed", "worker process " + std::to_string(pid) +
                                                                  " died with " + info.describe());
        }
        break;
    }
    spdlog::info("worker slot {}: pid {} replaced after {} (job {})", index_, pid, info.describe(), run->id_text());
    const bool shutting_down = report.stopped == StopReason::shutdown;
    pool_.finish(*this, *run, std::move(report));
    if (!shutting_down) pool_.observer_.on_worker_restart(restart);
    co_return false;
  }

  /// Why the worker should be replaced now that it finished a job ("" if it should not).
  std::string recycle_reason(pid_t pid) const {
    if (job_limit_ > 0 && jobs_done_ >= job_limit_) return "after " + std::to_string(jobs_done_) + " jobs";
    if (pool_.options_.max_rss_bytes > 0) {
      const std::size_t rss = peak_resident_bytes(pid);
      if (rss > pool_.options_.max_rss_bytes) {
        return "with a peak of " + std::to_string(rss >> 20) + " MiB resident (limit " +
               std::to_string(pool_.options_.max_rss_bytes >> 20) + " MiB)";
      }
    }
    return {};
  }

  /// Writes the run frame, reports the job before it and this one's start, and reads the
  /// worker's answer. Throws only what the observer throws.
  asio::awaitable<Exchange> exchange(std::string frame, Execution& run, pid_t pid) {
    // A frame this large may have to wait for the worker to read it (the socket's buffer is
    // smaller): the job before it is not kept waiting too.
    constexpr std::size_t kReportFirst = 64 * 1024;
    if (frame.size() > kReportFirst) report_deferred();
    Exchange result;
    auto [write_error, n] = co_await asio::async_write(socket_, asio::buffer(frame), asio::as_tuple(asio::use_awaitable));
    // The worker has its job: the bookkeeping of the previous job's end and of this start runs
    // while it works, in that order (a listing never shows both running on one worker).
    report_deferred();
    pool_.observer_.on_started(run, pid);
    if (write_error) {
      result.problem = write_error.message();
      co_return result;
    }
    const ReadFrame reply = co_await read_frame(socket_);
    if (!reply.ok) {
      result.kind = reply.protocol_error ? Exchange::Kind::protocol_error : Exchange::Kind::io_error;
      result.problem = reply.problem;
      co_return result;
    }
    co_return interpret_reply(reply, run.id());
  }

  /// Ends the current worker: close our end (it exits on EOF), wait, escalate if needed.
  asio::awaitable<void> retire() {
    boost::system::error_code ignored;
    socket_.close(ignored);
    if (!exited_) {
      const ExitInfo info = co_await await_exit();
      spdlog::debug("worker slot {}: pid {} exited with {}", index_, pid_, info.describe());
    }
    exited_ = false;
    pid_ = -1;
  }

  ProcessPool& pool_;
  int index_;
  asio::strand<asio::io_context::executor_type> strand_;
  asio::local::stream_protocol::socket socket_;
  asio::steady_timer deadline_;            // the running job's timeout
  std::uint64_t deadline_generation_ = 0;  // one per job: a late handler knows it is stale
  bool timed_out_ = false;
  RunChannel runs_;
  ExitChannel exits_;
  /// A job the worker finished and that is reported only once the worker has its next job, or
  /// before the slot waits or does anything else: the worker does not wait for the bookkeeping.
  struct Deferred {
    std::shared_ptr<Execution> run;
    RunReport report;
  };
  std::optional<Deferred> deferred_;
  pid_t pid_ = -1;
  bool exited_ = false;
  double cpu_total_ms_ = 0;
  std::size_t jobs_done_ = 0;   // by the current worker
  std::size_t job_limit_ = 0;   // the current worker's recycling point; 0 = never
  bool recycling_ = false;      // this slot holds the pool's recycling turn
  std::minstd_rand random_{std::random_device{}()};
};

ProcessPool::ProcessPool(asio::io_context& context, PoolOptions options, ExecutionObserver& observer)
    : options_(std::move(options)), observer_(observer), reaper_(context) {}

ProcessPool::~ProcessPool() {
  halt();  // pending coroutines go with slots_context_, destroyed after slots_
}

void ProcessPool::halt() {
  slots_context_.stop();
  if (thread_.joinable()) thread_.join();
}

void ProcessPool::start() {
  reaper_.start();
  for (int i = 0; i < options_.workers; ++i) {
    slots_.push_back(std::make_unique<Slot>(*this, i));
    Slot& slot = *slots_.back();
    slots_running_.fetch_add(1);
    asio::co_spawn(slot.strand(), slot.run(), [this](std::exception_ptr error) {
      if (error) {
        try {
          std::rethrow_exception(error);
        } catch (const std::exception& e) {
          spdlog::critical("worker slot ended by an exception: {}", e.what());
        }
      }
      if (slots_running_.fetch_sub(1) == 1) reaper_.stop();
    });
  }
  // The slots are the thread's only work: run() returns once the last of them has ended.
  thread_ = std::thread([this] {
    ::pthread_setname_np(::pthread_self(), "switchyard-pool");
    slots_context_.run();
  });
}

bool ProcessPool::is_closed() const {
  std::lock_guard lock(mutex_);
  return closed_;
}

void ProcessPool::worker_up() {
  const auto up = workers_up_.fetch_add(1) + 1;
  std::lock_guard lock(mutex_);
  if (up == static_cast<std::size_t>(options_.workers)) all_booted_once_ = true;
}

void ProcessPool::submit(std::shared_ptr<Execution> run) {
  std::unique_lock lock(mutex_);
  if (closed_) {
    lock.unlock();
    refuse_at_shutdown(observer_, *run);
    return;
  }
  if (!idle_.empty()) {
    Slot* slot = idle_.back();
    idle_.pop_back();
    slot->current = run;
    busy_.fetch_add(1);
    lock.unlock();  // the slot may resume at once; it takes this mutex itself
    slot->runs().try_send(boost::system::error_code{}, std::move(run));
    return;
  }
  const std::string id = run->id_text();
  const int priority = run->priority();
  queue_.push(id, priority, std::move(run));
}

asio::awaitable<std::shared_ptr<Execution>> ProcessPool::next_run(Slot& slot) {
  {
    std::lock_guard lock(mutex_);
    if (closed_) co_return nullptr;
    if (auto run = queue_.pop()) {
      slot.current = *run;
      busy_.fetch_add(1);
      co_return std::move(*run);
    }
    idle_.push_back(&slot);
  }
  slot.report_deferred();  // no next job yet: the last one is reported before the slot waits
  auto [error, run] = co_await slot.runs().async_receive(asio::as_tuple(asio::use_awaitable));
  co_return error ? nullptr : run;
}

void ProcessPool::wake_if_idle(Slot& slot) {
  {
    std::lock_guard lock(mutex_);
    auto it = std::find(idle_.begin(), idle_.end(), &slot);
    if (it == idle_.end()) return;  // busy, booting or already woken: it sees the exit itself
    idle_.erase(it);
  }
  slot.runs().try_send(boost::system::error_code{}, nullptr);
}

void ProcessPool::give_back(Slot& slot, std::shared_ptr<Execution> run) {
  {
    std::lock_guard lock(mutex_);
    if (slot.current == run) {
      slot.current.reset();
      busy_.fetch_sub(1);
    }
  }
  submit(std::move(run));
}

void ProcessPool::release(Slot& slot, Execution& run) {
  std::lock_guard lock(mutex_);
  if (slot.current.get() == &run) {
    slot.current.reset();
    busy_.fetch_sub(1);
  }
}

void ProcessPool::finish(Slot& slot, Execution& run, RunReport report) {
  release(slot, run);
  observer_.on_finished(run, std::move(report));
}

std::shared_ptr<Execution> ProcessPool::remove_queued(const std::string& id) {
  std::lock_guard lock(mutex_);
  auto run = queue_.remove(id);
  return run ? std::move(*run) : nullptr;
}

std::vector<std::shared_ptr<Execution>> ProcessPool::drain_queue() {
  std::lock_guard lock(mutex_);
  return queue_.drain();
}

void ProcessPool::close() {
  std::vector<Slot*> idle;
  {
    std::lock_guard lock(mutex_);
    if (closed_) return;
    closed_ = true;
    idle.swap(idle_);
  }
  for (Slot* slot : idle) slot->runs().try_send(boost::system::error_code{}, nullptr);
}

void ProcessPool::terminate() {
  close();
  std::vector<std::shared_ptr<Execution>> running;
  {
    std::lock_guard lock(mutex_);
    for (auto& slot : slots_) {
      if (slot->current) running.push_back(slot->current);
    }
  }
  for (auto& run : running) run->request_stop(StopReason::shutdown);
  // Slots escalate to SIGKILL on their own when a worker outlives exit_timeout.
}

bool ProcessPool::stopped() const noexcept { return slots_running_.load() == 0; }

std::size_t ProcessPool::running() const noexcept { return busy_.load(); }

bool ProcessPool::boot_failing() const noexcept { return failing_slots_.load() > 0 && workers_up_.load() == 0; }

PoolStats ProcessPool::stats() const {
  PoolStats stats;
  stats.workers = workers_up_.load();
  stats.busy = busy_.load();
  std::lock_guard lock(mutex_);
  stats.queued = queue_.size();
  stats.ready = all_booted_once_ && failing_slots_.load() == 0 && !closed_;
  stats.boot_failing = boot_failing();
  return stats;
}

}  // namespace switchyard::workers
