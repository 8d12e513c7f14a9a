#include "server/sqlite_store.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <system_error>
#include <unordered_set>

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/file.h>
#include <unistd.h>

#include "server/log.hpp"

namespace switchyard::server {

namespace {

/// "SWYD": marks the file as ours (PRAGMA application_id), so a foreign database is refused.
constexpr int kApplicationId = 0x53575944;

/// Schema versions, in order; entry i takes the schema from version i to i + 1 (PRAGMA user_version).
/// Append only: a released migration never changes.
constexpr const char* kMigrations[] = {
    // 1: jobs as documents (the record below) and the Idempotency-Keys.
    "CREATE TABLE jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, doc TEXT NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE idempotency_keys (key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, job_ids TEXT NOT NULL)"
    " WITHOUT ROWID;",
};
constexpr int kSchemaVersion = static_cast<int>(std::size(kMigrations));

std::int64_t to_micros(api::TimePoint time) {
  return std::chrono::duration_cast<std::chrono::microseconds>(time.time_since_epoch()).count();
}
api::TimePoint from_micros(std::int64_t micros) {
  return api::TimePoint(std::chrono::duration_cast<api::TimePoint::duration>(std::chrono::microseconds(micros)));
}

template <typename T>
std::optional<T> read_optional(const nlohmann::json& doc, const char* name) {
  auto it = doc.find(name);
  if (it == doc.end() || it->is_null()) return std::nullopt;
  return it->get<T>();
}

/// The stored form of a job: the resource's JSON (api::to_json, so a new field is stored without
/// a change here), with times as integer microseconds instead of text so that nothing is lost to
/// formatting. The id is the row's key, not part of the document.
nlohmann::json to_record(const api::Job& job) {
  nlohmann::json doc = api::to_json(job);
  doc.erase("id");
  auto micros = [](const std::optional<api::TimePoint>& time) {
    return time ? nlohmann::json(to_micros(*time)) : nlohmann::json(nullptr);
  };
  doc.erase("created_at");
  doc.erase("started_at");
  doc.erase("finished_at");
  doc["created_us"] = to_micros(job.created_at);
  doc["started_us"] = micros(job.started_at);
  doc["finished_us"] = micros(job.finished_at);
  return doc;
}

/// The job of a stored record; throws nlohmann::json::exception or std::invalid_argument if the
/// record is not one this version wrote.
api::Job from_record(std::string id, const nlohmann::json& doc) {
  api::Job job;
  job.id = std::move(id);
  job.type = doc.at("type").get<std::string>();
  const auto model = api::parse_model(doc.at("model").get<std::string>());
  const auto status = api::parse_status(doc.at("status").get<std::string>());
  if (!model || !status) throw std::invalid_argument("unknown model or status");
  job.model = *model;
  job.status = *status;
  job.priority = doc.at("priority").get<int>();
  job.timeout_ms = doc.at("timeout_ms").get<std::int64_t>();
  job.attempts = doc.at("attempts").get<int>();
  job.max_attempts = doc.value("max_attempts", 1);
  job.input = doc.at("input");
  job.result = doc.value("result", nlohmann::json(nullptr));
  job.created_at = from_micros(doc.at("created_us").get<std::int64_t>());
  if (auto us = read_optional<std::int64_t>(doc, "started_us")) job.started_at = from_micros(*us);
  if (auto us = read_optional<std::int64_t>(doc, "finished_us")) job.finished_at = from_micros(*us);
  job.queue_ms = read_optional<double>(doc, "queue_ms");
  job.run_ms = read_optional<double>(doc, "run_ms");
  job.cpu_ms = read_optional<double>(doc, "cpu_ms");
  job.worker_pid = read_optional<int>(doc, "worker_pid");
  if (auto it = doc.find("error"); it != doc.end() && !it->is_null()) {
    job.error = api::JobError{it->at("code").get<std::string>(), it->at("message").get<std::string>()};
  }
  return job;
}

/// A prepared statement, finalized when it goes out of scope.
class Statement {
 public:
  Statement(sqlite3* db, const char* sql) : db_(db) {
    if (sqlite3_prepare_v2(db, sql, -1, &statement_, nullptr) != SQLITE_OK) {
      throw StoreError(std::string("SQLite cannot prepare \"") + sql + "\": " + sqlite3_errmsg(db));
    }
  }
  ~Statement() { sqlite3_finalize(statement_); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  Statement& bind(int index, std::string_view text) {
    check(sqlite3_bind_text(statement_, index, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT));
    return *this;
  }
  /// One step: true while it yields a row.
  bool step() {
    const int rc = sqlite3_step(statement_);
    if (rc == SQLITE_ROW) return true;
    if (rc != SQLITE_DONE) check(rc);
    return false;
  }
  /// Steps to the end and makes the statement ready for new bindings.
  void run() {
    while (step()) {
    }
    sqlite3_reset(statement_);
    sqlite3_clear_bindings(statement_);
  }
  [[nodiscard]] std::string text(int column) const {
    const auto* data = sqlite3_column_text(statement_, column);
    return data ? std::string(reinterpret_cast<const char*>(data), static_cast<std::size_t>(sqlite3_column_bytes(statement_, column)))
                : std::string();
  }
  [[nodiscard]] std::int64_t integer(int column) const { return sqlite3_column_int64(statement_, column); }

 private:
  void check(int rc) const {
    if (rc != SQLITE_OK) {
      sqlite3_reset(statement_);
      throw StoreError(std::string("SQLite: ") + sqlite3_errmsg(db_));
    }
  }
  sqlite3* db_;
  sqlite3_stmt* statement_ = nullptr;
};

/// Takes an exclusive lock on `<dir>/LOCK` and writes our pid into it; throws if another process
/// holds it. The descriptor is close-on-exec, so worker processes never inherit the lock.
int lock_data_dir(const std::filesystem::path& dir) {
  const auto path = dir / "LOCK";
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) throw StoreError("cannot open " + path.string() + ": " + std::strerror(errno));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int error = errno;
    char holder[32] = {};
    const auto n = ::pread(fd, holder, sizeof holder - 1, 0);
    ::close(fd);
    if (error == EWOULDBLOCK) {
      std::string pid(holder, n > 0 ? static_cast<std::size_t>(n) : 0);
      while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
      throw StoreError("the data directory " + dir.string() + " is in use by another Switchyard server" +
                       (pid.empty() ? std::string() : " (pid " + pid + ")") +
                       "; give each server its own --data-dir");
    }
    throw StoreError("cannot lock " + path.string() + ": " + std::strerror(error));
  }
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, pid.data(), pid.size(), 0) < 0) {
    // The pid is only for the message above; the lock is what matters.
  }
  return fd;
}

}  // namespace

struct SqliteJobStore::Statements {
  explicit Statements(sqlite3* db)
      : put_job(db, "INSERT OR REPLACE INTO jobs (id, status, doc) VALUES (?1, ?2, ?3)"),
        drop_job(db, "DELETE FROM jobs WHERE id = ?1"),
        put_key(db, "INSERT OR REPLACE INTO idempotency_keys (key, fingerprint, job_ids) VALUES (?1, ?2, ?3)"),
        drop_key(db, "DELETE FROM idempotency_keys WHERE key = ?1") {}
  Statement put_job, drop_job, put_key, drop_key;
};

SqliteJobStore::SqliteJobStore(const std::filesystem::path& data_dir, std::size_t retain_terminal, bool full_sync)
    : path_(data_dir / "switchyard.db"), memory_(retain_terminal) {
  std::error_code error;
  std::filesystem::create_directories(data_dir, error);
  if (error) throw StoreError("cannot create the data directory " + data_dir.string() + ": " + error.message());
  lock_fd_ = lock_data_dir(data_dir);
  try {
    open_database(full_sync);
    migrate();
    load();
    statements_ = std::make_unique<Statements>(db_);
  } catch (...) {
    statements_.reset();
    if (db_ != nullptr) sqlite3_close(db_);
    ::close(lock_fd_);
    throw;
  }
  writer_ = std::thread([this] { writer_loop(); });
}

SqliteJobStore::~SqliteJobStore() {
  {
    std::lock_guard lock(queue_mutex_);
    stopping_ = true;
  }
  queue_changed_.notify_one();
  writer_.join();
  statements_.reset();  // finalized before the connection closes
  sqlite3_close(db_);
  ::close(lock_fd_);
}

void SqliteJobStore::exec(const char* sql) {
  char* message = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &message) != SQLITE_OK) {
    std::string what = message ? message : sqlite3_errmsg(db_);
    sqlite3_free(message);
    throw StoreError("SQLite on " + path_.string() + ": " + what);
  }
}

void SqliteJobStore::open_database(bool full_sync) {
  if (sqlite3_open_v2(path_.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                      nullptr) != SQLITE_OK) {
    const std::string what = db_ ? sqlite3_errmsg(db_) : "out of memory";
    throw StoreError("cannot open " + path_.string() + ": " + what);
  }
  sqlite3_extended_result_codes(db_, 1);
  sqlite3_busy_timeout(db_, 5000);
  // WAL: readers never block the writer; synchronous=FULL: a commit is on disk (fsync) before
  // anyone is told, which is what a 202 promises. Group commit keeps the fsyncs few.
  exec("PRAGMA journal_mode=WAL;");
  exec(full_sync ? "PRAGMA synchronous=FULL;" : "PRAGMA synchronous=NORMAL;");
}

void SqliteJobStore::migrate() {
  Statement read_ids(db_, "SELECT (SELECT application_id FROM pragma_application_id),"
                          " (SELECT user_version FROM pragma_user_version),"
                          " (SELECT count(*) FROM sqlite_schema)");
  read_ids.step();
  const auto application_id = read_ids.integer(0);
  const auto version = static_cast<int>(read_ids.integer(1));
  const auto objects = read_ids.integer(2);
  if (application_id != kApplicationId && (application_id != 0 || objects > 0)) {
    throw StoreError(path_.string() + " is not a Switchyard database; move it away or choose another --data-dir");
  }
  if (version > kSchemaVersion) {
    throw StoreError(path_.string() + " has schema version " + std::to_string(version) + ", newer than this " +
                     "build knows (" + std::to_string(kSchemaVersion) + "); run a newer Switchyard");
  }
  for (int v = version; v < kSchemaVersion; ++v) {
    // One transaction per step, so a crash mid-migration leaves the previous version intact.
    exec("BEGIN IMMEDIATE;");
    try {
      exec(kMigrations[v]);
      exec(("PRAGMA application_id=" + std::to_string(kApplicationId) + ";").c_str());
      exec(("PRAGMA user_version=" + std::to_string(v + 1) + ";").c_str());
      exec("COMMIT;");
    } catch (...) {
      sqlite3_exec(db_, "ROLLBACK;", nullptr, nullptr, nullptr);
      throw;
    }
    log::event(spdlog::level::info, "store schema migrated", {{"path", path_.string()}, {"version", v + 1}});
  }
}

void SqliteJobStore::load() {
  std::vector<api::Job> finished;
  std::size_t unreadable = 0;
  Statement jobs(db_, "SELECT id, doc FROM jobs ORDER BY id");
  while (jobs.step()) {
    auto id = jobs.text(0);
    try {
      api::Job job = from_record(id, nlohmann::json::parse(jobs.text(1)));
      if (api::is_terminal(job.status)) {
        finished.push_back(std::move(job));
      } else {
        unfinished_.push_back(job.id);
        memory_.insert(std::move(job));
      }
    } catch (const std::exception& e) {
      // Keep the row for a human to look at; serve the rest.
      ++unreadable;
      log::job(spdlog::level::err, id, "stored job unreadable, skipped", {{"error", e.what()}});
    }
  }
  // Retire in the order the jobs finished, so retention keeps the newest-finished ones.
  std::stable_sort(finished.begin(), finished.end(), [](const api::Job& a, const api::Job& b) {
    return a.finished_at.value_or(a.created_at) < b.finished_at.value_or(b.created_at);
  });
  Evicted evicted;
  for (auto& job : finished) {
    auto id = job.id;
    memory_.insert(std::move(job));
    auto gone = memory_.retire(id);
    evicted.job_ids.insert(evicted.job_ids.end(), gone.job_ids.begin(), gone.job_ids.end());
  }

  Statement keys(db_, "SELECT key, fingerprint, job_ids FROM idempotency_keys");
  while (keys.step()) {
    IdempotencyRecord record{keys.text(1), {}};
    bool complete = true;
    try {
      record.job_ids = nlohmann::json::parse(keys.text(2)).get<std::vector<std::string>>();
    } catch (const std::exception&) {
      complete = false;
    }
    for (const auto& id : record.job_ids) complete = complete && memory_.find(id) != nullptr;
    if (complete) memory_.remember_key(keys.text(0), std::move(record));
    else evicted.keys.push_back(keys.text(0));  // a replay must return every job the key made
  }
  if (!evicted.job_ids.empty() || !evicted.keys.empty()) pending_.emplace_back(DropJobs{std::move(evicted)});
  log::event(spdlog::level::info, "store opened",
             {{"path", path_.string()}, {"jobs", memory_.size()}, {"unfinished", unfinished_.size()},
              {"unreadable", unreadable}});
}

void SqliteJobStore::enqueue(Change change) {
  {
    std::lock_guard lock(queue_mutex_);
    pending_.push_back(std::move(change));
  }
  queue_changed_.notify_one();
}

void SqliteJobStore::enqueue(std::vector<Change> changes) {
  {
    std::lock_guard lock(queue_mutex_);
    for (auto& change : changes) pending_.push_back(std::move(change));
  }
  queue_changed_.notify_one();
}

void SqliteJobStore::insert_all(const std::vector<api::Job>& jobs, const std::optional<std::string>& key,
                                IdempotencyRecord record) {
  std::vector<Change> changes;
  changes.reserve(jobs.size() + 1);
  for (const auto& job : jobs) {
    memory_.insert(job);
    changes.emplace_back(PutJob{job});
  }
  if (key) {
    memory_.remember_key(*key, record);
    changes.emplace_back(PutKey{*key, std::move(record)});
  }
  enqueue(std::move(changes));
}

void SqliteJobStore::insert(api::Job job) {
  memory_.insert(job);
  enqueue(PutJob{std::move(job)});
}

bool SqliteJobStore::update(const std::string& id, const std::function<void(api::Job&)>& change) {
  if (!memory_.update(id, change)) return false;
  enqueue(PutJob{*memory_.find(id)});
  return true;
}

Evicted SqliteJobStore::retire(const std::string& id) {
  auto evicted = memory_.retire(id);
  if (!evicted.job_ids.empty()) enqueue(DropJobs{evicted});
  return evicted;
}

Evicted SqliteJobStore::expire(api::TimePoint cutoff) {
  auto evicted = memory_.expire(cutoff);
  if (!evicted.job_ids.empty()) enqueue(DropJobs{evicted});
  return evicted;
}

void SqliteJobStore::remember_key(const std::string& key, IdempotencyRecord record) {
  memory_.remember_key(key, record);
  enqueue(PutKey{key, std::move(record)});
}

void SqliteJobStore::when_durable(std::function<void(bool)> done) {
  {
    std::lock_guard lock(queue_mutex_);
    waiting_.push_back(std::move(done));
  }
  queue_changed_.notify_one();
}

std::vector<std::string> SqliteJobStore::take_unfinished() { return std::exchange(unfinished_, {}); }

void SqliteJobStore::observe_commits(std::function<void(double, std::size_t, bool)> observer) {
  std::lock_guard lock(queue_mutex_);
  observer_ = std::move(observer);
}

std::uint64_t SqliteJobStore::commits() const {
  std::lock_guard lock(queue_mutex_);
  return commits_;
}

void SqliteJobStore::writer_loop() {
  std::unique_lock lock(queue_mutex_);
  for (;;) {
    queue_changed_.wait(lock, [this] { return stopping_ || !pending_.empty() || !waiting_.empty(); });
    if (stopping_ && pending_.empty() && waiting_.empty()) return;
    // Everything queued so far goes in one transaction: the group commit.
    auto batch = std::exchange(pending_, {});
    auto waiters = std::exchange(waiting_, {});
    auto observer = observer_;
    lock.unlock();
    const auto started = std::chrono::steady_clock::now();
    const bool ok = batch.empty() || commit(batch);
    if (ok && !batch.empty()) {
      std::lock_guard count(queue_mutex_);  // counted before anyone is told it is durable
      ++commits_;
    }
    if (observer && !batch.empty()) {
      observer(std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count(), batch.size(), ok);
    }
    for (auto& done : waiters) done(ok);
    lock.lock();
    if (ok) continue;
    // Keep the changes, in order, and try again shortly (a full disk may be cleared); at
    // shutdown give up after the one more try.
    batch.insert(batch.end(), std::make_move_iterator(pending_.begin()), std::make_move_iterator(pending_.end()));
    pending_ = std::move(batch);
    if (stopping_ && failed_) {
      log::event(spdlog::level::critical, "store: changes not written at shutdown",
                 {{"path", path_.string()}, {"changes", pending_.size()}});
      return;
    }
    failed_ = true;
    queue_changed_.wait_for(lock, std::chrono::milliseconds(200), [this] { return stopping_; });
  }
}

bool SqliteJobStore::commit(const std::vector<Change>& batch) {
  try {
    exec("BEGIN IMMEDIATE;");
    auto& [put_job, drop_job, put_key, drop_key] = *statements_;
    // A job submitted, started and finished within one batch is written once, in its last state.
    std::vector<bool> superseded(batch.size(), false);
    std::unordered_set<std::string_view> later;
    for (std::size_t i = batch.size(); i-- > 0;) {
      if (const auto* put = std::get_if<PutJob>(&batch[i])) {
        superseded[i] = !later.insert(put->job.id).second;
      } else if (const auto* drop = std::get_if<DropJobs>(&batch[i])) {
        later.insert(drop->evicted.job_ids.begin(), drop->evicted.job_ids.end());
      }
    }
    for (std::size_t i = 0; i < batch.size(); ++i) {
      if (superseded[i]) continue;
      const auto& change = batch[i];
      if (const auto* put = std::get_if<PutJob>(&change)) {
        put_job.bind(1, put->job.id).bind(2, api::to_string(put->job.status)).bind(3, to_record(put->job).dump());
        put_job.run();
      } else if (const auto* drop = std::get_if<DropJobs>(&change)) {
        for (const auto& id : drop->evicted.job_ids) drop_job.bind(1, id).run();
        for (const auto& key : drop->evicted.keys) drop_key.bind(1, key).run();
      } else if (const auto* key = std::get_if<PutKey>(&change)) {
        put_key.bind(1, key->key).bind(2, key->record.fingerprint).bind(3, nlohmann::json(key->record.job_ids).dump());
        put_key.run();
      }
    }
    exec("COMMIT;");
  } catch (const std::exception& e) {
    if (sqlite3_get_autocommit(db_) == 0) sqlite3_exec(db_, "ROLLBACK;", nullptr, nullptr, nullptr);
    log::event(spdlog::level::err, "store: commit failed, retrying",
               {{"path", path_.string()}, {"changes", batch.size()}, {"error", e.what()}});
    return false;
  }
  if (failed_) log::event(spdlog::level::warn, "store: writing again", {{"path", path_.string()}});
  failed_ = false;  // only the writer thread touches it
  return true;
}

}  // namespace switchyard::server
