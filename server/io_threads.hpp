#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include <time.h>

#include <boost/asio/io_context.hpp>

namespace switchyard::server {

/// The server's io threads, each driving an io_context of its own: a connection, the coroutine
/// serving it and the async jobs it submits stay on one thread, so a request never wakes another
/// thread to go on. (One io_context shared by the threads passed every completion through a
/// common queue and woke the other thread for most of them: on 2 cores a third more CPU per
/// request.) Context 0 is driven by the thread that calls run(); it also carries the listener,
/// the dispatcher's timers and signal handling.
/// Thread-safety: stop() may be called from any thread; place() from context 0's thread only.
class IoThreads {
 public:
  using Clock = std::chrono::steady_clock;

  explicit IoThreads(int count);
  ~IoThreads();
  IoThreads(const IoThreads&) = delete;
  IoThreads& operator=(const IoThreads&) = delete;

  [[nodiscard]] std::size_t size() const { return contexts_.size(); }
  boost::asio::io_context& context(std::size_t index) { return *contexts_[index]; }
  boost::asio::io_context& main() { return *contexts_.front(); }
  [[nodiscard]] std::vector<boost::asio::io_context*> contexts() const;

  /// Drives context 0 on the calling thread and each other one on a thread of its own (named
  /// switchyard-io-N) until stop(); returns once every thread has.
  void run();

  /// Ends run(): each context stops after the handler it is running.
  void stop();

  /// The context for a new connection: the first whose thread was busy less than half of the
  /// last stretch measured (10 ms or more, since the previous placement), else the least busy.
  /// Connections pack onto the first thread while it keeps up, which on a small machine spares
  /// the wakeups of a second, and spill to the next ones when it does not.
  /// Busy is demand: the thread's CPU time plus the time it was runnable but waiting for a
  /// core, from the kernel's /proc/self/task/<tid>/schedstat. On a loaded machine a thread that
  /// waits for a core is busy, though its CPU time alone would say it is half idle. Where
  /// schedstat cannot be read (or its scheduler statistics are off, all zero), the CPU time
  /// alone is used. A wait still under way is counted once the thread gets its core.
  std::size_t place();

  /// Each thread's busy share (demand over wall time) of the stretch place() measured last.
  [[nodiscard]] const std::vector<double>& busy() const { return busy_; }

  /// The rule of place(), given each thread's busy share of the last stretch.
  static std::size_t choose(const std::vector<double>& busy);

 private:
  std::vector<std::unique_ptr<boost::asio::io_context>> contexts_;
  std::vector<std::thread> threads_;
  /// Nanoseconds of demand of thread `index` so far: its CPU clock plus its schedstat wait.
  std::int64_t demand_ns(std::size_t index);

  std::vector<clockid_t> clocks_;       // each thread's CPU clock, set by run() before context 0 runs
  std::vector<std::atomic<int>> tids_;  // each thread's kernel id, set by the thread itself; 0 until then
  std::vector<int> schedstat_fds_;      // each thread's schedstat: -1 not yet opened, -2 unreadable
  std::vector<std::int64_t> wait_ns_;   // each thread's run-queue wait at its last good reading
  std::vector<std::int64_t> last_demand_ns_;  // each thread's demand at the last measurement
  std::vector<double> busy_;            // share of the last stretch each thread ran or waited for a core
  Clock::time_point measured_at_{};
};

}  // namespace switchyard::server
