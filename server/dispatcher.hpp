#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/experimental/concurrent_channel.hpp>
#include <boost/asio/io_context.hpp>

#include "api/job_service.hpp"
#include "server/config.hpp"
#include "server/job_store.hpp"
#include "server/metrics.hpp"
#include "server/uuid.hpp"
#include "workers/process_pool.hpp"
#include "workers/thread_executor.hpp"

namespace switchyard::server {

/// The job service: admits jobs, routes each to its model's executor, records every state
/// change in the store, wakes waiters, feeds the metrics, and drains on shutdown.
/// Thread-safety: every public member is thread-safe. One mutex guards the store and the
/// bookkeeping; executors are never called with it held, except to read queue sizes.
class Dispatcher final : public api::JobService, public workers::ExecutionObserver {
 public:
  Dispatcher(boost::asio::io_context& context, const Config& config, const workers::Catalogue& catalogue,
             Metrics& metrics, std::unique_ptr<JobStore> store);
  ~Dispatcher() override;

  /// The io threads' contexts: thread jobs submitted from elsewhere (claims of a shared store,
  /// queued runs started on a blocking thread) start on them in turn. Call before start().
  void spread_thread_jobs(std::vector<boost::asio::io_context*> contexts) { threads_.spread_over(std::move(contexts)); }

  /// Starts the worker processes, requeues the jobs a durable store kept from the last run, and
  /// starts expiring finished jobs after their result TTL.
  void start();

  /// Shutdown: refuse new jobs, cancel queued ones, give running ones `grace`, then stop them;
  /// completes when every job is terminal and every worker process is gone.
  boost::asio::awaitable<void> drain(std::chrono::milliseconds grace);

  // api::JobService
  boost::asio::awaitable<api::SubmitResult> submit(std::vector<api::JobRequest> requests,
                                                   const std::optional<std::string>& idempotency_key,
                                                   const std::string& fingerprint) override;
  boost::asio::awaitable<std::optional<api::Job>> get(std::string id) override;
  boost::asio::awaitable<std::optional<api::Job>> wait(std::string id, std::chrono::milliseconds max_wait) override;
  boost::asio::awaitable<std::optional<api::Job>> wait_submitted(api::Job job,
                                                                 std::chrono::milliseconds max_wait) override;
  boost::asio::awaitable<api::ListPage> list(api::ListQuery query) override;
  boost::asio::awaitable<api::CancelResult> cancel(std::string id) override;
  [[nodiscard]] nlohmann::json stats() const override;
  std::string metrics_text() override;
  [[nodiscard]] api::Health health() const override;
  [[nodiscard]] const workers::Catalogue& catalogue() const override { return catalogue_; }

  // workers::ExecutionObserver
  void on_started(workers::Execution& run, std::optional<pid_t> pid) override;
  void on_finished(workers::Execution& run, workers::RunReport report) override;
  void on_worker_restart(workers::RestartReason reason) override;

 private:
  using Waiter = boost::asio::experimental::concurrent_channel<void(boost::system::error_code)>;

  struct ModelCounters {
    std::atomic<std::uint64_t> submitted{0}, succeeded{0}, failed{0}, cancelled{0}, timed_out{0};
  };

  /// What is left to do, outside the lock, after a job reached its terminal state.
  struct Finished {
    std::string id, type;
    api::Model model = api::Model::thread;
    api::JobStatus status = api::JobStatus::failed;
    double run_ms = 0, cpu_ms = 0;
    std::optional<api::JobError> error;
    std::vector<std::shared_ptr<Waiter>> waiters;
  };
  using Runs = std::vector<std::pair<std::shared_ptr<workers::Execution>, api::Model>>;
  /// Admits the requests (mutex held): the store records them and `runs` gets their runs.
  api::SubmitResult admit(std::vector<api::JobRequest>& requests, const std::optional<std::string>& idempotency_key,
                          const std::string& fingerprint, Runs& runs);
  /// True (and `result` says so) if `wanted` jobs per model would overflow a queue of the length
  /// `queued_now` gives.
  bool queue_full(const std::array<std::size_t, 2>& wanted, const std::function<std::size_t(api::Model)>& queued_now,
                  api::SubmitResult& result) const;
  /// Completes once the store has every change made so far on disk; false if writing failed.
  boost::asio::awaitable<bool> store_durable();
  /// Hands runs to their executors.
  void dispatch(const Runs& runs);
  /// Requeues or ends the jobs the store found queued or running from the last run.
  void recover();
  /// A job whose worker crashed, with attempts left: back to the queue (mutex held). Returns the
  /// new run, or nullptr if the job does not qualify.
  std::shared_ptr<workers::Execution> retry_locked(const std::string& id, const api::JobError& error);
  /// Durable stores at shutdown: the job stays queued or running in the store, for the next start
  /// (mutex held). Wakes its waiters.
  void leave_for_restart_locked(const std::string& id);
  /// Expires finished jobs past the result TTL, every second until drained.
  boost::asio::awaitable<void> expire_loop();

  // A shared store (several replicas): the store is the queue; this replica runs what it claims.
  boost::asio::awaitable<api::SubmitResult> submit_shared(std::vector<api::JobRequest> requests,
                                                          const std::optional<std::string>& idempotency_key,
                                                          const std::string& fingerprint);
  /// `known`: the job as just submitted, so that the first read is not needed.
  boost::asio::awaitable<std::optional<api::Job>> wait_shared(std::string id, std::chrono::milliseconds max_wait,
                                                              std::optional<api::Job> known = std::nullopt);
  /// Records a finished notice (mutex held), with the job if this replica committed it and
  /// someone waits for it here; entries are dropped after 2 s.
  void note_finished_locked(const SharedQueue::Notice& notice);
  boost::asio::awaitable<api::CancelResult> cancel_shared(std::string id);
  /// Claims queued jobs while this replica has room for them, until drained; wakes on notices.
  boost::asio::awaitable<void> claim_loop();
  /// Takes claimed jobs in (mutex held): they become active here. Unknown types end at once.
  void take_claimed(std::vector<api::Job> jobs, Runs& runs, std::vector<Finished>& ended);
  /// How many more jobs of `model` this replica can take now.
  [[nodiscard]] std::size_t claim_room(api::Model model) const;
  /// A notice from the shared store (listener thread).
  void on_notice(const SharedQueue::Notice& notice);
  /// Stops a job if it is active here (a cancel asked on another replica). True if it was.
  bool cancel_local(const std::string& id);
  void wake_claimer();

  /// Moves an active job to a terminal state (mutex held); nullopt if it was not active.
  std::optional<Finished> finish_locked(const std::string& id, api::JobStatus status, nlohmann::json result,
                                        std::optional<api::JobError> error, double cpu_ms, std::optional<int> pid);
  /// Wakes waiters, counts, logs.
  void after_finish(Finished finished);
  /// Cancels runs that never started (queued at shutdown or on DELETE).
  void cancel_unstarted(const std::vector<std::shared_ptr<workers::Execution>>& runs, const std::string& code,
                        const std::string& message);
  [[nodiscard]] std::size_t queued(api::Model model) const;
  [[nodiscard]] int retry_after_seconds(api::Model model) const;
  std::array<ModelGauges, 2> gauges() const;

  boost::asio::io_context& context_;
  const Config& config_;
  const workers::Catalogue& catalogue_;
  Metrics& metrics_;
  UuidV7Generator ids_;
  workers::ThreadExecutor threads_;
  workers::ProcessPool processes_;
  const std::chrono::steady_clock::time_point started_at_ = std::chrono::steady_clock::now();

  mutable std::mutex mutex_;
  std::unique_ptr<JobStore> store_;
  SharedQueue* shared_ = nullptr;         // the store's shared queue, if it has one
  std::shared_ptr<Waiter> claim_wake_;    // shared store: a poke for the claim loop
  std::unordered_set<std::string> fenced_;  // shared store: jobs stopped because the leases lapsed
  // shared store: cancels asked for jobs not active here, for a claim that is being taken in
  std::unordered_map<std::string, std::chrono::steady_clock::time_point> cancel_requests_;
  struct Active {
    std::shared_ptr<workers::Execution> run;
    api::Model model;
    std::chrono::steady_clock::time_point created;
    std::optional<std::chrono::steady_clock::time_point> started;
  };
  std::unordered_map<std::string, Active> active_;  // queued or running jobs
  std::unordered_map<std::string, std::vector<std::shared_ptr<Waiter>>> waiters_;
  // shared store: jobs whose end was notified in the last 2 s, with the job itself when this
  // replica committed it for a waiter here (no read needed), oldest first in finished_order_
  std::unordered_map<std::string, std::optional<api::Job>> finished_;
  std::deque<std::pair<std::chrono::steady_clock::time_point, std::string>> finished_order_;
  bool draining_ = false;
  std::uint64_t left_for_restart_ = 0;  // durable stores: jobs kept unfinished at shutdown

  std::array<ModelCounters, 2> counters_;
  std::array<std::atomic<double>, 2> recent_queue_wait_s_{};  // moving average, for Retry-After
};

}  // namespace switchyard::server
