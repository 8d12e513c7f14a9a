#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <random>

#include <sqlite3.h>

#include "server/sqlite_store.hpp"
#include "server/uuid.hpp"

using namespace switchyard;
using api::JobStatus;
using server::SqliteJobStore;
namespace fs = std::filesystem;

namespace {

/// A fresh directory under the system's temp dir, removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir() {
    std::random_device random;
    path_ = fs::temp_directory_path() / ("switchyard-store-" + std::to_string(random()));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  [[nodiscard]] const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

api::Job make_job(const std::string& type = "sleep") {
  static server::UuidV7Generator ids;
  api::Job job;
  job.id = workers::format_uuid(ids.next());
  job.type = type;
  job.model = api::Model::process;
  job.priority = 7;
  job.timeout_ms = 1234;
  job.max_attempts = 3;
  job.input = {{"ms", 5}, {"text", "é \"quoted\""}};
  job.created_at = std::chrono::system_clock::now();
  return job;
}

void finish(server::JobStore& store, const std::string& id, api::TimePoint when = std::chrono::system_clock::now()) {
  store.update(id, [when](api::Job& job) {
    job.status = JobStatus::succeeded;
    job.result = {{"slept_ms", 5}};
    job.started_at = when - std::chrono::milliseconds(5);
    job.finished_at = when;
    job.attempts = 1;
    job.run_ms = 5.25;
    job.cpu_ms = 0.5;
    job.queue_ms = 0.125;
    job.worker_pid = 4242;
  });
  store.retire(id);
}

/// Blocks until everything changed so far is on disk.
bool flush(server::JobStore& store) {
  std::promise<bool> done;
  auto written = done.get_future();
  store.when_durable([&done](bool ok) { done.set_value(ok); });
  return written.get();
}

/// Runs SQL on the database file directly (another connection), for setting up broken files.
void run_sql(const fs::path& file, const char* sql) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(file.c_str(), &db) == SQLITE_OK);
  char* error = nullptr;
  const int rc = sqlite3_exec(db, sql, nullptr, nullptr, &error);
  const std::string message = error ? error : "";
  sqlite3_free(error);
  sqlite3_close(db);
  REQUIRE_MESSAGE(rc == SQLITE_OK, message);
}

}  // namespace

TEST_CASE("sqlite store: jobs, results and keys survive a reopen field for field") {
  TempDir dir;
  api::Job done = make_job();
  api::Job queued = make_job();
  api::Job running = make_job("burn");
  {
    SqliteJobStore store(dir.path(), 100);
    store.insert(done);
    store.insert(queued);
    store.insert(running);
    store.update(running.id, [](api::Job& job) {
      job.status = JobStatus::running;
      job.attempts = 1;
    });
    finish(store, done.id);
    store.remember_key("key-1", {"fingerprint", {done.id, queued.id}});
    CHECK(flush(store));
    CHECK(store.commits() >= 1);
  }
  SqliteJobStore store(dir.path(), 100);
  CHECK(store.size() == 3);
  const auto* read = store.find(done.id);
  REQUIRE(read != nullptr);
  CHECK(read->status == JobStatus::succeeded);
  CHECK(read->type == "sleep");
  CHECK(read->model == api::Model::process);
  CHECK(read->priority == 7);
  CHECK(read->timeout_ms == 1234);
  CHECK(read->max_attempts == 3);
  CHECK(read->attempts == 1);
  CHECK(read->input == done.input);
  CHECK(read->result == nlohmann::json{{"slept_ms", 5}});
  CHECK(read->created_at == std::chrono::time_point_cast<std::chrono::microseconds>(done.created_at));
  REQUIRE(read->finished_at.has_value());
  CHECK(read->run_ms == doctest::Approx(5.25));
  CHECK(read->worker_pid == 4242);
  CHECK(!read->error.has_value());

  auto unfinished = store.take_unfinished();
  std::sort(unfinished.begin(), unfinished.end());
  CHECK(unfinished == std::vector<std::string>{queued.id, running.id});
  CHECK(store.take_unfinished().empty());  // taken once
  CHECK(store.find(running.id)->status == JobStatus::running);

  const auto* key = store.find_key("key-1");
  REQUIRE(key != nullptr);
  CHECK(key->fingerprint == "fingerprint");
  CHECK(key->job_ids == std::vector<std::string>{done.id, queued.id});
}

TEST_CASE("sqlite store: an error survives a reopen") {
  TempDir dir;
  api::Job job = make_job();
  {
    SqliteJobStore store(dir.path(), 100);
    store.insert(job);
    store.update(job.id, [](api::Job& j) {
      j.status = JobStatus::failed;
      j.error = api::JobError{"worker_crashed", "worker process 7 died of SIGKILL"};
      j.finished_at = std::chrono::system_clock::now();
    });
    store.retire(job.id);
  }  // the destructor commits what is queued
  SqliteJobStore store(dir.path(), 100);
  const auto* read = store.find(job.id);
  REQUIRE(read != nullptr);
  REQUIRE(read->error.has_value());
  CHECK(read->error->code == "worker_crashed");
  CHECK(read->error->message == "worker process 7 died of SIGKILL");
}

TEST_CASE("sqlite store: retention and the result TTL delete rows, keys go with their jobs") {
  TempDir dir;
  std::vector<std::string> ids;
  const auto now = std::chrono::system_clock::now();
  {
    SqliteJobStore store(dir.path(), 3);
    for (int i = 0; i < 5; ++i) {
      auto job = make_job();
      ids.push_back(job.id);
      store.insert(job);
    }
    store.remember_key("k0", {"f", {ids[0]}});
    store.remember_key("k4", {"f", {ids[4]}});
    // Finished in order 0..3, the first two an hour ago.
    for (int i = 0; i < 4; ++i) finish(store, ids[static_cast<std::size_t>(i)], now - std::chrono::hours(i < 2 ? 1 : 0));
    CHECK(store.find(ids[0]) == nullptr);  // over the bound of 3 finished jobs
    const auto expired = store.expire(now - std::chrono::minutes(30));
    CHECK(expired.job_ids == std::vector<std::string>{ids[1]});
    CHECK(flush(store));
  }
  SqliteJobStore store(dir.path(), 3);
  CHECK(store.size() == 3);
  CHECK(store.find(ids[0]) == nullptr);
  CHECK(store.find(ids[1]) == nullptr);
  CHECK(store.find(ids[2]) != nullptr);
  CHECK(store.find(ids[4]) != nullptr);  // queued: never evicted
  CHECK(store.find_key("k0") == nullptr);
  CHECK(store.find_key("k4") != nullptr);
}

TEST_CASE("sqlite store: a smaller retention bound at reopen keeps the newest-finished jobs") {
  TempDir dir;
  std::vector<std::string> ids;
  const auto now = std::chrono::system_clock::now();
  {
    SqliteJobStore store(dir.path(), 100);
    for (int i = 0; i < 4; ++i) {
      auto job = make_job();
      ids.push_back(job.id);
      store.insert(job);
    }
    // Finish in reverse creation order: the oldest-created finished last.
    for (int i = 3; i >= 0; --i) finish(store, ids[static_cast<std::size_t>(i)], now + std::chrono::seconds(3 - i));
  }
  {
    SqliteJobStore store(dir.path(), 2);
    CHECK(store.size() == 2);
    CHECK(store.find(ids[0]) != nullptr);
    CHECK(store.find(ids[1]) != nullptr);
  }
  SqliteJobStore store(dir.path(), 100);
  CHECK(store.size() == 2);  // the evicted rows were deleted, not just hidden
}

TEST_CASE("sqlite store: when_durable calls back in order, once the changes are committed") {
  TempDir dir;
  constexpr int kJobs = 2000;
  std::vector<std::string> ids;
  std::atomic<int> called{0};
  std::atomic<bool> in_order{true};
  std::promise<void> all;
  {
    SqliteJobStore store(dir.path(), 100000);
    for (int i = 0; i < kJobs; ++i) {
      auto job = make_job();
      ids.push_back(job.id);
      store.insert(job);
      store.when_durable([&, i](bool ok) {
        CHECK(ok);
        if (called.fetch_add(1) != i) in_order = false;
        if (i == kJobs - 1) all.set_value();
      });
    }
    all.get_future().wait();
    CHECK(called == kJobs);
    CHECK(in_order);
    // How many transactions carried them depends on timing (a figure, not a check): the writer
    // takes everything queued since its last commit.
    MESSAGE(kJobs, " inserts in ", store.commits(), " commits");
  }
  // Each callback promised its job on disk: a second connection sees every one.
  SqliteJobStore reopened(dir.path(), 100000);
  CHECK(reopened.size() == static_cast<std::size_t>(kJobs));
  for (const auto& id : ids) CHECK(reopened.find(id) != nullptr);
}

TEST_CASE("sqlite store: a second server on the same data directory is refused") {
  TempDir dir;
  SqliteJobStore first(dir.path(), 10);
  try {
    SqliteJobStore second(dir.path(), 10);
    FAIL("the second store opened");
  } catch (const server::StoreError& e) {
    CHECK(std::string(e.what()).find("in use by another Switchyard server (pid ") != std::string::npos);
  }
}

TEST_CASE("sqlite store: a foreign or newer database is refused, an unusable directory too") {
  TempDir dir;
  SUBCASE("foreign") {
    run_sql(dir.path() / "switchyard.db", "CREATE TABLE customers (id INTEGER);");
    CHECK_THROWS_WITH_AS(SqliteJobStore(dir.path(), 10), doctest::Contains("is not a Switchyard database"),
                         server::StoreError);
  }
  SUBCASE("newer schema") {
    { SqliteJobStore store(dir.path(), 10); }
    run_sql(dir.path() / "switchyard.db", "PRAGMA user_version=99;");
    CHECK_THROWS_WITH_AS(SqliteJobStore(dir.path(), 10), doctest::Contains("newer than this build knows"),
                         server::StoreError);
  }
  SUBCASE("directory is a file") {
    const auto file = dir.path() / "plain-file";
    { std::ofstream(file) << "x"; }
    CHECK_THROWS_WITH_AS(SqliteJobStore(file, 10), doctest::Contains("cannot create the data directory"),
                         server::StoreError);
  }
}

TEST_CASE("sqlite store: an unreadable row is skipped, the rest is served") {
  TempDir dir;
  api::Job good = make_job();
  {
    SqliteJobStore store(dir.path(), 10);
    store.insert(good);
  }
  run_sql(dir.path() / "switchyard.db",
          "INSERT INTO jobs (id, status, doc) VALUES ('00000000-0000-7000-8000-000000000001', 'queued', '{\"type\":');");
  SqliteJobStore store(dir.path(), 10);
  CHECK(store.size() == 1);
  CHECK(store.find(good.id) != nullptr);
  CHECK(store.take_unfinished() == std::vector<std::string>{good.id});
}

TEST_CASE("sqlite store: a batch and its key are one transaction") {
  TempDir dir;
  std::vector<api::Job> jobs;
  for (int i = 0; i < 50; ++i) jobs.push_back(make_job());
  {
    SqliteJobStore store(dir.path(), 100);
    store.insert_all(jobs, std::string("batch-key"), {"fp", {jobs.front().id, jobs.back().id}});
    CHECK(flush(store));
    CHECK(store.commits() == 1);  // queued under one lock: the writer takes them together
  }
  SqliteJobStore store(dir.path(), 100);
  CHECK(store.size() == jobs.size());
  REQUIRE(store.find_key("batch-key") != nullptr);
  CHECK(store.find_key("batch-key")->job_ids.size() == 2);
}
