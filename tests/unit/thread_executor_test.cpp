#include <doctest/doctest.h>

#include <chrono>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <pthread.h>

#include <boost/asio/post.hpp>

#include "server/io_threads.hpp"
#include "server/uuid.hpp"
#include "workers/job_type.hpp"
#include "workers/thread_executor.hpp"

using namespace switchyard;
using namespace std::chrono_literals;
namespace asio = boost::asio;

namespace {

std::string thread_name() {
  std::array<char, 32> name{};
  pthread_getname_np(pthread_self(), name.data(), name.size());
  return name.data();
}

/// Where each run started (its thread's id and name), and how many ended.
struct Places : workers::ExecutionObserver {
  void on_started(workers::Execution& run, std::optional<pid_t>) override {
    std::lock_guard lock(mutex);
    started[run.id_text()] = {std::this_thread::get_id(), thread_name()};
  }
  void on_finished(workers::Execution&, workers::RunReport report) override {
    std::lock_guard lock(mutex);
    ++finished;
    if (report.outcome.ok) ++succeeded;
  }
  std::pair<std::thread::id, std::string> where(const workers::Execution& run) {
    std::lock_guard lock(mutex);
    return started.at(run.id_text());
  }
  std::size_t starts() {
    std::lock_guard lock(mutex);
    return started.size();
  }
  int ended() {
    std::lock_guard lock(mutex);
    return finished;
  }
  void wait_ended(int count) {
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (ended() < count && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(1ms);
    REQUIRE(ended() == count);
  }

  std::mutex mutex;
  std::map<std::string, std::pair<std::thread::id, std::string>> started;
  int finished = 0;
  int succeeded = 0;
};

struct Rig {
  Rig() : catalogue(workers::make_builtin_catalogue({})), executor(io.main(), options(), places) {
    executor.spread_over(io.contexts());
    runner = std::thread([this] { io.run(); });
  }
  ~Rig() {
    executor.halt();
    io.stop();
    runner.join();
  }
  static workers::ThreadOptions options() {
    workers::ThreadOptions o;
    o.blocking_slots = 1;
    return o;
  }
  std::shared_ptr<workers::Execution> run(const std::string& type, nlohmann::json input) {
    return std::make_shared<workers::Execution>(ids.next(), *catalogue.find(type), std::move(input), 0, 10s);
  }
  /// Submits `run` from io thread `index`.
  void submit_from(std::size_t index, const std::shared_ptr<workers::Execution>& run) {
    std::promise<void> done;
    asio::post(io.context(index), [&] {
      executor.submit(run);
      done.set_value();
    });
    done.get_future().get();
  }

  server::IoThreads io{2};
  workers::Catalogue catalogue;
  Places places;
  server::UuidV7Generator ids;
  workers::ThreadExecutor executor;
  std::thread runner;
};

}  // namespace

TEST_CASE("thread executor: an async run starts on the io thread that submitted it") {
  Rig rig;
  auto on_second = rig.run("sleep", {{"ms", 1}});
  auto on_first = rig.run("sleep", {{"ms", 1}});
  rig.submit_from(1, on_second);
  rig.submit_from(0, on_first);
  rig.places.wait_ended(2);
  CHECK(rig.places.where(*on_second).second == "switchyard-io-1");
  CHECK(rig.places.where(*on_first).first == rig.runner.get_id());
  CHECK(rig.places.succeeded == 2);
}

TEST_CASE("thread executor: runs submitted from no io thread take the io threads in turn") {
  Rig rig;
  std::vector<std::shared_ptr<workers::Execution>> runs;
  for (int i = 0; i < 4; ++i) {
    runs.push_back(rig.run("sleep", {{"ms", 1}}));
    rig.executor.submit(runs.back());  // from the test's thread, which drives no io_context
  }
  rig.places.wait_ended(4);
  std::set<std::thread::id> threads;
  for (const auto& run : runs) threads.insert(rig.places.where(*run).first);
  CHECK(threads.size() == 2);
  CHECK(threads.count(rig.runner.get_id()) == 1);
}

TEST_CASE("thread executor: a blocking run goes to a blocking thread, and halt waits for its end") {
  Rig rig;
  auto burn = rig.run("burn", {{"ms", 300}});
  rig.submit_from(0, burn);
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (rig.places.starts() == 0 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(1ms);
  // While it burns, the io thread that submitted it runs other jobs.
  auto sleep = rig.run("sleep", {{"ms", 1}});
  const auto t0 = std::chrono::steady_clock::now();
  rig.submit_from(0, sleep);
  while (rig.places.ended() < 1 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(1ms);
  CHECK(std::chrono::steady_clock::now() - t0 < 200ms);
  CHECK(rig.places.ended() == 1);  // the sleep; the burn still runs
  rig.executor.halt();
  CHECK(rig.places.ended() == 2);  // halt returned after the burn's end was reported
  CHECK(rig.places.where(*burn).second == "switchyard-blk");
  CHECK(rig.places.where(*sleep).first == rig.runner.get_id());
}
