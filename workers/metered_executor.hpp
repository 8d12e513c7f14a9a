#pragma once

#include <atomic>
#include <memory>
#include <utility>

#include <boost/asio/execution.hpp>
#include <boost/asio/execution_context.hpp>
#include <boost/asio/query.hpp>
#include <boost/asio/require.hpp>

#include "workers/cpu_time.hpp"

namespace switchyard::workers {

/// Accumulated CPU time of one job's handlers, added up stretch by stretch: a stretch is one
/// run of a handler, from begin() to end(). Stretches of one meter never overlap (the job's
/// handlers run on one strand); total_ms() may be read from any thread.
class CpuMeter {
 public:
  /// A stretch starts; `now_ms` is the thread CPU clock.
  void begin(double now_ms) noexcept {
    stretch_start_ms_ = now_ms;
    in_stretch_ = true;
  }

  /// The stretch begun last ends; its CPU time is charged.
  void end(double now_ms) noexcept {
    in_stretch_ = false;
    add(now_ms - stretch_start_ms_);
  }

  [[nodiscard]] double total_ms() const noexcept { return total_.load(std::memory_order_relaxed); }

  /// Ends the metering once the job's own work is over, from inside the job's last stretch:
  /// that stretch is charged up to here, so total_ms() is final at once, and the rest of it
  /// (the executor's bookkeeping after the coroutine returned) is not charged, nor is any later
  /// stretch timed. Each stretch costs two reads of the thread CPU clock, a system call each.
  void close() noexcept {
    if (!open()) return;
    if (in_stretch_) end(thread_cpu_ms());
    open_.store(false, std::memory_order_relaxed);
  }
  [[nodiscard]] bool open() const noexcept { return open_.load(std::memory_order_relaxed); }

 private:
  void add(double ms) noexcept {
    double seen = total_.load(std::memory_order_relaxed);
    while (!total_.compare_exchange_weak(seen, seen + ms, std::memory_order_relaxed)) {
    }
  }

  std::atomic<double> total_{0};
  std::atomic<bool> open_{true};
  double stretch_start_ms_ = 0;  // of the stretch under way, if in_stretch_
  bool in_stretch_ = false;      // false too while the job runs inline in an unmetered handler
};

/// An executor adapter that runs every function on `Inner` and charges the thread CPU time it
/// takes to a CpuMeter, until the meter is closed. A coroutine spawned on it, and every
/// operation it starts from `this_coro::executor`, resumes through it: so a job's cpu_ms counts
/// its own work only, not the other coroutines that share the io threads while it waits.
/// Like a strand, it runs a function inline when asked to (blocking.possibly, as dispatch does)
/// and the caller is already inside Inner; Asio relies on that, e.g. to deliver a cancellation
/// while the operation it targets still exists. Thread-safety: like Inner.
template <typename Inner>
class MeteredExecutor {
 public:
  MeteredExecutor(Inner inner, std::shared_ptr<CpuMeter> meter) noexcept
      : inner_(std::move(inner)), meter_(std::move(meter)) {}

  /// The execution context of the inner executor.
  [[nodiscard]] boost::asio::execution_context& query(boost::asio::execution::context_t) const noexcept {
    return boost::asio::query(inner_, boost::asio::execution::context);
  }

  /// blocking.never after require(blocking.never), else blocking.possibly.
  [[nodiscard]] boost::asio::execution::blocking_t query(boost::asio::execution::blocking_t) const noexcept {
    return never_ ? boost::asio::execution::blocking_t(boost::asio::execution::blocking.never)
                  : boost::asio::execution::blocking_t(boost::asio::execution::blocking.possibly);
  }

  /// A copy that always queues.
  [[nodiscard]] MeteredExecutor require(boost::asio::execution::blocking_t::never_t) const noexcept {
    MeteredExecutor copy = *this;
    copy.never_ = true;
    return copy;
  }

  /// A copy that may run inline when already inside Inner.
  [[nodiscard]] MeteredExecutor require(boost::asio::execution::blocking_t::possibly_t) const noexcept {
    MeteredExecutor copy = *this;
    copy.never_ = false;
    return copy;
  }

  /// Runs `f` inline if allowed and already inside Inner (the running handler is being metered
  /// or is the executor's own bookkeeping), else queues it on Inner and meters its run.
  template <typename Function>
  void execute(Function f) const {
    if (!never_ && inner_.running_in_this_thread()) {
      f();
      return;
    }
    boost::asio::require(inner_, boost::asio::execution::blocking.never)
        .execute([f = std::move(f), meter = meter_]() mutable {
          if (!meter->open()) {
            f();
            return;
          }
          meter->begin(thread_cpu_ms());
          f();
          if (meter->open()) meter->end(thread_cpu_ms());  // else close() charged it already
        });
  }

  friend bool operator==(const MeteredExecutor& a, const MeteredExecutor& b) noexcept {
    return a.inner_ == b.inner_ && a.meter_ == b.meter_ && a.never_ == b.never_;
  }
  friend bool operator!=(const MeteredExecutor& a, const MeteredExecutor& b) noexcept { return !(a == b); }

 private:
  Inner inner_;
  std::shared_ptr<CpuMeter> meter_;
  bool never_ = false;
};

}  // namespace switchyard::workers
