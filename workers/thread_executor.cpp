#include "workers/thread_executor.hpp"

#include "workers/metered_executor.hpp"

#include <algorithm>

#include <pthread.h>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/system/system_error.hpp>

namespace switchyard::workers {

namespace asio = boost::asio;

namespace {

/// Per-run state shared by the coroutine, its timer and its stop hook.
struct ThreadRun {
  ThreadRun(asio::io_context& runs_on, asio::io_context& home) : strand(asio::make_strand(runs_on)), deadline(home) {}
  asio::strand<asio::io_context::executor_type> strand;
  asio::steady_timer deadline;  // on an io thread: fires while a blocking run holds its own thread
  asio::cancellation_signal cancel;
  std::shared_ptr<CpuMeter> meter = std::make_shared<CpuMeter>();
  bool done = false;  // on the strand only: once set, the coroutine is gone and nothing may emit
};

/// Closes a job's CpuMeter when the job's coroutine body ends, however it ends.
struct MeterCloser {
  explicit MeterCloser(std::shared_ptr<CpuMeter> m) noexcept : meter(std::move(m)) {}
  MeterCloser(const MeterCloser&) = delete;
  MeterCloser& operator=(const MeterCloser&) = delete;
  ~MeterCloser() { meter->close(); }

  std::shared_ptr<CpuMeter> meter;  // shared: frames torn down at shutdown may outlive the run's state
};

asio::awaitable<Outcome> run_job(std::shared_ptr<Execution> run, ExecutionObserver& observer,
                                 std::shared_ptr<CpuMeter> meter) {
  // The meter closes as the body ends: co_spawn's hand-over of the outcome (inline, or in one
  // more stretch when the body never suspended) is bookkeeping, not the job's work.
  const MeterCloser closer{std::move(meter)};
  const JobType& type = run->type();
  observer.on_started(*run, std::nullopt);  // here, not in start(): never under the executor's lock
  if (run->stop_flag().stop_requested()) co_return Outcome::failure("cancelled", "stopped before it started");
  try {
    if (type.blocking) co_return type.blocking(run->input(), run->stop_flag());
    co_return co_await type.async(run->input());
  } catch (const boost::system::system_error& e) {
    if (e.code() == asio::error::operation_aborted) co_return Outcome::failure("cancelled", "stopped");
    co_return Outcome::failure("handler_error", e.what());
  } catch (const std::bad_alloc&) {
    co_return Outcome::failure("memory_limit", "the job ran out of memory");
  } catch (const std::exception& e) {
    co_return Outcome::failure("handler_error", e.what());
  }
}

thread_local asio::io_context* driven_context = nullptr;

}  // namespace

asio::io_context* current_io_context() noexcept {
  return driven_context;
}

IoThreadMark::IoThreadMark(asio::io_context& context) noexcept : previous_(driven_context) {
  driven_context = &context;
}

IoThreadMark::~IoThreadMark() {
  driven_context = previous_;
}

ThreadExecutor::ThreadExecutor(asio::io_context& context, ThreadOptions options, ExecutionObserver& observer)
    : context_(context),
      options_(options),
      observer_(observer),
      blocking_context_(static_cast<int>(std::max<std::size_t>(1, options.blocking_slots))),
      blocking_work_(asio::make_work_guard(blocking_context_)) {
  options_.blocking_slots = std::max<std::size_t>(1, options_.blocking_slots);
  options_.concurrency = std::max<std::size_t>(1, options_.concurrency);
  for (std::size_t i = 0; i < options_.blocking_slots; ++i) {
    blocking_threads_.emplace_back([this] {
      pthread_setname_np(pthread_self(), "switchyard-blk");
      blocking_context_.run();
    });
  }
}

ThreadExecutor::~ThreadExecutor() {
  halt();
}

void ThreadExecutor::spread_over(std::vector<asio::io_context*> contexts) {
  spread_ = std::move(contexts);
}

void ThreadExecutor::halt() {
  std::call_once(halted_, [this] {
    {
      std::lock_guard lock(mutex_);
      closed_ = true;  // a run that ends now starts no queued one
    }
    blocking_work_.reset();  // each thread returns once no blocking run is left
    for (auto& thread : blocking_threads_) thread.join();
  });
}

bool ThreadExecutor::can_start(const Execution& run) const {
  if (running_.size() >= options_.concurrency) return false;
  return !run.type().blocking || blocking_running_ < options_.blocking_slots;
}

void ThreadExecutor::submit(std::shared_ptr<Execution> run) {
  std::unique_lock lock(mutex_);
  if (closed_) {
    lock.unlock();
    refuse_at_shutdown(observer_, *run);
    return;
  }
  // Queued runs go first, except that blocking runs waiting for a blocking slot do not hold up
  // the async runs behind them.
  const bool only_blocked_ahead = queued_blocking_ == queue_.size() && blocking_running_ >= options_.blocking_slots;
  if (can_start(*run) && (queue_.empty() || (!run->type().blocking && only_blocked_ahead))) {
    reserve(run);
    lock.unlock();
    launch(std::move(run));
    return;
  }
  const std::string id = run->id_text();
  const int priority = run->priority();
  if (run->type().blocking) ++queued_blocking_;
  queue_.push(id, priority, std::move(run));
}

std::optional<std::shared_ptr<Execution>> ThreadExecutor::unqueued(std::optional<std::shared_ptr<Execution>> run) {
  if (run && (*run)->type().blocking) --queued_blocking_;
  return run;
}

void ThreadExecutor::reserve(const std::shared_ptr<Execution>& run) {
  if (run->type().blocking) ++blocking_running_;
  running_.emplace(run.get(), run);
}

void ThreadExecutor::launch(std::shared_ptr<Execution> run) {
  const bool blocking = static_cast<bool>(run->type().blocking);

  // An async run stays on the io thread that submitted it (its request waits there for the
  // end); a blocking one goes to the blocking threads, its deadline to an io thread.
  asio::io_context* home_context = current_io_context();
  if (home_context == nullptr) {
    home_context = spread_.empty() ? &context_ : spread_[next_spread_.fetch_add(1) % spread_.size()];
  }
  asio::io_context& home = *home_context;
  auto state = std::make_shared<ThreadRun>(blocking ? blocking_context_ : home, home);
  run->arm_stop([state](StopReason) {
    asio::post(state->strand, [state] {
      if (!state->done) state->cancel.emit(asio::cancellation_type::terminal);
    });
  });
  state->deadline.expires_after(run->timeout());
  state->deadline.async_wait([run](const boost::system::error_code& error) {
    if (!error) run->request_stop(StopReason::timeout);
  });
  // The coroutine runs on the job's strand through a metering adapter, so cpu_ms is this job's
  // own CPU time. The meter is closed as the body ends (MeterCloser), charging the stretch under
  // way up to there, so the completion handles the end itself: no post of ours to the strand.
  asio::co_spawn(MeteredExecutor(state->strand, state->meter), run_job(run, observer_, state->meter),
                 asio::bind_cancellation_slot(
                     state->cancel.slot(), [this, run, state, blocking](std::exception_ptr, Outcome outcome) {
                       // On the strand, at once: from here on no stop may reach the finished
                       // coroutine, and a late timer cannot relabel how it ended.
                       state->done = true;
                       run->disarm_stop();
                       state->cancel.slot().clear();
                       const StopReason reason = run->stop_flag().reason();
                       state->deadline.cancel();
                       finished(*run,
                                RunReport{std::move(outcome), reason, state->meter->total_ms(), std::nullopt, true},
                                blocking);
                     }));
}

void ThreadExecutor::finished(Execution& run, RunReport report, bool blocking) {
  std::vector<std::shared_ptr<Execution>> next_runs;
  {
    std::lock_guard lock(mutex_);
    if (blocking) --blocking_running_;
    running_.erase(&run);
    while (!closed_ && !queue_.empty()) {
      // Stop before scanning when nothing queued can start: a full pool, or only blocking runs
      // waiting while every blocking slot is taken. (Scanning then cost O(queue) per finished run.)
      if (running_.size() >= options_.concurrency) break;
      if (blocking_running_ >= options_.blocking_slots && queued_blocking_ == queue_.size()) break;
      auto next = unqueued(queue_.pop_first([this](const auto& candidate) { return can_start(*candidate); }));
      if (!next) break;
      reserve(*next);
      next_runs.push_back(std::move(*next));
    }
  }
  // Outside the lock: co_spawn may run the coroutine inline, and it calls the observer.
  for (auto& next : next_runs) launch(std::move(next));
  observer_.on_finished(run, std::move(report));
}

std::shared_ptr<Execution> ThreadExecutor::remove_queued(const std::string& id) {
  std::lock_guard lock(mutex_);
  auto run = unqueued(queue_.remove(id));
  return run ? std::move(*run) : nullptr;
}

std::vector<std::shared_ptr<Execution>> ThreadExecutor::drain_queue() {
  std::lock_guard lock(mutex_);
  closed_ = true;
  queued_blocking_ = 0;
  return queue_.drain();
}

void ThreadExecutor::stop_running(StopReason reason) {
  std::vector<std::shared_ptr<Execution>> running;
  {
    std::lock_guard lock(mutex_);
    for (auto& [key, run] : running_) running.push_back(run);
  }
  for (auto& run : running) run->request_stop(reason);
}

ThreadStats ThreadExecutor::stats() const {
  std::lock_guard lock(mutex_);
  return ThreadStats{running_.size(), blocking_running_, queue_.size()};
}

}  // namespace switchyard::workers
