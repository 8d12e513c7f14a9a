#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <thread>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include "workers/execution.hpp"
#include "workers/job_queue.hpp"

namespace switchyard::workers {

/// Settings of the thread model.
struct ThreadOptions {
  std::size_t concurrency = 10000;  ///< jobs running at once (waiting coroutines cost no thread)
  std::size_t blocking_slots = 1;   ///< blocking (cpu-kind) jobs at once, each on a thread of its own
};

/// The io_context the calling thread drives, as marked by an `IoThreadMark`; nullptr on any other
/// thread (the process pool's, a store's, a blocking job's).
boost::asio::io_context* current_io_context() noexcept;

/// Marks the calling thread, for the mark's lifetime, as the one driving `context`: async runs
/// submitted from it start on that context, next to the request that submitted them.
class IoThreadMark {
 public:
  explicit IoThreadMark(boost::asio::io_context& context) noexcept;
  ~IoThreadMark();
  IoThreadMark(const IoThreadMark&) = delete;
  IoThreadMark& operator=(const IoThreadMark&) = delete;

 private:
  boost::asio::io_context* previous_;
};

/// A snapshot for /v1/stats and metrics.
struct ThreadStats {
  std::size_t running = 0;
  std::size_t blocking = 0;  ///< running blocking jobs, each on a blocking thread of its own
  std::size_t queued = 0;
};

/// The thread model. An async run is a coroutine on the io_context of the io thread that submits
/// it (`current_io_context()`; when the submitter is no io thread, see spread_over()).
/// A blocking run (a cpu type sent to this model) runs on one of `blocking_slots` threads of the
/// executor's own, so it never holds up an io thread and the connections it serves. Each run gets
/// its own strand; its deadline timer lives on an io thread's context, so it fires however busy
/// the blocking threads are; timeout and DELETE reach a run as Asio cancellation (async types)
/// and as the stop flag (blocking types, which poll it). A thread cannot be killed, so a stop is
/// a request.
/// Thread-safety: all public members are thread-safe, except spread_over() and halt() (see there).
class ThreadExecutor {
 public:
  ThreadExecutor(boost::asio::io_context& context, ThreadOptions options, ExecutionObserver& observer);
  ~ThreadExecutor();
  ThreadExecutor(const ThreadExecutor&) = delete;
  ThreadExecutor& operator=(const ThreadExecutor&) = delete;

  /// The io contexts that runs submitted from no io thread (a queued run started by another's
  /// end on a blocking thread, the shared store's claims) start on, in turn. Call before the
  /// first submit(); without it they start on the context given at construction.
  void spread_over(std::vector<boost::asio::io_context*> contexts);

  /// Starts no more runs and joins the blocking threads once the blocking runs under way have
  /// ended (a thread cannot be killed: one that never polls its stop flag holds this up) and been
  /// reported. Idempotent. Call it once nothing submits any more (the io threads have stopped)
  /// and before the observer goes away.
  void halt();

  /// Starts the run now if there is capacity, else queues it (priority, then FIFO).
  void submit(std::shared_ptr<Execution> run);

  /// Takes back a queued run; nullptr if it is not queued.
  std::shared_ptr<Execution> remove_queued(const std::string& id);

  /// Takes back every queued run and stops starting new ones.
  std::vector<std::shared_ptr<Execution>> drain_queue();

  /// Asks every running job to stop with `reason`.
  void stop_running(StopReason reason);

  [[nodiscard]] ThreadStats stats() const;

 private:
  void reserve(const std::shared_ptr<Execution>& run);  // mutex held by caller: count it as running
  void launch(std::shared_ptr<Execution> run);          // mutex not held: start its coroutine
  void finished(Execution& run, RunReport report, bool blocking);
  [[nodiscard]] bool can_start(const Execution& run) const;  // mutex held by caller
  /// Keeps queued_blocking_ in step with what leaves the queue (mutex held by caller).
  std::optional<std::shared_ptr<Execution>> unqueued(std::optional<std::shared_ptr<Execution>> run);

  boost::asio::io_context& context_;
  ThreadOptions options_;
  ExecutionObserver& observer_;
  mutable std::mutex mutex_;
  JobQueue<std::shared_ptr<Execution>> queue_;
  std::unordered_map<const Execution*, std::shared_ptr<Execution>> running_;
  std::size_t blocking_running_ = 0;
  std::size_t queued_blocking_ = 0;  // blocking runs among the queued
  bool closed_ = false;
  std::vector<boost::asio::io_context*> spread_;
  std::atomic<std::size_t> next_spread_{0};

  boost::asio::io_context blocking_context_;
  std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> blocking_work_;
  std::vector<std::thread> blocking_threads_;
  std::once_flag halted_;
};

}  // namespace switchyard::workers
