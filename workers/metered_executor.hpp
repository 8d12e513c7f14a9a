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

/// Accumulated CPU time of one job's handlers. Thread-safe.
class CpuMeter {
 public:
  void add(double ms) noexcept {
    double seen = total_.load(std::memory_order_relaxed);
    while (!total_.compare_exchange_weak(seen, seen + ms, std::memory_order_relaxed)) {
    }
  }
  [[nodiscard]] double total_ms() const noexcept { return total_.load(std::memory_order_relaxed); }

  /// Ends the metering once the job's own work is over: stretches that start later (the
  /// executor's bookkeeping after the coroutine returned) are neither timed nor charged. Each
  /// stretch costs two reads of the thread CPU clock, and each read is a system call.
  void close() noexcept { open_.store(false, std::memory_order_relaxed); }
  [[nodiscard]] bool open() const noexcept { return open_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> total_{0};
  std::atomic<bool> open_{true};
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
          const double before = thread_cpu_ms();
          f();
          meter->add(thread_cpu_ms() - before);
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
