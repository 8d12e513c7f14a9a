#include <doctest/doctest.h>

#include <chrono>
#include <future>
#include <thread>
#include <vector>

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
