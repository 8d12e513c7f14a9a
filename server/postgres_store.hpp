#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include <boost/asio/thread_pool.hpp>

#include "server/job_store.hpp"
#include "server/postgres.hpp"

namespace switchyard::server {

/// Jobs in a PostgreSQL database that several replicas share (the model of Oban, River and
/// solid_queue). The database is the truth for every job:
/// - a submission is one transaction (jobs and Idempotency-Key), then NOTIFY wakes the claimers;
/// - each replica claims queued jobs for the capacity it has with FOR UPDATE SKIP LOCKED; a claim
///   counts the attempt, records the job running and gives this replica a lease on it;
/// - a heartbeat renews the leases; a replica that dies stops renewing, and after the lease
///   expires any replica requeues its jobs (attempts left) or ends them `interrupted`;
/// - the state changes of jobs this replica runs are written in order by a writer thread, only
///   while this replica still holds the lease; a job's end is NOTIFYed in the same transaction,
///   so waiters on any replica wake once it is readable;
/// - a cancel of a job that runs elsewhere is NOTIFYed to the replica that runs it.
/// Reads (get, list) query the database, so any replica answers for any job.
///
/// As a JobStore it holds the jobs this replica runs (in memory) and mirrors their changes to
/// the database; the SharedQueue side is what the dispatcher calls for everything shared.
class PostgresJobStore final : public JobStore, public SharedQueue {
 public:
  struct Options {
    std::string url;
    std::string replica_id;  ///< unique per process
    std::chrono::milliseconds lease{15000};
    double result_ttl_s = 86400;  ///< 0 = keep finished jobs
    std::size_t connections = 4;  ///< for requests (reads, submissions, claims)
  };

  /// Connects, applies the schema migrations and starts the listener, the writer and the
  /// maintenance (heartbeat, reclaim, TTL) threads. Throws PgError if the database is unusable.
  explicit PostgresJobStore(Options options);
  /// Writes what is queued, releases nothing (the dispatcher's drain released its jobs), stops.
  ~PostgresJobStore() override;

  PostgresJobStore(const PostgresJobStore&) = delete;
  PostgresJobStore& operator=(const PostgresJobStore&) = delete;

  // JobStore: the jobs this replica runs.
  void insert(api::Job job) override;
  [[nodiscard]] const api::Job* find(const std::string& id) const override { return memory_.find(id); }
  bool update(const std::string& id, const std::function<void(api::Job&)>& change) override;
  Evicted retire(const std::string& id) override;
  Evicted expire(api::TimePoint cutoff) override;
  [[nodiscard]] api::ListPage list(const api::ListQuery& query) const override { return memory_.list(query); }
  [[nodiscard]] std::size_t size() const override { return memory_.size(); }
  [[nodiscard]] const IdempotencyRecord* find_key(const std::string& /*key*/) const override { return nullptr; }
  void remember_key(const std::string& /*key*/, IdempotencyRecord /*record*/) override {}
  [[nodiscard]] bool durable() const override { return true; }
  void when_durable(std::function<void(bool)> done) override;
  void observe_commits(std::function<void(double, std::size_t, bool)> observer) override;
  SharedQueue* shared() override { return this; }

  // SharedQueue
  boost::asio::awaitable<Submitted> submit(std::vector<api::Job> jobs, std::optional<std::string> key,
                                           std::string fingerprint) override;
  boost::asio::awaitable<std::optional<api::Job>> get(std::string id) override;
  boost::asio::awaitable<api::ListPage> list_all(api::ListQuery query) override;
  boost::asio::awaitable<std::pair<bool, std::optional<api::Job>>> cancel_queued(std::string id) override;
  boost::asio::awaitable<void> request_cancel(std::string id) override;
  boost::asio::awaitable<std::vector<api::Job>> claim(api::Model model, std::size_t limit) override;
  void release(const std::string& id, bool started) override;
  void listen(std::function<void(const Notice&)> handler) override;
  [[nodiscard]] std::size_t queued(api::Model model) const override;
  [[nodiscard]] bool healthy() const override { return healthy_.load(); }
  [[nodiscard]] const std::string& replica_id() const override { return options_.replica_id; }

 private:
  struct PutJob {
    api::Job job;
  };
  struct Release {
    std::string id;
    bool started;
  };
  using Change = std::variant<PutJob, Release>;

  /// Runs `task` with a pooled connection on the request pool; the awaitable completes on the
  /// caller's executor. A broken connection is reset for the next task.
  template <class T>
  boost::asio::awaitable<T> on_pool(std::function<T(PgConnection&)> task);
  std::unique_ptr<PgConnection> take_connection();
  void give_back(std::unique_ptr<PgConnection> connection);

  void enqueue(Change change);
  void writer_loop();
  /// Writes `batch` in one transaction; false (and logs why) if it failed.
  /// Writes `batch` in one transaction; `ended` gets the terminal jobs it wrote.
  bool commit(PgConnection& connection, const std::vector<Change>& batch, std::vector<api::Job>& ended);
  /// Hands `notice` to the listening dispatcher, if any.
  void deliver(const Notice& notice);
  void listener_loop();
  void maintenance_loop();
  /// One maintenance pass: heartbeat and lease renewal, reclaim of expired leases, queued
  /// counts, result TTL.
  void maintain(PgConnection& connection, bool expire_now);

  Options options_;
  MemoryJobStore memory_;
  boost::asio::thread_pool pool_;
  std::mutex connections_mutex_;
  std::vector<std::unique_ptr<PgConnection>> connections_;

  std::mutex queue_mutex_;
  std::condition_variable queue_changed_;
  std::vector<Change> pending_;
  std::vector<std::function<void(bool)>> waiting_;
  std::function<void(double, std::size_t, bool)> observer_;
  std::function<void(const Notice&)> handler_;
  bool stopping_ = false;

  std::atomic<bool> healthy_{true};
  std::array<std::atomic<std::size_t>, 2> queued_{};
  std::atomic<bool> stop_threads_{false};
  std::thread writer_, listener_, maintenance_;
};

/// A replica id unique to this process: host name, pid and a random suffix.
std::string make_replica_id();

}  // namespace switchyard::server
