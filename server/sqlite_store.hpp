#pragma once

#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "server/job_store.hpp"

struct sqlite3;

namespace switchyard::server {

/// The store could not be opened or written (message says what, where and why).
class StoreError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// The embedded durable store: SQLite in WAL mode in the data directory.
///
/// Reads come from memory (a MemoryJobStore holds every retained job, as without durability);
/// every change is also queued for a writer thread that owns the SQLite connection and commits
/// what has accumulated in one transaction (group commit), so one fsync covers many jobs. A
/// change becomes durable in the order it was made; `when_durable` calls back once everything so
/// far is committed. An exclusive lock on `<data dir>/LOCK` keeps a second server away from the
/// same files: two would both recover and run the same jobs.
class SqliteJobStore final : public JobStore {
 public:
  /// Opens or creates `<data_dir>/switchyard.db`, applies schema migrations and loads the jobs.
  /// Throws StoreError if the directory is unusable, locked by another server, or the file is not
  /// a Switchyard database (or one from a newer version).
  /// `full_sync`: fsync every commit (synchronous=FULL); else synchronous=NORMAL, which in WAL
  /// mode survives a crash of the process but may lose the last commits to a power loss.
  SqliteJobStore(const std::filesystem::path& data_dir, std::size_t retain_terminal, bool full_sync = true);
  /// Commits what is queued, then closes the database.
  ~SqliteJobStore() override;

  SqliteJobStore(const SqliteJobStore&) = delete;
  SqliteJobStore& operator=(const SqliteJobStore&) = delete;

  void insert(api::Job job) override;
  void insert_all(const std::vector<api::Job>& jobs, const std::optional<std::string>& key,
                  IdempotencyRecord record) override;
  [[nodiscard]] const api::Job* find(const std::string& id) const override { return memory_.find(id); }
  bool update(const std::string& id, const std::function<void(api::Job&)>& change) override;
  Evicted retire(const std::string& id) override;
  Evicted expire(api::TimePoint cutoff) override;
  [[nodiscard]] api::ListPage list(const api::ListQuery& query) const override { return memory_.list(query); }
  [[nodiscard]] std::size_t size() const override { return memory_.size(); }
  [[nodiscard]] const IdempotencyRecord* find_key(const std::string& key) const override {
    return memory_.find_key(key);
  }
  void remember_key(const std::string& key, IdempotencyRecord record) override;

  [[nodiscard]] bool durable() const override { return true; }
  void when_durable(std::function<void(bool)> done) override;
  std::vector<std::string> take_unfinished() override;
  void observe_commits(std::function<void(double, std::size_t, bool)> observer) override;

  /// The database file.
  [[nodiscard]] const std::filesystem::path& path() const { return path_; }
  /// Transactions committed so far (a group commit counts once): for tests and metrics.
  [[nodiscard]] std::uint64_t commits() const;

 private:
  struct PutJob { api::Job job; };
  struct DropJobs { Evicted evicted; };
  struct PutKey { std::string key; IdempotencyRecord record; };
  using Change = std::variant<PutJob, DropJobs, PutKey>;
  struct Statements;  // prepared once, used by the writer thread

  void open_database(bool full_sync);
  void migrate();
  void load();
  void enqueue(Change change);
  /// Queues changes with one lock: the writer takes them into the same transaction.
  void enqueue(std::vector<Change> changes);
  void writer_loop();
  /// Writes `batch` in one transaction; false (and logs why) if it failed.
  bool commit(const std::vector<Change>& batch);
  void exec(const char* sql);

  std::filesystem::path path_;
  int lock_fd_ = -1;
  sqlite3* db_ = nullptr;
  std::unique_ptr<Statements> statements_;
  MemoryJobStore memory_;
  std::vector<std::string> unfinished_;

  mutable std::mutex queue_mutex_;
  std::condition_variable queue_changed_;
  std::vector<Change> pending_;
  std::vector<std::function<void(bool)>> waiting_;
  std::function<void(double, std::size_t, bool)> observer_;
  std::uint64_t commits_ = 0;
  bool failed_ = false;  // a commit failed: later waiters are told so until one succeeds
  bool stopping_ = false;
  std::thread writer_;
};

}  // namespace switchyard::server
