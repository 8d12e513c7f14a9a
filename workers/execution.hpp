#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include <sys/types.h>

#include <nlohmann/json.hpp>

#include "workers/frame.hpp"
#include "workers/job_type.hpp"

namespace switchyard::workers {

/// One run of a job as the executors see it: what to run, its limits, and its stop request.
/// Shared (std::shared_ptr) between the dispatcher, which creates it, and the executor running it.
/// Thread-safety: the immutable fields are set before sharing; request_stop/arm_stop/disarm_stop
/// are thread-safe.
class Execution {
 public:
  /// Immutable description of the run.
  Execution(FrameJobId id, const JobType& type, nlohmann::json input, int priority,
            std::chrono::milliseconds timeout)
      : id_(id), id_text_(format_uuid(id)), type_(type), input_(std::move(input)), priority_(priority),
        timeout_(timeout) {}

  [[nodiscard]] const FrameJobId& id() const noexcept { return id_; }
  [[nodiscard]] const std::string& id_text() const noexcept { return id_text_; }
  [[nodiscard]] const JobType& type() const noexcept { return type_; }
  [[nodiscard]] const nlohmann::json& input() const noexcept { return input_; }
  [[nodiscard]] int priority() const noexcept { return priority_; }
  [[nodiscard]] std::chrono::milliseconds timeout() const noexcept { return timeout_; }
  [[nodiscard]] const StopFlag& stop_flag() const noexcept { return stop_; }

  /// Asks the run to stop. The first reason wins; the executor's hook (if armed) is called
  /// with the winning reason. Returns true if this call set the reason.
  bool request_stop(StopReason reason) {
    const bool won = stop_.request(reason);
    if (won) {
      std::lock_guard lock(mutex_);
      if (hook_) hook_(reason);
    }
    return won;
  }

  /// Installs the executor's way of stopping this run (kill a worker, emit a cancellation).
  /// If a stop was already requested, the hook is called at once.
  void arm_stop(std::function<void(StopReason)> hook) {
    std::lock_guard lock(mutex_);
    hook_ = std::move(hook);
    if (stop_.stop_requested()) hook_(stop_.reason());
  }

  /// Removes the hook; after this returns, the hook is not running and will not run.
  void disarm_stop() {
    std::lock_guard lock(mutex_);
    hook_ = nullptr;
  }

 private:
  FrameJobId id_;
  std::string id_text_;
  const JobType& type_;
  nlohmann::json input_;
  int priority_;
  std::chrono::milliseconds timeout_;
  StopFlag stop_;
  std::mutex mutex_;
  std::function<void(StopReason)> hook_;
};

/// What an executor reports when a run ends, whichever way it ended.
struct RunReport {
  Outcome outcome;                  ///< the job's own outcome, or the executor's error
  StopReason stopped = StopReason::none;  ///< why it was stopped, if it was
  double cpu_ms = 0;                ///< CPU time consumed by the run
  std::optional<pid_t> worker_pid;  ///< the process that ran it (process model)
  bool ran = true;                  ///< false if it was stopped before it started
};

/// Why a worker process was replaced; the `reason` label of switchyard_worker_restarts_total.
enum class RestartReason { crash, timeout, cancel, recycle, memory };

/// "crash", "timeout", "cancel", "recycle" or "memory".
std::string_view to_string(RestartReason reason) noexcept;

/// Receives the lifecycle events of runs and workers. Called from executor threads, possibly
/// concurrently: implementations must be thread-safe.
class ExecutionObserver {
 public:
  virtual ~ExecutionObserver() = default;
  /// The run has started (on a worker process `pid`, or on a thread when pid is empty).
  virtual void on_started(Execution& run, std::optional<pid_t> pid) = 0;
  /// The run has ended; called exactly once per run handed to an executor (except runs taken
  /// back with remove_queued/drain_queue).
  virtual void on_finished(Execution& run, RunReport report) = 0;
  /// A worker process was replaced.
  virtual void on_worker_restart(RestartReason /*reason*/) {}
};

/// Ends a run that arrived after its executor closed: stopped by shutdown, never started.
inline void refuse_at_shutdown(ExecutionObserver& observer, Execution& run) {
  run.request_stop(StopReason::shutdown);
  observer.on_finished(run, RunReport{Outcome::failure("shutdown", "the server is shutting down"),
                                      StopReason::shutdown, 0, std::nullopt, false});
}

}  // namespace switchyard::workers
