#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <boost/asio/io_context.hpp>

#include "workers/execution.hpp"
#include "workers/job_queue.hpp"

namespace switchyard::workers {

/// Settings of the thread model.
struct ThreadOptions {
  std::size_t concurrency = 10000;  ///< jobs running at once (waiting coroutines cost no thread)
  std::size_t blocking_slots = 1;   ///< blocking (cpu-kind) jobs at once: keeps threads free for HTTP
};

/// A snapshot for /v1/stats and metrics.
struct ThreadStats {
  std::size_t running = 0;
  std::size_t blocking = 0;  ///< running blocking jobs, each holding an io thread
  std::size_t queued = 0;
};

/// The thread model: runs jobs as coroutines on the shared io_context. Each run gets its own
/// strand; its timeout and DELETE reach it as Asio cancellation (async types) and as the stop
/// flag (blocking types, which poll it). A thread cannot be killed, so a stop is a request.
/// Thread-safety: all public members are thread-safe.
class ThreadExecutor {
 public:
  ThreadExecutor(boost::asio::io_context& context, ThreadOptions options, ExecutionObserver& observer);

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
};

}  // namespace switchyard::workers
