#pragma once

#include <atomic>
#include <ctime>
#include <memory>
#include <utility>

#include <boost/asio/execution.hpp>
#include <boost/asio/execution_context.hpp>
#include <boost/asio/query.hpp>
#include <boost/asio/require.hpp>

namespace switchyard::workers {

/// CPU time of the calling thread, in milliseconds.
inline double thread_cpu_ms() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
}

/// Accumulated CPU time of one job's handlers. Thread-safe.
class CpuMeter {
 public:
  void add(double ms) noexcept {
    double seen = total_.load(std::memory_order_relaxed);
    while (!total_.compare_exchange_weak(seen, seen + ms, std::memory_order_relaxed)) {
    }
  }
  [[nodiscard]] double total_ms() const noexcept { return total_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> total_{0};
};

/// An executor adapter that runs every function on `Inner` (never inline) and charges the
/// thread CPU time it takes to a CpuMeter. A coroutine spawned on it, and every operation it
/// starts from `this_coro::executor`, resumes through it: so a job's cpu_ms counts its own work
/// only, not the other coroutines that share the io threads while it waits.
/// Thread-safety: like Inner.
template <typename Inner>
class MeteredExecutor {
 public:
  MeteredExecutor(Inner inner, std::shared_ptr<CpuMeter> meter) noexcept
      : inner_(std::move(inner)), meter_(std::move(meter)) {}

  /// The execution context of the inner executor.
  [[nodiscard]] boost::asio::execution_context& query(boost::asio::execution::context_t) const noexcept {
    return boost::asio::query(inner_, boost::asio::execution::context);
  }

  /// Functions are always queued, never run inside execute().
  static constexpr boost::asio::execution::blocking_t query(boost::asio::execution::blocking_t) noexcept {
    return boost::asio::execution::blocking.never;
  }

  /// Already never-blocking.
  [[nodiscard]] MeteredExecutor require(boost::asio::execution::blocking_t::never_t) const noexcept { return *this; }

  /// Queues `f` on the inner executor and meters its run.
  template <typename Function>
  void execute(Function f) const {
    boost::asio::require(inner_, boost::asio::execution::blocking.never)
        .execute([f = std::move(f), meter = meter_]() mutable {
          const double before = thread_cpu_ms();
          f();
          meter->add(thread_cpu_ms() - before);
        });
  }

  friend bool operator==(const MeteredExecutor& a, const MeteredExecutor& b) noexcept {
    return a.inner_ == b.inner_ && a.meter_ == b.meter_;
  }
  friend bool operator!=(const MeteredExecutor& a, const MeteredExecutor& b) noexcept { return !(a == b); }

 private:
  Inner inner_;
  std::shared_ptr<CpuMeter> meter_;
};

}  // namespace switchyard::workers
