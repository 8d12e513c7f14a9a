#pragma once

#include <chrono>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <nlohmann/json.hpp>

#include "api/job.hpp"
#include "api/requests.hpp"
#include "workers/job_type.hpp"

namespace switchyard::api {

/// The job store cannot be reached (a shared database is down): the request did nothing, and
/// the client may retry (503 store_unavailable).
class StoreUnavailable : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// The answer to a submission.
struct SubmitResult {
  enum class Kind {
    accepted,    ///< new jobs were created
    replayed,    ///< the Idempotency-Key matched an earlier identical request: its jobs
    conflict,    ///< the Idempotency-Key was used with a different request
    queue_full,  ///< admission refused (429)
    draining,    ///< the server is shutting down (503)
    unavailable, ///< the model cannot run jobs now: its workers fail to boot (503)
    store_unavailable,  ///< the job store could not record the jobs (503); none was accepted
  };
  Kind kind = Kind::accepted;
  std::vector<Job> jobs;            ///< for accepted and replayed
  int retry_after_s = 1;            ///< for queue_full, draining and unavailable
  std::string detail;               ///< for refusals
};

/// The answer to a cancellation.
struct CancelResult {
  enum class Kind {
    dequeued,   ///< it was queued; now cancelled
    killed,     ///< it ran on a worker process, which was killed and replaced
    requested,  ///< it runs on a thread; cancellation was delivered to the coroutine
    terminal,   ///< it had already finished (409)
    not_found,
  };
  Kind kind = Kind::not_found;
  std::optional<Job> job;  ///< the job as it stands after the request
};

/// A page of GET /v1/jobs.
struct ListPage {
  std::vector<Job> jobs;
  std::optional<std::string> next_cursor;
};

/// Whether the service is up and ready.
struct Health {
  bool ready = false;
  bool draining = false;
  std::string not_ready_reason;  ///< why not ready, for the 503 detail (empty: still starting)
};

/// What the REST handlers need from the service. The server's Dispatcher implements it.
/// Thread-safety: every member is called concurrently from the io threads.
class JobService {
 public:
  virtual ~JobService() = default;

  /// Admits all `requests` or none. `fingerprint` identifies the request body for idempotency
  /// (empty without an `idempotency_key`).
  /// Completes once accepted jobs are recorded as durably as the store can (for a durable store:
  /// on disk), so that a 202 means the job will run.
  virtual boost::asio::awaitable<SubmitResult> submit(std::vector<JobRequest> requests,
                                                      const std::optional<std::string>& idempotency_key,
                                                      const std::string& fingerprint) = 0;

  /// A snapshot of one job. May throw StoreUnavailable (so may every awaitable here).
  virtual boost::asio::awaitable<std::optional<Job>> get(std::string id) = 0;

  /// Waits until the job is terminal or `max_wait` passed, then returns it (nullopt if unknown).
  virtual boost::asio::awaitable<std::optional<Job>> wait(std::string id, std::chrono::milliseconds max_wait) = 0;

  /// As wait, for `job` as this service has just accepted it: a service that would read it back
  /// first may start from it instead.
  virtual boost::asio::awaitable<std::optional<Job>> wait_submitted(Job job, std::chrono::milliseconds max_wait) {
    return wait(job.id, max_wait);
  }

  /// One page of jobs, newest first.
  virtual boost::asio::awaitable<ListPage> list(ListQuery query) = 0;

  /// Cancels a job (see CancelResult); waits briefly for a running job to reach its end.
  virtual boost::asio::awaitable<CancelResult> cancel(std::string id) = 0;

  /// The /v1/stats document.
  [[nodiscard]] virtual nlohmann::json stats() const = 0;

  /// The /metrics text (Prometheus exposition format 0.0.4).
  virtual std::string metrics_text() = 0;

  /// Readiness and drain state.
  [[nodiscard]] virtual Health health() const = 0;

  /// The job types on offer.
  [[nodiscard]] virtual const workers::Catalogue& catalogue() const = 0;
};

}  // namespace switchyard::api
