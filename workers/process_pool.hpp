#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>

#include "workers/child_reaper.hpp"
#include "workers/execution.hpp"
#include "workers/job_queue.hpp"

namespace switchyard::workers {

/// Settings of the process pool.
struct PoolOptions {
  int workers = 1;                              ///< worker processes kept alive
  std::string executable = "/proc/self/exe";    ///< the binary started in worker mode
  std::vector<std::string> worker_args;         ///< argv after the executable (e.g. "worker", ...)
  std::chrono::milliseconds boot_timeout{10000};  ///< time for a new worker to say hello
  std::chrono::milliseconds exit_timeout{2000};   ///< after SIGTERM or EOF, before SIGKILL
  int boot_failures_before_unready = 3;         ///< consecutive failed boots that mark the pool unready
  std::size_t max_jobs = 0;                     ///< recycle a worker after this many jobs; 0 = never
  std::size_t max_jobs_jitter = 0;              ///< plus a random 0..jitter per worker
  std::size_t max_rss_bytes = 0;                ///< recycle a worker whose peak RSS passed this; 0 = never
};

/// A snapshot of the pool for /v1/stats and metrics.
struct PoolStats {
  std::size_t workers = 0;  ///< worker processes up and ready
  std::size_t busy = 0;     ///< workers running a job
  std::size_t queued = 0;   ///< jobs waiting for a worker
  bool ready = false;       ///< every worker booted once and booting is not failing
  bool boot_failing = false;  ///< no worker is up and workers keep failing to boot
};

/// The process model: a pool of worker processes, each running one job at a time.
/// Each worker is supervised by one "slot" coroutine on its own strand: spawn (posix_spawn of
/// this binary in worker mode, so no code runs in a fork of the threaded server), hello, then
/// run jobs framed over a socketpair. A worker that times out, is cancelled, crashes or breaks
/// the protocol is killed (its whole process group) and replaced, never reused.
/// The slots run on the pool's own io_context and thread, started by start(): a worker's reply
/// and its next job are handled by one thread that sleeps in epoll between jobs, instead of
/// waking the HTTP threads in turn (on a 2-core machine burning 1 ms jobs in batches, that took
/// the server's CPU per job from about 120 to 90 µs). The child reaper stays on the io_context
/// given to the constructor.
/// Thread-safety: all public members are thread-safe.
class ProcessPool {
 public:
  ProcessPool(boost::asio::io_context& context, PoolOptions options, ExecutionObserver& observer);
  ~ProcessPool();
  ProcessPool(const ProcessPool&) = delete;
  ProcessPool& operator=(const ProcessPool&) = delete;

  /// Starts the pool's thread and its slots (and so the worker processes).
  void start();

  /// Stops the pool's thread at once, wherever its slots are (after a drain they have ended
  /// and it has stopped by itself). The observer is never called after this returns: its
  /// owner calls this before it destroys what the observer uses. Idempotent.
  void halt();

  /// Queues a run; an idle worker takes it at once. Runs submitted after close() are
  /// finished at once as stopped by shutdown.
  void submit(std::shared_ptr<Execution> run);

  /// Takes back a queued run (cancel); nullptr if it is not queued (running, or unknown).
  std::shared_ptr<Execution> remove_queued(const std::string& id);

  /// Takes back every queued run (shutdown).
  std::vector<std::shared_ptr<Execution>> drain_queue();

  /// Stops taking jobs: idle workers are told to exit; running jobs go on.
  void close();

  /// Asks every running job to stop (SIGTERM to its worker); workers still alive after
  /// exit_timeout get SIGKILL.
  void terminate();

  /// True once every slot has ended and its worker is reaped.
  [[nodiscard]] bool stopped() const noexcept;

  /// Number of jobs running now.
  [[nodiscard]] std::size_t running() const noexcept;

  /// Counters for stats and metrics.
  [[nodiscard]] PoolStats stats() const;

  /// No worker is up and workers keep failing to boot (lock-free, for every submission).
  [[nodiscard]] bool boot_failing() const noexcept;

 private:
  class Slot;
  friend class Slot;

  /// Awaits the next run for `slot`; nullptr once the pool is closed.
  boost::asio::awaitable<std::shared_ptr<Execution>> next_run(Slot& slot);
  /// Wakes `slot` with no run if it waits idle (its worker died): it then replaces the worker.
  void wake_if_idle(Slot& slot);
  /// Hands a run the slot could not start back to the pool (its worker died while idle).
  void give_back(Slot& slot, std::shared_ptr<Execution> run);
  /// Marks the slot's run done (no longer running) without reporting it.
  void release(Slot& slot, Execution& run);
  /// Marks the slot's run done and reports it.
  void finish(Slot& slot, Execution& run, RunReport report);
  [[nodiscard]] bool is_closed() const;
  void worker_up();

  PoolOptions options_;
  ExecutionObserver& observer_;
  ChildReaper reaper_;                        // on the constructor's io_context
  boost::asio::io_context slots_context_{1};  // the slots' sockets, timers and coroutines
  std::thread thread_;                        // runs slots_context_ until the last slot ends

  mutable std::mutex mutex_;
  JobQueue<std::shared_ptr<Execution>> queue_;
  std::vector<Slot*> idle_;
  std::vector<std::unique_ptr<Slot>> slots_;
  bool closed_ = false;
  bool all_booted_once_ = false;

  std::atomic<std::size_t> workers_up_{0};
  std::atomic<std::size_t> busy_{0};
  std::atomic<std::size_t> slots_running_{0};
  std::atomic<int> failing_slots_{0};
  std::atomic<bool> recycling_{false};  // a slot is replacing a worker on purpose (one at a time)
};

}  // namespace switchyard::workers
