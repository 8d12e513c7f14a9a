#include <doctest/doctest.h>

#include <condition_variable>
#include <csignal>
#include <thread>

#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include "server/config.hpp"
#include "server/uuid.hpp"
#include "workers/process_pool.hpp"

using namespace switchyard;
using namespace std::chrono_literals;

namespace {

/// Records what the pool reports, and lets a test wait for it.
class Recorder final : public workers::ExecutionObserver {
 public:
  void on_started(workers::Execution& run, std::optional<pid_t> pid) override {
    std::lock_guard lock(mutex_);
    started_pids.push_back(pid.value_or(0));
    events.push_back("start " + run.id_text());
    changed_.notify_all();
  }
  void on_finished(workers::Execution& run, workers::RunReport report) override {
    const auto queued = pool != nullptr ? std::optional(pool->stats().queued) : std::nullopt;
    std::lock_guard lock(mutex_);
    if (queued) queued_at_end[run.id_text()] = *queued;
    events.push_back("end " + run.id_text());
    finished.emplace(run.id_text(), std::move(report));
    changed_.notify_all();
  }
  void on_worker_restart(workers::RestartReason reason) override {
    std::lock_guard lock(mutex_);
    restarts.push_back(reason);
  }
  workers::RunReport wait_for(const std::string& id) {
    std::unique_lock lock(mutex_);
    REQUIRE(changed_.wait_for(lock, 20s, [&] { return finished.contains(id); }));
    return finished.at(id);
  }
  bool wait_started(std::size_t count) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, 20s, [&] { return started_pids.size() >= count; });
  }

  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<pid_t> started_pids;
  std::map<std::string, workers::RunReport> finished;
  std::vector<workers::RestartReason> restarts;
  std::vector<std::string> events;  // "start ID" and "end ID", in the order reported
  workers::ProcessPool* pool = nullptr;  // if set, the queue's length is noted at each end
  std::map<std::string, std::size_t> queued_at_end;
};

/// A stand-in worker in Python that speaks the frame protocol on fd 3 and misbehaves on purpose,
/// as its first argument says: "split" writes each result (over 100 KB) in small pieces, "trailing"
/// writes bytes after its result frame ("trailing_large": after a 10 KB one, "trailing_exact":
/// after one of 4096 bytes, "trailing_near": 100 bytes after one of 4060 bytes, so that the first
/// read cannot take them all), "bad_magic" spoils the result's header.
constexpr const char* kFakeWorker = R"PY(
import json, os, struct, sys, time
mode = sys.argv[1]
def frame(kind, job, payload):
    return struct.pack("<IBBBBI", 0x44595753, 1, kind, 0, 0, len(payload)) + job + payload
def read_exact(n):
    data = b""
    while len(data) < n:
        chunk = os.read(3, n - len(data))
        if not chunk:
            sys.exit(0)
        data += chunk
    return data
os.write(3, frame(1, bytes(16), json.dumps({"pid": os.getpid(), "cpu_total_ms": 0}).encode()))
while True:
    header = read_exact(28)
    read_exact(struct.unpack_from("<I", header, 8)[0])
    def reply_with(pad):
        body = {"ok": True, "result": {"mode": mode, "pad": "x" * pad}, "cpu_ms": 0, "cpu_total_ms": 0}
        return frame(3, header[12:28], json.dumps(body).encode())
    pads = {"split": 100000, "trailing_large": 10000}
    reply = reply_with(pads.get(mode, 0))
    if mode == "trailing_exact":
        reply = reply_with(4096 - len(reply))  # a frame of exactly the reader's first buffer
    if mode == "trailing_near":
        reply = reply_with(4060 - len(reply)) + b"y" * 95
    if mode == "split":
        for at in range(0, len(reply), 7000):
            os.write(3, reply[at:at + 7000])
            time.sleep(0.002)
    elif mode in ("trailing", "trailing_large", "trailing_exact", "trailing_near"):
        os.write(3, reply + b"extra")
    else:
        os.write(3, b"XXXX" + reply[4:])
)PY";

struct PoolFixture {
  explicit PoolFixture(int workers) : PoolFixture(workers, SWITCHYARD_BINARY, real_worker_arguments()) {}
  PoolFixture(int workers, std::string executable, std::vector<std::string> arguments)
      : catalogue(workers::make_builtin_catalogue(builtin())) {
    workers::PoolOptions options;
    options.workers = workers;
    options.executable = std::move(executable);
    options.worker_args = std::move(arguments);
    pool = std::make_unique<workers::ProcessPool>(context, options, recorder);
    pool->start();
    for (int i = 0; i < 2; ++i) threads.emplace_back([this] { context.run(); });
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (!pool->stats().ready && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(10ms);
    REQUIRE(pool->stats().ready);
  }
  ~PoolFixture() {
    pool->drain_queue();
    pool->terminate();
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (!pool->stopped() && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(10ms);
    CHECK(pool->stopped());
    context.stop();
    for (auto& t : threads) t.join();
  }
  static std::vector<std::string> real_worker_arguments() {
    workers::WorkerOptions worker;
    worker.parent = ::getpid();
    worker.builtin = builtin();
    return server::worker_arguments(worker);
  }
  static workers::BuiltinOptions builtin() {
    workers::BuiltinOptions o;
    o.diagnostics = true;
    return o;
  }
  std::shared_ptr<workers::Execution> submit(const std::string& type, nlohmann::json input,
                                             std::chrono::milliseconds timeout = 10s) {
    auto run = std::make_shared<workers::Execution>(ids.next(), *catalogue.find(type), std::move(input), 0, timeout);
    pool->submit(run);
    return run;
  }

  boost::asio::io_context context;
  workers::Catalogue catalogue;
  Recorder recorder;
  server::UuidV7Generator ids;
  std::unique_ptr<workers::ProcessPool> pool;
  std::vector<std::thread> threads;
};

bool alive(pid_t pid) { return ::kill(pid, 0) == 0; }

}  // namespace

TEST_CASE("a job runs in a worker process and the worker is reused") {
  PoolFixture f(1);
  auto a = f.submit("primes", {{"n", 1000}});
  auto ra = f.recorder.wait_for(a->id_text());
  CHECK(ra.outcome.ok);
  CHECK(ra.outcome.result["count"] == 168);
  REQUIRE(ra.worker_pid);
  CHECK(*ra.worker_pid != ::getpid());
  auto b = f.submit("hash", {{"data", "abc"}});
  auto rb = f.recorder.wait_for(b->id_text());
  CHECK(rb.outcome.result["hex"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(rb.worker_pid == ra.worker_pid);
}

TEST_CASE("the pool runs jobs on its own thread, whatever the given io_context's threads do") {
  PoolFixture f(1);
  // Both threads running the fixture's io_context (the child reaper's) are held up.
  std::mutex mutex;
  std::condition_variable released;
  bool release = false;
  for (int i = 0; i < 2; ++i) {
    boost::asio::post(f.context, [&] {
      std::unique_lock lock(mutex);
      released.wait(lock, [&] { return release; });
    });
  }
  auto a = f.submit("hash", {{"data", "abc"}});
  auto b = f.submit("noop", nlohmann::json::object());
  const bool both_done = [&] {
    std::unique_lock lock(f.recorder.mutex_);
    return f.recorder.changed_.wait_for(lock, 10s, [&] { return f.recorder.finished.size() == 2; });
  }();
  {
    std::lock_guard lock(mutex);
    release = true;
  }
  released.notify_all();
  REQUIRE(both_done);
  CHECK(f.recorder.wait_for(a->id_text()).outcome.ok);
  CHECK(f.recorder.wait_for(b->id_text()).outcome.ok);
}

TEST_CASE("a worker gets its next job before the job it finished is reported, and every job is reported once") {
  PoolFixture f(1);
  f.recorder.pool = f.pool.get();
  std::vector<std::shared_ptr<workers::Execution>> runs;
  runs.push_back(f.submit("burn", {{"ms", 50}}));  // the others queue up behind it
  for (int i = 0; i < 3; ++i) runs.push_back(f.submit("noop", nlohmann::json::object()));
  for (auto& run : runs) CHECK(f.recorder.wait_for(run->id_text()).outcome.ok);
  std::vector<std::string> expected;
  for (std::size_t i = 0; i < runs.size(); ++i) {
    if (i > 0) expected.push_back("end " + runs[i - 1]->id_text());  // after the next frame's write
    expected.push_back("start " + runs[i]->id_text());
  }
  expected.push_back("end " + runs.back()->id_text());  // reported when the worker goes idle
  std::lock_guard lock(f.recorder.mutex_);
  CHECK(f.recorder.events == expected);
  // When a job's end was reported, the next job had already left the queue for the worker.
  for (std::size_t i = 0; i < runs.size(); ++i) {
    CAPTURE(i);
    CHECK(f.recorder.queued_at_end.at(runs[i]->id_text()) == (i + 1 < runs.size() ? runs.size() - 2 - i : 0));
  }
}

TEST_CASE("a finished job is reported when the next one was cancelled in the queue, and when the pool closes") {
  PoolFixture f(1);
  auto a = f.submit("burn", {{"ms", 100}});
  REQUIRE(f.recorder.wait_started(1));
  auto b = f.submit("noop", nlohmann::json::object());
  b->request_stop(workers::StopReason::cancel);  // still queued: the slot finds it stopped
  CHECK(f.recorder.wait_for(a->id_text()).outcome.ok);
  CHECK(f.recorder.wait_for(b->id_text()).outcome.error_code == "cancelled");
  auto c = f.submit("burn", {{"ms", 100}});
  REQUIRE(f.recorder.wait_started(2));
  auto d = f.submit("noop", nlohmann::json::object());  // queued when the pool closes
  f.pool->close();
  CHECK(f.recorder.wait_for(c->id_text()).outcome.ok);
  const auto left = f.pool->drain_queue();
  REQUIRE(left.size() == 1);
  CHECK(left.front() == d);
  std::lock_guard lock(f.recorder.mutex_);
  CHECK(f.recorder.events == std::vector<std::string>{"start " + a->id_text(), "end " + a->id_text(),
                                                      "end " + b->id_text(), "start " + c->id_text(),
                                                      "end " + c->id_text()});
}

TEST_CASE("a crash fails only its job and the worker is replaced") {
  PoolFixture f(1);
  auto crash = f.submit("crash", {{"signal", "SEGV"}});
  auto report = f.recorder.wait_for(crash->id_text());
  CHECK_FALSE(report.outcome.ok);
  CHECK(report.outcome.error_code == "worker_crashed");
  CHECK(report.outcome.error_message.find("SIGSEGV") != std::string::npos);
  auto next = f.submit("noop", nlohmann::json::object());
  auto after = f.recorder.wait_for(next->id_text());
  CHECK(after.outcome.ok);
  CHECK(after.worker_pid != report.worker_pid);
  CHECK_FALSE(alive(*report.worker_pid));
}

TEST_CASE("a job over its timeout is killed with its worker") {
  PoolFixture f(1);
  const auto started = std::chrono::steady_clock::now();
  auto slow = f.submit("burn", {{"ms", 10000}}, 200ms);
  auto report = f.recorder.wait_for(slow->id_text());
  CHECK(std::chrono::steady_clock::now() - started < 5s);
  CHECK(report.stopped == workers::StopReason::timeout);
  CHECK(report.outcome.error_code == "timeout");
  CHECK(report.cpu_ms > 50);  // from the killed worker's rusage
  CHECK_FALSE(alive(*report.worker_pid));
}

TEST_CASE("a deadline that meets its job's reply never touches the next job") {
  // Each burn ends about when its deadline does, so the reply and the timer race; the noop
  // after it must never pay for a timer that fired late.
  PoolFixture f(1);
  std::vector<std::shared_ptr<workers::Execution>> burns, noops;
  for (int i = 0; i < 40; ++i) {
    burns.push_back(f.submit("burn", {{"ms", 2 + i % 2}}, 3ms));
    noops.push_back(f.submit("noop", nlohmann::json::object()));
  }
  int timed_out = 0;
  for (int i = 0; i < 40; ++i) {
    auto burn = f.recorder.wait_for(burns[i]->id_text());
    CHECK((burn.outcome.ok || burn.outcome.error_code == "timeout"));
    if (!burn.outcome.ok) ++timed_out;
    auto noop = f.recorder.wait_for(noops[i]->id_text());
    CHECK(noop.outcome.ok);
    CHECK(noop.stopped == workers::StopReason::none);
  }
  MESSAGE(timed_out << " of 40 burns timed out");
}

TEST_CASE("cancelling a running job kills its worker; a queued one is taken back") {
  PoolFixture f(1);
  auto running = f.submit("burn", {{"ms", 10000}});
  auto queued = f.submit("noop", nlohmann::json::object());
  REQUIRE(f.recorder.wait_started(1));
  CHECK(f.pool->stats().queued == 1);
  CHECK(f.pool->remove_queued(queued->id_text()) == queued);
  running->request_stop(workers::StopReason::cancel);
  auto report = f.recorder.wait_for(running->id_text());
  CHECK(report.stopped == workers::StopReason::cancel);
  CHECK(report.outcome.error_code == "cancelled");
  CHECK_FALSE(alive(*report.worker_pid));
  std::lock_guard lock(f.recorder.mutex_);
  CHECK_FALSE(f.recorder.finished.contains(queued->id_text()));
}

TEST_CASE("two workers run two jobs at once in different processes") {
  PoolFixture f(2);
  auto a = f.submit("burn", {{"ms", 300}});
  auto b = f.submit("burn", {{"ms", 300}});
  auto ra = f.recorder.wait_for(a->id_text());
  auto rb = f.recorder.wait_for(b->id_text());
  CHECK(ra.outcome.ok);
  CHECK(rb.outcome.ok);
  CHECK(ra.worker_pid != rb.worker_pid);
}

TEST_CASE("a result written in small pieces is read whole") {
  PoolFixture f(1, "/usr/bin/python3", {"-c", kFakeWorker, "split"});
  auto a = f.submit("noop", nlohmann::json::object());
  auto report = f.recorder.wait_for(a->id_text());
  REQUIRE(report.outcome.ok);
  CHECK(report.outcome.result["mode"] == "split");
  CHECK(report.outcome.result["pad"].get<std::string>().size() == 100000);
  auto b = f.submit("noop", nlohmann::json::object());  // the same worker, nothing left over
  const auto next = f.recorder.wait_for(b->id_text());
  CHECK(next.outcome.ok);
  CHECK(next.worker_pid == report.worker_pid);
}

TEST_CASE("a worker that breaks the framing fails its job and is replaced") {
  // trailing_large: the bytes come after a frame larger than the reader's first buffer;
  // trailing_exact: after a frame of exactly its size.
  // trailing_near: 100 bytes after a frame of 4060, of which the first read takes 36.
  for (const std::string mode : {"trailing", "trailing_large", "trailing_exact", "trailing_near", "bad_magic"}) {
    CAPTURE(mode);
    PoolFixture f(1, "/usr/bin/python3", {"-c", kFakeWorker, mode});
    auto a = f.submit("noop", nlohmann::json::object());
    auto report = f.recorder.wait_for(a->id_text());
    CHECK_FALSE(report.outcome.ok);
    CHECK(report.outcome.error_code == "worker_protocol_error");
    const std::string expected = mode == "bad_magic"       ? "malformed frame header: bad magic"
                                 : mode == "trailing_near" ? "36 or more bytes followed the frame unasked"
                                                           : "5 bytes followed the frame unasked";
    CHECK(report.outcome.error_message == expected);
    REQUIRE(report.worker_pid);
    CHECK_FALSE(alive(*report.worker_pid));
    auto b = f.submit("noop", nlohmann::json::object());  // a new worker (as faulty) takes it
    auto next = f.recorder.wait_for(b->id_text());
    CHECK(next.outcome.error_code == "worker_protocol_error");
    CHECK(next.worker_pid != report.worker_pid);
  }
}
