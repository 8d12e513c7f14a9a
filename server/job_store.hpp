#pragma once

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <boost/asio/awaitable.hpp>

#include "api/job.hpp"
#include "api/job_service.hpp"
#include "api/requests.hpp"

namespace switchyard::server {

/// An Idempotency-Key's record: the request it was first used with and the jobs it made.
struct IdempotencyRecord {
  std::string fingerprint;
  std::vector<std::string> job_ids;
};

/// What a retention pass removed: jobs, and the Idempotency-Keys that went with them.
struct Evicted {
  std::vector<std::string> job_ids;
  std::vector<std::string> keys;
};

class SharedQueue;

/// Where jobs live. The seam for durable stores (SQLite, PostgreSQL): the dispatcher only talks
/// to this interface. Reads are served from memory in every store; a durable store also writes
/// each change to disk in the background, in order, and says when it is there (`when_durable`).
/// Thread-safety: none, except `when_durable`'s callback; the dispatcher serialises every call.
class JobStore {
 public:
  virtual ~JobStore() = default;

  /// Adds a new job (status queued).
  virtual void insert(api::Job job) = 0;
  /// Adds jobs accepted together and, with `key`, the Idempotency-Key that made them: one
  /// change, which a durable store writes in one transaction (a crash keeps all or none).
  virtual void insert_all(const std::vector<api::Job>& jobs, const std::optional<std::string>& key,
                          IdempotencyRecord record);
  /// The job, or nullptr. The pointer is valid until the next non-const call.
  [[nodiscard]] virtual const api::Job* find(const std::string& id) const = 0;
  /// Applies `change` to the job; false if it is unknown.
  virtual bool update(const std::string& id, const std::function<void(api::Job&)>& change) = 0;
  /// Records that the job reached a terminal state; evicts the oldest-finished jobs beyond the
  /// retention bound (never queued or running ones) and says which.
  virtual Evicted retire(const std::string& id) = 0;
  /// Evicts finished jobs that finished before `cutoff` (the result TTL) and says which.
  virtual Evicted expire(api::TimePoint cutoff) = 0;
  /// A page of jobs, newest first.
  [[nodiscard]] virtual api::ListPage list(const api::ListQuery& query) const = 0;
  /// Number of jobs held.
  [[nodiscard]] virtual std::size_t size() const = 0;

  /// The record of an Idempotency-Key, or nullptr.
  [[nodiscard]] virtual const IdempotencyRecord* find_key(const std::string& key) const = 0;
  /// Remembers a key for as long as any of its jobs is retained.
  virtual void remember_key(const std::string& key, IdempotencyRecord record) = 0;

  /// True if changes survive a restart (then `when_durable` may call back later).
  [[nodiscard]] virtual bool durable() const { return false; }
  /// Calls `done(true)` once every change made so far is on disk, `done(false)` if writing them
  /// failed. May call from another thread; a store that keeps nothing calls at once.
  virtual void when_durable(std::function<void(bool)> done) { done(true); }
  /// The queued and running jobs found when the store was opened (empty for a new store); the
  /// dispatcher requeues or ends them. Taken once.
  virtual std::vector<std::string> take_unfinished() { return {}; }
  /// Durable stores call `observer(seconds, changes, ok)` after each transaction, from their
  /// writer thread; for metrics.
  virtual void observe_commits(std::function<void(double, std::size_t, bool)> /*observer*/) {}
  /// A store that several replicas share (PostgreSQL), or nullptr. Then the store is the queue:
  /// the dispatcher submits, reads and cancels through it and runs only the jobs it claims, and
  /// this JobStore holds just those.
  virtual SharedQueue* shared() { return nullptr; }
};

/// The queue of a store shared by several replicas. Awaitables complete on the caller's
/// executor; every member is thread-safe.
class SharedQueue {
 public:
  virtual ~SharedQueue() = default;

  /// What a submission did.
  struct Submitted {
    enum class Kind { accepted, replayed, conflict, failed } kind = Kind::failed;
    std::vector<api::Job> jobs;  ///< accepted: as given; replayed: the key's jobs as they stand
  };
  /// What another replica, or the database, told this one.
  struct Notice {
    enum class Kind {
      finished,    ///< `id` reached a terminal state (readable now)
      queued,      ///< jobs of `model` wait to be claimed
      cancel,      ///< a client asked to cancel `id`, which may run here
      reconnected, ///< notices may have been missed: re-read what you wait for
      leases_lost, ///< the leases could not be renewed for 2/3 of their time: stop every job
                   ///< here before other replicas take them over
    } kind = Kind::queued;
    std::string id;
    api::Model model = api::Model::thread;
    /// finished: the job as this replica committed it, when it ran here (no read needed)
    std::optional<api::Job> job;
  };

  /// Records the jobs (queued) and the key in one transaction: all or none.
  virtual boost::asio::awaitable<Submitted> submit(std::vector<api::Job> jobs, std::optional<std::string> key,
                                                   std::string fingerprint) = 0;
  virtual boost::asio::awaitable<std::optional<api::Job>> get(std::string id) = 0;
  virtual boost::asio::awaitable<api::ListPage> list_all(api::ListQuery query) = 0;
  /// Cancels the job if it is queued and unclaimed. Returns whether it did, and the job as it
  /// stands after (nullopt: unknown id).
  virtual boost::asio::awaitable<std::pair<bool, std::optional<api::Job>>> cancel_queued(std::string id) = 0;
  /// Tells every replica that a client asked to cancel `id`; the one that runs it stops it.
  virtual boost::asio::awaitable<void> request_cancel(std::string id) = 0;
  /// Claims up to `limit` queued jobs of `model` for this replica, highest priority and oldest
  /// first. The database records each running with its attempt counted and this replica's lease;
  /// the jobs come back as they were before the claim (queued, attempts not yet counted), to be
  /// started here.
  virtual boost::asio::awaitable<std::vector<api::Job>> claim(api::Model model, std::size_t limit) = 0;
  /// Gives a job this replica claimed back to the queue (shutdown): one that never started gets
  /// its attempt back; one that started follows the attempt rule.
  virtual void release(const std::string& id, bool started) = 0;
  /// Where notices go (called from the listener thread). Set before jobs flow.
  virtual void listen(std::function<void(const Notice&)> handler) = 0;
  /// Queued jobs of `model` across all replicas (refreshed every second), for admission.
  [[nodiscard]] virtual std::size_t queued(api::Model model) const = 0;
  /// False while the database cannot be reached.
  [[nodiscard]] virtual bool healthy() const = 0;
  [[nodiscard]] virtual const std::string& replica_id() const = 0;
};

/// Jobs in memory, ordered by id (ids are time-ordered UUIDv7), with a bound on finished jobs.
class MemoryJobStore final : public JobStore {
 public:
  explicit MemoryJobStore(std::size_t retain_terminal);
  MemoryJobStore(const MemoryJobStore&) = delete;  // by_id_ points into jobs_
  MemoryJobStore& operator=(const MemoryJobStore&) = delete;

  void insert(api::Job job) override;
  [[nodiscard]] const api::Job* find(const std::string& id) const override;
  bool update(const std::string& id, const std::function<void(api::Job&)>& change) override;
  Evicted retire(const std::string& id) override;
  Evicted expire(api::TimePoint cutoff) override;
  [[nodiscard]] api::ListPage list(const api::ListQuery& query) const override;
  [[nodiscard]] std::size_t size() const override { return jobs_.size(); }
  [[nodiscard]] const IdempotencyRecord* find_key(const std::string& key) const override;
  void remember_key(const std::string& key, IdempotencyRecord record) override;

 private:
  /// Removes the oldest-finished job, and its key with the key's other jobs' links.
  void evict_oldest(Evicted& evicted);

  std::size_t retain_terminal_;
  std::map<std::string, api::Job> jobs_;  // by id: creation order, for listing
  // The same jobs by id, hashed, for the lookups every job makes on its way: ids are UUIDv7,
  // whose shared timestamp prefixes made each comparison in the ordered map a long memcmp.
  std::unordered_map<std::string_view, std::map<std::string, api::Job>::iterator> by_id_;
  std::deque<std::string> finished_order_;      // terminal jobs, oldest-finished first
  std::unordered_map<std::string, IdempotencyRecord> keys_;
  std::unordered_map<std::string, std::string> key_of_job_;
};

}  // namespace switchyard::server
