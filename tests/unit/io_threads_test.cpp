#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>
#include <vector>

#include <sched.h>
#include <time.h>

#include <boost/asio/post.hpp>

#include "server/io_threads.hpp"
#include "workers/thread_executor.hpp"

using namespace switchyard;
using namespace std::chrono_literals;
namespace asio = boost::asio;

namespace {

/// Runs `work` on context `index` of `io` and returns what it returns.
template <class F>
auto on_context(server::IoThreads& io, std::size_t index, F work) {
  std::promise<decltype(work())> promise;
  auto result = promise.get_future();
  asio::post(io.context(index), [&] { promise.set_value(work()); });
  return result.get();
}

/// Keeps the calling thread's CPU busy for `cpu` of its own CPU time.
void spin(std::chrono::nanoseconds cpu) {
  auto used = [] {
    timespec now{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
    return std::chrono::seconds(now.tv_sec) + std::chrono::nanoseconds(now.tv_nsec);
  };
  const auto until = used() + cpu;
  while (used() < until) {
  }
}

/// The calling thread's CPU time.
std::chrono::nanoseconds thread_cpu() {
  timespec now{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
  return std::chrono::seconds(now.tv_sec) + std::chrono::nanoseconds(now.tv_nsec);
}

/// Pins the calling thread to one CPU until destroyed, then restores its former set; ok() is
/// false if either step was refused (then nothing changed).
class PinnedToCpu {
 public:
  explicit PinnedToCpu(int cpu) {
    if (sched_getaffinity(0, sizeof before_, &before_) != 0) return;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    ok_ = sched_setaffinity(0, sizeof one, &one) == 0;
  }
  ~PinnedToCpu() {
    if (ok_) sched_setaffinity(0, sizeof before_, &before_);
  }
  PinnedToCpu(const PinnedToCpu&) = delete;
  PinnedToCpu& operator=(const PinnedToCpu&) = delete;
  [[nodiscard]] bool ok() const { return ok_; }

 private:
  cpu_set_t before_{};
  bool ok_ = false;
};

/// The first CPU this process may run on.
int first_allowed_cpu() {
  cpu_set_t allowed;
  sched_getaffinity(0, sizeof allowed, &allowed);
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &allowed)) return cpu;
  }
  return 0;
}

}  // namespace

TEST_CASE("io threads: the first thread under half busy takes a connection, else the least busy") {
  CHECK(server::IoThreads::choose({0.0}) == 0);
  CHECK(server::IoThreads::choose({0.49, 0.0}) == 0);
  CHECK(server::IoThreads::choose({0.5, 0.9}) == 0);  // none under half: the least busy
  CHECK(server::IoThreads::choose({0.9, 0.5}) == 1);
  CHECK(server::IoThreads::choose({0.95, 0.7, 0.2}) == 2);
  CHECK(server::IoThreads::choose({0.6, 0.1, 0.0}) == 1);
}

TEST_CASE("io threads: each context runs on a thread of its own, marked as driving it") {
  server::IoThreads io(3);
  std::thread runner([&io] { io.run(); });
  std::vector<std::thread::id> ids;
  for (std::size_t i = 0; i < io.size(); ++i) {
    CHECK(on_context(io, i, [&io, i] { return workers::current_io_context() == &io.context(i); }));
    ids.push_back(on_context(io, i, [] { return std::this_thread::get_id(); }));
  }
  CHECK(ids[0] == runner.get_id());  // context 0 is driven by the thread that called run()
  CHECK(ids[1] != ids[0]);
  CHECK(ids[2] != ids[0]);
  CHECK(ids[2] != ids[1]);
  CHECK(workers::current_io_context() == nullptr);
  io.stop();
  runner.join();
}

TEST_CASE("io threads: a connection goes to the second thread while the first is busy, and back once it is not") {
  server::IoThreads io(2);
  std::thread runner([&io] { io.run(); });
  std::this_thread::sleep_for(20ms);
  CHECK(on_context(io, 0, [&io] { return io.place(); }) == 0);  // both idle

  // Context 0's thread computes for 60 ms of its CPU time, then places a connection: the
  // stretch measured is almost all busy for it and idle for the other.
  const auto busy_place = on_context(io, 0, [&io] {
    spin(60ms);
    return io.place();
  });
  CHECK(io.busy()[0] > 0.5);
  CHECK(io.busy()[1] < 0.1);
  CHECK(busy_place == 1);

  // Idle again: a stretch of 30 ms asleep.
  std::this_thread::sleep_for(30ms);
  CHECK(on_context(io, 0, [&io] { return io.place(); }) == 0);
  CHECK(io.busy()[0] < 0.5);
  io.stop();
  runner.join();
}

TEST_CASE("io threads: a thread that waits for a core counts as busy, not only its CPU time") {
  server::IoThreads io(2);
  std::thread runner([&io] { io.run(); });
  std::this_thread::sleep_for(20ms);
  const int cpu = first_allowed_cpu();

  // A hog and the second io thread share one core for 300 ms of wall time: the io thread is
  // runnable all along but runs about half of it. Its CPU time says half idle; its demand
  // (CPU time plus waiting for a core) says busy.
  std::atomic<int> hog_pinned{0};  // 1 pinned, -1 refused
  std::atomic<bool> stop{false};
  std::thread hog([&] {
    const PinnedToCpu pinned(cpu);
    hog_pinned = pinned.ok() ? 1 : -1;
    while (pinned.ok() && !stop) {
    }
  });
  while (hog_pinned == 0) std::this_thread::yield();
  std::chrono::nanoseconds cpu_used{-1};  // stays negative if the io thread could not be pinned
  if (hog_pinned == 1) {
    on_context(io, 0, [&io] { return io.place(); });  // the stretch starts here
    cpu_used = on_context(io, 1, [cpu] {
      const PinnedToCpu pinned(cpu);
      if (!pinned.ok()) return std::chrono::nanoseconds(-1);
      const auto cpu_start = thread_cpu();
      const auto until = std::chrono::steady_clock::now() + 300ms;
      while (std::chrono::steady_clock::now() < until) {
      }
      return thread_cpu() - cpu_start;
    });
    on_context(io, 0, [&io] { return io.place(); });  // and ends here
  }
  stop = true;
  hog.join();
  io.stop();
  runner.join();

  if (cpu_used < 0ns) {
    MESSAGE("skipped: this machine refused to pin threads to one CPU");
    return;
  }
  MESSAGE("second io thread: " << std::chrono::duration<double, std::milli>(cpu_used).count()
                               << " ms of CPU in 300 ms; busy " << io.busy()[1]);
  CHECK(cpu_used < 240ms);  // it did share the core: its CPU time alone would look under 0.8 busy
  CHECK(io.busy()[1] > 0.8);
}
