#pragma once

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

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
};

/// Jobs in memory, ordered by id (ids are time-ordered UUIDv7), with a bound on finished jobs.
class MemoryJobStore final : public JobStore {
 public:
  explicit MemoryJobStore(std::size_t retain_terminal);

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
  std::map<std::string, api::Job> jobs_;        // by id: creation order
  std::deque<std::string> finished_order_;      // terminal jobs, oldest-finished first
  std::unordered_map<std::string, IdempotencyRecord> keys_;
  std::unordered_map<std::string, std::string> key_of_job_;
};

}  // namespace switchyard::server
