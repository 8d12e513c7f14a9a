#include "server/dispatcher.hpp"

#include <algorithm>
#include <cmath>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <unistd.h>

#include "server/log.hpp"

namespace switchyard::server {

namespace asio = boost::asio;
using api::JobStatus;
using api::Model;
using SteadyClock = std::chrono::steady_clock;

namespace {

int model_index(Model model) { return model == Model::thread ? 0 : 1; }

double ms_between(SteadyClock::time_point from, SteadyClock::time_point to) {
  return std::chrono::duration<double, std::milli>(to - from).count();
}

/// Waits until `waiter` is signalled or `timer` expires, whichever comes first. The timer's
/// handler signals the waiter itself: cheaper than `receive || timer` (which spawns two
/// coroutines per wait), and a late signal only costs the caller one extra look.
template <class Channel>
asio::awaitable<void> receive_or_expire(const std::shared_ptr<Channel>& waiter, asio::steady_timer& timer) {
  timer.async_wait([weak = std::weak_ptr<Channel>(waiter)](boost::system::error_code error) {
    if (auto signalled = weak.lock(); signalled && !error) signalled->try_send(boost::system::error_code{});
  });
  co_await waiter->async_receive(asio::as_tuple(asio::use_awaitable));
  timer.cancel();
}

workers::ThreadOptions thread_options(const Config& config) {
  workers::ThreadOptions options;
  options.concurrency = config.thread_concurrency;
  // Blocking jobs forced onto the thread model run on threads of their own: as many as there are
  // io threads beyond the first, and at least one.
  options.blocking_slots = static_cast<std::size_t>(std::max(1, config.io_threads - 1));
  return options;
}

workers::PoolOptions pool_options(const Config& config) {
  workers::PoolOptions options;
  options.workers = config.process_workers;
  workers::WorkerOptions worker;
  worker.parent = ::getpid();
  worker.builtin.diagnostics = config.diagnostics;
  worker.builtin.http_allow = config.http_allow;
  worker.builtin.http_max_response_bytes = config.http_max_response_bytes;
  worker.builtin.http_max_timeout_ms = static_cast<int>(std::min<std::int64_t>(config.max_timeout_ms, 1 << 30));
  worker.log_format = config.log_format;
  worker.memory_mb = config.worker_memory_mb;
  worker.max_files = config.worker_max_files;
  worker.cpu_seconds = config.worker_cpu_seconds;
  worker.sandbox = config.worker_sandbox;
  worker.fail_boot = config.diagnostic_fail_worker_boot;
  options.max_rss_bytes = config.worker_max_rss_mb << 20;
  options.max_jobs = config.worker_max_jobs;
  options.max_jobs_jitter = config.worker_max_jobs_jitter;
  options.worker_args = worker_arguments(worker);
  return options;
}

/// The job's terminal status and error from how its run ended.
std::pair<JobStatus, std::optional<api::JobError>> classify(const workers::RunReport& report, Model model,
                                                             std::int64_t timeout_ms) {
  const auto& outcome = report.outcome;
  if (outcome.ok) return {JobStatus::succeeded, std::nullopt};
  auto keep_or = [&outcome](std::string_view code, std::string fallback) {
    return api::JobError{std::string(code), outcome.error_code == code ? outcome.error_message : std::move(fallback)};
  };
  switch (report.stopped) {
    case workers::StopReason::timeout:
      return {JobStatus::timed_out,
              keep_or("timeout", "the job ran longer than its timeout_ms (" + std::to_string(timeout_ms) +
                                     " ms); cancellation was delivered to its coroutine")};
    case workers::StopReason::cancel:
      if (!report.ran) return {JobStatus::cancelled, api::JobError{"cancelled", "cancelled before it started"}};
      return {JobStatus::cancelled,
              keep_or("cancelled", model == Model::thread
                                       ? "cancelled while running; cancellation was delivered to its coroutine"
                                       : "cancelled while running")};
    case workers::StopReason::shutdown:
      return {JobStatus::cancelled,
              keep_or("shutdown", report.ran ? "the server shut down while the job ran"
                                             : "the server shut down before the job started")};
    case workers::StopReason::none:
      break;
  }
  return {JobStatus::failed, api::JobError{outcome.error_code.empty() ? "handler_error" : outcome.error_code,
                                           outcome.error_message}};
}

/// A new job record for an admitted request (its input moves into the record).
api::Job new_job(api::JobRequest& request, const std::string& id, api::TimePoint now) {
  api::Job job;
  job.id = id;
  job.type = request.type->name;
  job.model = request.model;
  job.priority = request.priority;
  job.timeout_ms = request.timeout_ms;
  job.max_attempts = request.max_attempts;
  job.input = std::move(request.input);
  job.created_at = now;
  return job;
}

}  // namespace

Dispatcher::Dispatcher(asio::io_context& context, const Config& config, const workers::Catalogue& catalogue,
                       Metrics& metrics, std::unique_ptr<JobStore> store)
    : context_(context),
      config_(config),
      catalogue_(catalogue),
      metrics_(metrics),
      threads_(context, thread_options(config), *this),
      processes_(context, pool_options(config), *this),
      store_(std::move(store)),
      shared_(store_->shared()) {}

Dispatcher::~Dispatcher() {
  // The pool's thread and the blocking threads call back into this object (on_started,
  // on_finished): they stop before the members they use go. After a drain that gave up on a
  // worker, a slot may still be running.
  processes_.halt();
  threads_.halt();
}

void Dispatcher::start() {
  processes_.start();
  if (shared_ != nullptr) {
    // Leases, reclaims and the result TTL are the shared store's: only claims are ours.
    claim_wake_ = std::make_shared<Waiter>(context_, 1);
    shared_->listen([this](const SharedQueue::Notice& notice) { on_notice(notice); });
    asio::co_spawn(context_, claim_loop(), asio::detached);
    return;
  }
  recover();
  if (config_.result_ttl_s > 0) asio::co_spawn(context_, expire_loop(), asio::detached);
}

void Dispatcher::recover() {
  const auto unfinished = store_->take_unfinished();
  if (unfinished.empty()) return;
  std::size_t requeued = 0, interrupted = 0, unknown = 0;
  Runs runs;
  {
    std::lock_guard lock(mutex_);
    const auto steady_now = SteadyClock::now();
    for (const auto& id : unfinished) {
      const auto* job = store_->find(id);
      const auto frame_id = workers::parse_uuid(id);
      if (job == nullptr || !frame_id) continue;
      const auto* type = catalogue_.find(job->type);
      std::optional<api::JobError> error;
      if (type == nullptr) {
        ++unknown;
        error = api::JobError{"unknown_job_type", "job type '" + job->type +
                                                      "' is not in this server's catalogue (diagnostic types need "
                                                      "--diagnostics)"};
      } else if (job->status == JobStatus::running && job->attempts >= job->max_attempts) {
        ++interrupted;
        error = api::JobError{"interrupted", "the server stopped while the job ran (attempt " +
                                                 std::to_string(job->attempts) + " of " +
                                                 std::to_string(job->max_attempts) + ")"};
      }
      if (error) {
        // It never becomes active in this process: record its end directly.
        store_->update(id, [&error](api::Job& j) {
          j.status = JobStatus::failed;
          j.error = std::move(error);
          j.finished_at = std::chrono::system_clock::now();
        });
        store_->retire(id);
        continue;
      }
      auto run = std::make_shared<workers::Execution>(*frame_id, *type, job->input, job->priority,
                                                      std::chrono::milliseconds(job->timeout_ms));
      active_.emplace(id, Active{run, job->model, steady_now, std::nullopt});
      counters_[static_cast<std::size_t>(model_index(job->model))].submitted.fetch_add(1);
      store_->update(id, [](api::Job& j) { j.status = JobStatus::queued; });
      runs.emplace_back(std::move(run), job->model);
      ++requeued;
    }
  }
  dispatch(runs);
  log::event(spdlog::level::info, "jobs recovered from the store",
             {{"requeued", requeued}, {"failed_interrupted", interrupted}, {"failed_unknown_type", unknown}});
}

asio::awaitable<void> Dispatcher::expire_loop() {
  asio::steady_timer timer(context_);
  const auto ttl = std::chrono::duration_cast<std::chrono::system_clock::duration>(
      std::chrono::duration<double>(config_.result_ttl_s));
  for (;;) {
    timer.expires_after(std::chrono::seconds(1));
    co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
    std::lock_guard lock(mutex_);
    if (draining_) co_return;
    store_->expire(std::chrono::system_clock::now() - ttl);
  }
}

void Dispatcher::leave_for_restart_locked(const std::string& id) {
  auto active = active_.find(id);
  if (active == active_.end()) return;
  // A shared store gives the job back to the other replicas now; an embedded one keeps it for
  // the next start.
  if (shared_ != nullptr) shared_->release(id, active->second.started.has_value());
  active_.erase(active);
  ++left_for_restart_;
  // With a shared store, waiters stay registered: they re-read the database, and the NOTIFY of
  // the job's end (or the drain) wakes them.
  if (auto it = waiters_.find(id); it != waiters_.end() && shared_ == nullptr) {
    for (auto& waiter : it->second) waiter->try_send(boost::system::error_code{});
    waiters_.erase(it);
  }
}

std::shared_ptr<workers::Execution> Dispatcher::retry_locked(const std::string& id, const api::JobError& error) {
  if (draining_ || error.code != "worker_crashed") return nullptr;
  const auto* job = store_->find(id);
  auto active = active_.find(id);
  if (job == nullptr || active == active_.end() || job->attempts >= job->max_attempts) return nullptr;
  const auto& old = *active->second.run;
  auto run = std::make_shared<workers::Execution>(old.id(), old.type(), job->input, job->priority,
                                                  std::chrono::milliseconds(job->timeout_ms));
  active->second.run = run;
  active->second.started.reset();
  store_->update(id, [](api::Job& j) {
    j.status = JobStatus::queued;
    j.started_at.reset();
    j.worker_pid.reset();
  });
  log::job(spdlog::level::warn, id, "job interrupted, retrying",
           {{"error", error.code + ": " + error.message}, {"attempts", job->attempts},
            {"max_attempts", job->max_attempts}});
  return run;
}

std::size_t Dispatcher::queued(Model model) const {
  return model == Model::thread ? threads_.stats().queued : processes_.stats().queued;
}

int Dispatcher::retry_after_seconds(Model model) const {
  const double wait_s = recent_queue_wait_s_[static_cast<std::size_t>(model_index(model))].load();
  return static_cast<int>(std::clamp(std::ceil(wait_s), 1.0, 60.0));
}

asio::awaitable<api::SubmitResult> Dispatcher::submit(std::vector<api::JobRequest> requests,
                                                      const std::optional<std::string>& idempotency_key,
                                                      const std::string& fingerprint) {
  if (shared_ != nullptr) co_return co_await submit_shared(std::move(requests), idempotency_key, fingerprint);
  Runs runs;
  api::SubmitResult result;
  {
    std::lock_guard lock(mutex_);
    result = admit(requests, idempotency_key, fingerprint, runs);
  }
  using Kind = api::SubmitResult::Kind;
  if (result.kind != Kind::accepted && result.kind != Kind::replayed) co_return result;
  if (store_->durable()) {
    // A 202 promises the job survives a crash: answer only once the store has it on disk, and
    // run it only then, so that nothing runs that was not recorded.
    const bool written = co_await store_durable();
    std::unique_lock lock(mutex_);
    if (!written) {
      std::vector<Finished> ended;
      for (const auto& [run, model] : runs) {
        auto finished = finish_locked(run->id_text(), JobStatus::failed, nullptr,
                                      api::JobError{"store_unavailable", "the job store could not record the job"}, 0,
                                      std::nullopt);
        if (finished) ended.push_back(std::move(*finished));
      }
      lock.unlock();
      for (auto& finished : ended) after_finish(std::move(finished));
      result.kind = Kind::store_unavailable;
      result.retry_after_s = 5;
      result.detail = "the job store cannot write (the server log says why); nothing was accepted, retry later";
      co_return result;
    }
    if (draining_) {
      // Shutdown began while the commit ran: the jobs are recorded and run at the next start.
      for (const auto& [run, model] : runs) leave_for_restart_locked(run->id_text());
      runs.clear();
    }
  }  // executors are never called with the mutex held
  dispatch(runs);
  co_return result;
}

api::SubmitResult Dispatcher::admit(std::vector<api::JobRequest>& requests,
                                    const std::optional<std::string>& idempotency_key, const std::string& fingerprint,
                                    Runs& runs) {
  api::SubmitResult result;
  if (draining_) {
    result.kind = api::SubmitResult::Kind::draining;
    result.detail = "the server is shutting down and accepts no new jobs";
    return result;
  }
  if (idempotency_key) {
    if (const auto* record = store_->find_key(*idempotency_key)) {
      if (record->fingerprint != fingerprint) {
        result.kind = api::SubmitResult::Kind::conflict;
        result.detail = "this Idempotency-Key was used with a different request body";
        return result;
      }
      result.kind = api::SubmitResult::Kind::replayed;
      for (const auto& id : record->job_ids) {
        if (const auto* job = store_->find(id)) result.jobs.push_back(*job);
      }
      return result;
    }
  }
  std::array<std::size_t, 2> wanted{};
  for (const auto& request : requests) ++wanted[static_cast<std::size_t>(model_index(request.model))];
  if (wanted[static_cast<std::size_t>(model_index(Model::process))] > 0 && processes_.boot_failing()) {
    // Queueing would only hide the fault: say so, and let the client retry elsewhere or later.
    result.kind = api::SubmitResult::Kind::unavailable;
    result.retry_after_s = 10;
    result.detail = "no worker process is up: workers fail to boot (see the server log); retry later";
    return result;
  }
  if (queue_full(wanted, [this](Model model) { return queued(model); }, result)) return result;
  const auto now = std::chrono::system_clock::now();
  const auto steady_now = SteadyClock::now();
  IdempotencyRecord record{fingerprint, {}};
  for (auto& request : requests) {
    const auto frame_id = ids_.next();
    api::Job job = new_job(request, workers::format_uuid(frame_id), now);
    auto run = std::make_shared<workers::Execution>(frame_id, *request.type, job.input, request.priority,
                                                    std::chrono::milliseconds(request.timeout_ms));
    active_.emplace(job.id, Active{run, job.model, steady_now, std::nullopt});
    counters_[static_cast<std::size_t>(model_index(job.model))].submitted.fetch_add(1);
    metrics_.job_submitted(job.model, job.type);
    if (idempotency_key) record.job_ids.push_back(job.id);
    runs.emplace_back(std::move(run), job.model);
    result.jobs.push_back(std::move(job));
  }
  store_->insert_all(result.jobs, idempotency_key, std::move(record));
  return result;
}

bool Dispatcher::queue_full(const std::array<std::size_t, 2>& wanted,
                            const std::function<std::size_t(Model)>& queued_now, api::SubmitResult& result) const {
  for (Model model : {Model::thread, Model::process}) {
    const auto n = wanted[static_cast<std::size_t>(model_index(model))];
    if (n > 0 && queued_now(model) + n > config_.queue_limit) {
      result.kind = api::SubmitResult::Kind::queue_full;
      result.retry_after_s = retry_after_seconds(model);
      result.detail = "the " + std::string(api::to_string(model)) + " queue is full (" +
                      std::to_string(config_.queue_limit) + " jobs); retry later";
      return true;
    }
  }
  return false;
}

asio::awaitable<bool> Dispatcher::store_durable() {
  using Signal = asio::experimental::concurrent_channel<void(boost::system::error_code, bool)>;
  auto signal = std::make_shared<Signal>(co_await asio::this_coro::executor, 1);
  store_->when_durable([signal](bool written) { signal->try_send(boost::system::error_code{}, written); });
  const auto [error, written] = co_await signal->async_receive(asio::as_tuple(asio::use_awaitable));
  co_return !error && written;
}

void Dispatcher::dispatch(const Runs& runs) {
  for (const auto& [run, model] : runs) {
    if (log::enabled(spdlog::level::debug)) {
      log::job(spdlog::level::debug, run->id_text(), "job accepted",
               {{"type", run->type().name}, {"model", api::to_string(model)}});
    }
    if (model == Model::thread) threads_.submit(run);
    else processes_.submit(run);
  }
}

asio::awaitable<std::optional<api::Job>> Dispatcher::get(std::string id) {
  if (shared_ != nullptr) co_return co_await shared_->get(std::move(id));
  std::lock_guard lock(mutex_);
  const auto* job = store_->find(id);
  co_return job ? std::optional<api::Job>(*job) : std::nullopt;
}

asio::awaitable<std::optional<api::Job>> Dispatcher::wait_submitted(api::Job job, std::chrono::milliseconds max_wait) {
  if (shared_ != nullptr) co_return co_await wait_shared(job.id, max_wait, job);
  co_return co_await wait(std::move(job.id), max_wait);
}

asio::awaitable<std::optional<api::Job>> Dispatcher::wait(std::string id, std::chrono::milliseconds max_wait) {
  if (shared_ != nullptr) co_return co_await wait_shared(std::move(id), max_wait);
  auto executor = co_await asio::this_coro::executor;
  std::shared_ptr<Waiter> waiter;
  {
    std::lock_guard lock(mutex_);
    const auto* job = store_->find(id);
    if (job == nullptr) co_return std::nullopt;
    if (api::is_terminal(job->status) || max_wait.count() <= 0) co_return *job;
    waiter = std::make_shared<Waiter>(executor, 1);
    waiters_[id].push_back(waiter);
  }
  asio::steady_timer timer(executor, max_wait);
  co_await receive_or_expire(waiter, timer);
  std::lock_guard lock(mutex_);
  if (auto it = waiters_.find(id); it != waiters_.end()) {
    std::erase(it->second, waiter);
    if (it->second.empty()) waiters_.erase(it);
  }
  const auto* job = store_->find(id);
  co_return job ? std::optional<api::Job>(*job) : std::nullopt;
}

asio::awaitable<api::ListPage> Dispatcher::list(api::ListQuery query) {
  if (shared_ != nullptr) co_return co_await shared_->list_all(std::move(query));
  std::lock_guard lock(mutex_);
  co_return store_->list(query);
}

asio::awaitable<api::CancelResult> Dispatcher::cancel(std::string id) {
  if (shared_ != nullptr) co_return co_await cancel_shared(std::move(id));
  using Kind = api::CancelResult::Kind;
  api::CancelResult result;
  std::shared_ptr<workers::Execution> run;
  Model model = Model::thread;
  {
    std::lock_guard lock(mutex_);
    const auto* job = store_->find(id);
    if (job == nullptr) co_return result;
    if (api::is_terminal(job->status)) {
      result.kind = Kind::terminal;
      result.job = *job;
      co_return result;
    }
    auto active = active_.find(id);
    if (active == active_.end()) co_return result;  // not reachable: non-terminal jobs are active
    run = active->second.run;
    model = active->second.model;
  }
  auto removed = model == Model::thread ? threads_.remove_queued(id) : processes_.remove_queued(id);
  if (removed) {
    cancel_unstarted({removed}, "cancelled", "cancelled while queued");
    result.kind = Kind::dequeued;
    result.job = co_await get(id);
    co_return result;
  }
  run->request_stop(workers::StopReason::cancel);
  // A killed worker or an aborted timer ends the job within milliseconds; wait for it so the
  // answer shows the outcome. A blocking job on a thread may take longer: then it says running.
  result.job = co_await wait(id, std::chrono::milliseconds(2000));
  if (!result.job) co_return result;
  if (result.job->status == JobStatus::cancelled) {
    result.kind = !result.job->started_at ? Kind::dequeued : (model == Model::process ? Kind::killed : Kind::requested);
  } else if (api::is_terminal(result.job->status)) {
    result.kind = Kind::terminal;  // it finished on its own before the cancel reached it
  } else {
    result.kind = Kind::requested;
  }
  co_return result;
}

void Dispatcher::on_started(workers::Execution& run, std::optional<pid_t> pid) {
  const auto now = std::chrono::system_clock::now();
  const auto steady_now = SteadyClock::now();
  double queue_ms = 0;
  Model model = Model::thread;
  {
    std::lock_guard lock(mutex_);
    auto active = active_.find(run.id_text());
    if (active == active_.end()) return;
    active->second.started = steady_now;
    model = active->second.model;
    queue_ms = ms_between(active->second.created, steady_now);
    store_->update(run.id_text(), [&](api::Job& job) {
      job.status = JobStatus::running;
      job.started_at = now;
      job.attempts += 1;
      job.queue_ms = queue_ms;
      if (pid) job.worker_pid = static_cast<int>(*pid);
    });
  }
  metrics_.job_started(model, queue_ms / 1000.0);
  // An exponential moving average of queue wait, the basis of Retry-After on 429.
  auto& average = recent_queue_wait_s_[static_cast<std::size_t>(model_index(model))];
  const double previous = average.load();
  average.store(previous * 0.9 + (queue_ms / 1000.0) * 0.1);
  if (log::enabled(spdlog::level::trace)) {
    log::job(spdlog::level::trace, run.id_text(), "job started",
             pid ? nlohmann::json{{"worker_pid", *pid}} : nlohmann::json::object());
  }
}

void Dispatcher::on_finished(workers::Execution& run, workers::RunReport report) {
  std::optional<Finished> finished;
  std::shared_ptr<workers::Execution> retry;
  {
    std::lock_guard lock(mutex_);
    auto active = active_.find(run.id_text());
    if (active == active_.end() || active->second.run.get() != &run) return;  // force-finished at shutdown
    if (fenced_.erase(run.id_text()) > 0) {
      // Stopped because the leases lapsed: the database decides (attempt rule, or another
      // replica already took it over), not this replica.
      leave_for_restart_locked(run.id_text());
      return;
    }
    const auto [status, error] = classify(report, active->second.model, run.timeout().count());
    if (report.stopped == workers::StopReason::shutdown && status != JobStatus::succeeded && store_->durable()) {
      // Stopped by the shutdown, not by its own doing: a durable store keeps it for the next start,
      // which applies the attempt rule.
      leave_for_restart_locked(run.id_text());
      return;
    }
    if (status == JobStatus::failed && error) retry = retry_locked(run.id_text(), *error);
    if (!retry) {
      finished = finish_locked(run.id_text(), status,
                               status == JobStatus::succeeded ? std::move(report.outcome.result) : nlohmann::json(nullptr),
                               error, report.cpu_ms, report.worker_pid);
    }
  }
  if (retry) processes_.submit(retry);
  if (finished) after_finish(std::move(*finished));
  if (shared_ != nullptr) wake_claimer();  // room for another job
}

std::optional<Dispatcher::Finished> Dispatcher::finish_locked(const std::string& id, JobStatus status,
                                                              nlohmann::json result, std::optional<api::JobError> error,
                                                              double cpu_ms, std::optional<int> pid) {
  auto active = active_.find(id);
  if (active == active_.end()) return std::nullopt;
  const auto now = std::chrono::system_clock::now();
  const auto steady_now = SteadyClock::now();
  Finished finished;
  finished.id = id;
  finished.model = active->second.model;
  finished.status = status;
  finished.cpu_ms = cpu_ms;
  finished.error = error;
  const auto started = active->second.started;
  if (started) finished.run_ms = ms_between(*started, steady_now);
  active_.erase(active);
  store_->update(id, [&](api::Job& job) {
    finished.type = job.type;
    job.status = status;
    job.result = std::move(result);
    job.error = std::move(error);
    job.finished_at = now;
    if (started) {
      job.run_ms = finished.run_ms;
      job.cpu_ms = cpu_ms;
    }
    if (pid) job.worker_pid = static_cast<int>(*pid);
  });
  store_->retire(id);
  // With a shared store the job's end is readable only once the writer committed it: its NOTIFY
  // wakes the waiters then, on every replica.
  if (auto it = waiters_.find(id); it != waiters_.end() && shared_ == nullptr) {
    finished.waiters = std::move(it->second);
    waiters_.erase(it);
  }
  return finished;
}

void Dispatcher::after_finish(Finished finished) {
  for (auto& waiter : finished.waiters) waiter->try_send(boost::system::error_code{});
  auto& counters = counters_[static_cast<std::size_t>(model_index(finished.model))];
  switch (finished.status) {
    case JobStatus::succeeded: counters.succeeded.fetch_add(1); break;
    case JobStatus::failed: counters.failed.fetch_add(1); break;
    case JobStatus::cancelled: counters.cancelled.fetch_add(1); break;
    case JobStatus::timed_out: counters.timed_out.fetch_add(1); break;
    default: break;
  }
  metrics_.job_completed(finished.model, finished.type, finished.status, finished.run_ms / 1000.0,
                         finished.cpu_ms / 1000.0);
  const bool notable = finished.status == JobStatus::failed || finished.status == JobStatus::timed_out;
  const auto level = notable ? spdlog::level::info : spdlog::level::debug;
  if (!log::enabled(level)) return;
  nlohmann::json fields = {{"type", finished.type},
                           {"model", api::to_string(finished.model)},
                           {"status", api::to_string(finished.status)},
                           {"run_ms", std::round(finished.run_ms * 1000.0) / 1000.0}};
  if (finished.error) fields["error"] = finished.error->code + ": " + finished.error->message;
  log::job(level, finished.id, "job finished", fields);
}

void Dispatcher::cancel_unstarted(const std::vector<std::shared_ptr<workers::Execution>>& runs,
                                  const std::string& code, const std::string& message) {
  const bool shutdown = code == "shutdown";
  for (const auto& run : runs) {
    run->request_stop(shutdown ? workers::StopReason::shutdown : workers::StopReason::cancel);
    std::optional<Finished> finished;
    {
      std::lock_guard lock(mutex_);
      if (shutdown && store_->durable()) {
        leave_for_restart_locked(run->id_text());  // still queued or running in the store
        continue;
      }
      finished = finish_locked(run->id_text(), JobStatus::cancelled, nullptr, api::JobError{code, message}, 0,
                               std::nullopt);
    }
    if (finished) after_finish(std::move(*finished));
  }
}

// --- a shared store: several replicas, one queue ------------------------------------------

asio::awaitable<api::SubmitResult> Dispatcher::submit_shared(std::vector<api::JobRequest> requests,
                                                             const std::optional<std::string>& idempotency_key,
                                                             const std::string& fingerprint) {
  using Kind = api::SubmitResult::Kind;
  api::SubmitResult result;
  std::array<std::size_t, 2> wanted{};
  for (const auto& request : requests) ++wanted[static_cast<std::size_t>(model_index(request.model))];
  // Every replica's queue is the same one: its length, refreshed every second, bounds it.
  if (queue_full(wanted, [this](Model model) { return shared_->queued(model); }, result)) co_return result;
  std::vector<api::Job> jobs;
  {
    std::lock_guard lock(mutex_);
    if (draining_) {
      result.kind = Kind::draining;
      result.detail = "the server is shutting down and accepts no new jobs";
      co_return result;
    }
    const auto now = std::chrono::system_clock::now();
    for (auto& request : requests) jobs.push_back(new_job(request, workers::format_uuid(ids_.next()), now));
  }
  SharedQueue::Submitted submitted;
  try {
    submitted = co_await shared_->submit(std::move(jobs), idempotency_key, fingerprint);
  } catch (const std::exception& e) {
    log::event(spdlog::level::err, "job store could not record a submission", {{"error", e.what()}});
    submitted.kind = SharedQueue::Submitted::Kind::failed;
  }
  switch (submitted.kind) {
    case SharedQueue::Submitted::Kind::accepted:
      for (const auto& job : submitted.jobs) metrics_.job_submitted(job.model, job.type);
      result.kind = Kind::accepted;
      break;
    case SharedQueue::Submitted::Kind::replayed:
      result.kind = Kind::replayed;
      break;
    case SharedQueue::Submitted::Kind::conflict:
      result.kind = Kind::conflict;
      result.detail = "this Idempotency-Key was used with a different request body";
      break;
    case SharedQueue::Submitted::Kind::failed:
      result.kind = Kind::store_unavailable;
      result.retry_after_s = 5;
      result.detail = "the job store cannot write (the server log says why); nothing was accepted, retry later";
      break;
  }
  result.jobs = std::move(submitted.jobs);
  co_return result;
}

asio::awaitable<std::optional<api::Job>> Dispatcher::wait_shared(std::string id, std::chrono::milliseconds max_wait,
                                                                 std::optional<api::Job> known) {
  auto executor = co_await asio::this_coro::executor;
  auto waiter = std::make_shared<Waiter>(executor, 1);
  {
    // Registered before the first look: a job that ends in between still wakes it.
    std::lock_guard lock(mutex_);
    waiters_[id].push_back(waiter);
  }
  struct Unregister {
    Dispatcher* self;
    const std::string& id;
    const std::shared_ptr<Waiter>& waiter;
    ~Unregister() {
      std::lock_guard lock(self->mutex_);
      if (auto it = self->waiters_.find(id); it != self->waiters_.end()) {
        std::erase(it->second, waiter);
        if (it->second.empty()) self->waiters_.erase(it);
      }
    }
  } unregister{this, id, waiter};
  const auto deadline = SteadyClock::now() + max_wait;
  asio::steady_timer timer(executor);
  for (bool first = true;; first = false) {
    // The job as this replica committed its end, or as just submitted if no end was notified
    // since; else read (it ended elsewhere, or a notice may have been missed).
    std::optional<api::Job> job;
    bool draining = false;
    {
      std::lock_guard lock(mutex_);
      draining = draining_;
      if (auto note = finished_.find(id); note != finished_.end()) {
        job = note->second;
      } else if (first && known) {
        job = std::move(known);
      }
    }
    if (!job) job = co_await shared_->get(id);
    // At shutdown a long-poll answers with the job as it stands (another replica may run it).
    if (!job || api::is_terminal(job->status) || SteadyClock::now() >= deadline || draining) co_return job;
    // A NOTIFY wakes it when the job ends; the timer re-reads in case one was missed.
    timer.expires_at(std::min(deadline, SteadyClock::now() + std::chrono::seconds(1)));
    co_await receive_or_expire(waiter, timer);
  }
}

void Dispatcher::note_finished_locked(const SharedQueue::Notice& notice) {
  const auto now = SteadyClock::now();
  while (!finished_order_.empty() &&
         (now - finished_order_.front().first > std::chrono::seconds(2) || finished_order_.size() > 100000)) {
    finished_.erase(finished_order_.front().second);
    finished_order_.pop_front();
  }
  auto [note, added] = finished_.try_emplace(notice.id);
  if (added) finished_order_.emplace_back(now, notice.id);
  // The job only for a waiter here: it may be large, and nobody else reads it from here.
  if (notice.job && waiters_.contains(notice.id)) note->second = notice.job;
}

asio::awaitable<api::CancelResult> Dispatcher::cancel_shared(std::string id) {
  using Kind = api::CancelResult::Kind;
  api::CancelResult result;
  Model model = Model::thread;
  bool here = false;
  {
    std::lock_guard lock(mutex_);
    if (auto active = active_.find(id); active != active_.end()) {
      here = true;
      model = active->second.model;
    }
  }
  if (here && cancel_local(id)) {
    // Dequeued or stopped here; its end reaches the store through the writer.
  } else {
    auto [cancelled, job] = co_await shared_->cancel_queued(id);
    if (!job) co_return result;
    if (cancelled) {
      result.kind = Kind::dequeued;
      result.job = std::move(job);
      co_return result;
    }
    if (api::is_terminal(job->status)) {
      result.kind = Kind::terminal;
      result.job = std::move(job);
      co_return result;
    }
    model = job->model;
    co_await shared_->request_cancel(id);  // the replica running it stops it
  }
  result.job = co_await wait_shared(id, std::chrono::milliseconds(2000));
  if (!result.job) co_return result;
  if (result.job->status == JobStatus::cancelled) {
    result.kind = !result.job->started_at ? Kind::dequeued : (model == Model::process ? Kind::killed : Kind::requested);
  } else if (api::is_terminal(result.job->status)) {
    result.kind = Kind::terminal;
  } else {
    result.kind = Kind::requested;
  }
  co_return result;
}

bool Dispatcher::cancel_local(const std::string& id) {
  std::shared_ptr<workers::Execution> run;
  Model model = Model::thread;
  {
    std::lock_guard lock(mutex_);
    auto active = active_.find(id);
    if (active == active_.end()) return false;
    run = active->second.run;
    model = active->second.model;
  }
  auto removed = model == Model::thread ? threads_.remove_queued(id) : processes_.remove_queued(id);
  if (removed) {
    cancel_unstarted({removed}, "cancelled", "cancelled while queued");
  } else {
    run->request_stop(workers::StopReason::cancel);
  }
  return true;
}

void Dispatcher::on_notice(const SharedQueue::Notice& notice) {
  using NoticeKind = SharedQueue::Notice::Kind;
  switch (notice.kind) {
    case NoticeKind::finished: {
      std::lock_guard lock(mutex_);
      note_finished_locked(notice);
      if (auto it = waiters_.find(notice.id); it != waiters_.end()) {
        for (auto& waiter : it->second) waiter->try_send(boost::system::error_code{});
      }
      break;
    }
    case NoticeKind::queued:
      wake_claimer();
      break;
    case NoticeKind::cancel:
      if (cancel_local(notice.id)) {
        log::job(spdlog::level::debug, notice.id, "cancel requested by another replica", {});
      } else {
        // Perhaps claimed here a moment ago and not yet taken in: the claim loop checks.
        std::lock_guard lock(mutex_);
        const auto now = SteadyClock::now();
        std::erase_if(cancel_requests_, [now](const auto& entry) { return now - entry.second > std::chrono::seconds(10); });
        cancel_requests_.emplace(notice.id, now);
      }
      break;
    case NoticeKind::leases_lost: {
      // As at shutdown, but now: queued runs go back, running ones stop and go back (the
      // database applies the attempt rule; if another replica took a job over, nothing is written).
      std::vector<std::pair<std::shared_ptr<workers::Execution>, Model>> runs;
      {
        std::lock_guard lock(mutex_);
        for (const auto& [id, active] : active_) {
          if (!active.run) continue;
          runs.emplace_back(active.run, active.model);
          fenced_.insert(id);
        }
      }
      for (const auto& [run, model] : runs) {
        auto removed = model == Model::thread ? threads_.remove_queued(run->id_text())
                                              : processes_.remove_queued(run->id_text());
        if (removed) {
          std::lock_guard lock(mutex_);
          fenced_.erase(run->id_text());
          leave_for_restart_locked(run->id_text());
        } else {
          run->request_stop(workers::StopReason::cancel);  // SIGKILL: a job must not outlive the lease
        }
      }
      break;
    }
    case NoticeKind::reconnected: {
      std::lock_guard lock(mutex_);
      for (auto& [id, waiters] : waiters_) {
        for (auto& waiter : waiters) waiter->try_send(boost::system::error_code{});
      }
      wake_claimer();
      break;
    }
  }
}

void Dispatcher::wake_claimer() {
  if (claim_wake_) claim_wake_->try_send(boost::system::error_code{});
}

std::size_t Dispatcher::claim_room(Model model) const {
  if (model == Model::thread) {
    const auto stats = threads_.stats();
    const auto held = stats.queued + stats.running;
    return held >= config_.thread_concurrency ? 0 : config_.thread_concurrency - held;
  }
  const auto stats = processes_.stats();
  if (stats.boot_failing) return 0;  // let replicas whose workers run take them
  // Only what free workers start now: a claimed job is recorded running, so it must not wait
  // here behind a long one while another replica's worker is free.
  const auto capacity = static_cast<std::size_t>(config_.process_workers);
  const auto held = stats.queued + stats.busy;
  return held >= capacity ? 0 : capacity - held;
}

void Dispatcher::take_claimed(std::vector<api::Job> jobs, Runs& runs, std::vector<Finished>& ended) {
  const auto now = std::chrono::system_clock::now();
  const auto steady_now = SteadyClock::now();
  for (auto& job : jobs) {
    const auto frame_id = workers::parse_uuid(job.id);
    if (!frame_id) continue;
    const std::string id = job.id;
    const Model model = job.model;
    // Queue time counts from the submission, on whichever replica it was.
    const auto created = steady_now - std::chrono::duration_cast<SteadyClock::duration>(
                                          std::max(now - job.created_at, std::chrono::system_clock::duration::zero()));
    const auto* type = catalogue_.find(job.type);
    auto run = type ? std::make_shared<workers::Execution>(*frame_id, *type, job.input, job.priority,
                                                           std::chrono::milliseconds(job.timeout_ms))
                    : nullptr;
    const std::string type_name = job.type;
    store_->insert(std::move(job));
    counters_[static_cast<std::size_t>(model_index(model))].submitted.fetch_add(1);
    if (!run) {
      // Another replica accepted a type this one lacks (e.g. without --diagnostics).
      active_.emplace(id, Active{nullptr, model, created, std::nullopt});
      auto finished = finish_locked(id, JobStatus::failed, nullptr,
                                    api::JobError{"unknown_job_type", "job type '" + type_name +
                                                                          "' is not in the catalogue of the replica "
                                                                          "that claimed it"},
                                    0, std::nullopt);
      if (finished) ended.push_back(std::move(*finished));
      continue;
    }
    active_.emplace(id, Active{run, model, created, std::nullopt});
    runs.emplace_back(std::move(run), model);
  }
}

asio::awaitable<void> Dispatcher::claim_loop() {
  asio::steady_timer timer(context_);
  bool reported = false;
  for (;;) {
    {
      std::lock_guard lock(mutex_);
      if (draining_) co_return;
    }
    bool more = false;
    for (Model model : {Model::thread, Model::process}) {
      const auto room = std::min<std::size_t>(claim_room(model), 256);
      if (room == 0) continue;
      std::vector<api::Job> jobs;
      try {
        jobs = co_await shared_->claim(model, room);
        reported = false;
      } catch (const std::exception& e) {
        if (!reported) log::event(spdlog::level::err, "cannot claim jobs from the store", {{"error", e.what()}});
        reported = true;
        break;
      }
      more = more || jobs.size() == room;
      Runs runs;
      std::vector<Finished> ended;
      {
        std::lock_guard lock(mutex_);
        if (draining_) {
          // Shutdown began during the claim: give them straight back.
          for (const auto& job : jobs) shared_->release(job.id, false);
          co_return;
        }
        take_claimed(std::move(jobs), runs, ended);
      }
      dispatch(runs);
      for (auto& finished : ended) after_finish(std::move(finished));
      std::vector<std::string> to_cancel;
      {
        std::lock_guard lock(mutex_);
        for (const auto& [run, run_model] : runs) {
          if (cancel_requests_.erase(run->id_text()) > 0) to_cancel.push_back(run->id_text());
        }
      }
      for (const auto& id : to_cancel) cancel_local(id);
    }
    if (more) continue;
    // Until a NOTIFY (new jobs, or room here) or a second passes: a missed notice costs a second.
    timer.expires_after(std::chrono::seconds(1));
    co_await receive_or_expire(claim_wake_, timer);
  }
}

void Dispatcher::on_worker_restart(workers::RestartReason reason) { metrics_.worker_restarted(reason); }

asio::awaitable<void> Dispatcher::drain(std::chrono::milliseconds grace) {
  {
    std::lock_guard lock(mutex_);
    draining_ = true;
  }
  if (shared_ != nullptr) wake_claimer();  // stop claiming
  auto executor = co_await asio::this_coro::executor;
  asio::steady_timer timer(executor);
  auto active_count = [this] {
    std::lock_guard lock(mutex_);
    return active_.size();
  };
  auto pause = [&timer]() -> asio::awaitable<void> {
    timer.expires_after(std::chrono::milliseconds(20));
    co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
  };

  auto queued_runs = threads_.drain_queue();
  auto queued_processes = processes_.drain_queue();
  queued_runs.insert(queued_runs.end(), queued_processes.begin(), queued_processes.end());
  log::event(spdlog::level::info, "draining",
             {{"cancelled_queued", queued_runs.size()}, {"running", active_count() - queued_runs.size()},
              {"grace_ms", grace.count()}});
  cancel_unstarted(queued_runs, "shutdown", "the server shut down before the job started");
  processes_.close();

  const auto grace_end = SteadyClock::now() + grace;
  while (active_count() > 0 && SteadyClock::now() < grace_end) co_await pause();
  if (active_count() > 0) {
    log::event(spdlog::level::warn, "drain grace over, stopping running jobs", {{"running", active_count()}});
    threads_.stop_running(workers::StopReason::shutdown);
    processes_.terminate();
    const auto stop_end = SteadyClock::now() + std::chrono::seconds(10);
    while (active_count() > 0 && SteadyClock::now() < stop_end) co_await pause();
  }
  // Jobs that still have not ended (a blocking job that never polls its stop flag) are
  // recorded as stopped so that every accepted job has a terminal state before exit.
  std::vector<std::shared_ptr<workers::Execution>> stuck;
  {
    std::lock_guard lock(mutex_);
    for (auto& [id, active] : active_) stuck.push_back(active.run);
  }
  cancel_unstarted(stuck, "shutdown", "the server shut down while the job ran");
  const auto pool_end = SteadyClock::now() + std::chrono::seconds(10);
  while (!processes_.stopped() && SteadyClock::now() < pool_end) co_await pause();
  // Every accepted job must have a terminal state by now; the log says so, with the counts.
  std::uint64_t accepted = 0, finished = 0;
  for (const auto& c : counters_) {
    accepted += c.submitted.load();
    finished += c.succeeded.load() + c.failed.load() + c.cancelled.load() + c.timed_out.load();
  }
  std::uint64_t left = 0;
  {
    std::lock_guard lock(mutex_);
    left = left_for_restart_;
    // Long-polls on jobs of other replicas: answer them now, before the server stops.
    for (auto& [id, waiters] : waiters_) {
      for (auto& waiter : waiters) waiter->try_send(boost::system::error_code{});
    }
  }
  log::event(spdlog::level::info, "drained",
             {{"workers_left", processes_.stopped() ? 0 : 1},
              {"jobs_accepted", accepted},
              {"jobs_left_for_restart", left},
              {"jobs_not_terminal", accepted - finished - left}});
}

std::array<ModelGauges, 2> Dispatcher::gauges() const {
  const auto thread_stats = threads_.stats();
  const auto pool_stats = processes_.stats();
  std::array<ModelGauges, 2> gauges{};
  gauges[0] = ModelGauges{static_cast<double>(thread_stats.queued), static_cast<double>(thread_stats.running),
                          static_cast<double>(config_.io_threads), static_cast<double>(thread_stats.blocking)};
  gauges[1] = ModelGauges{static_cast<double>(pool_stats.queued), static_cast<double>(pool_stats.busy),
                          static_cast<double>(pool_stats.workers), static_cast<double>(pool_stats.busy)};
  if (shared_ != nullptr) {
    // Jobs wait in the shared queue, not here: report its length (the same on every replica).
    gauges[0].queued = static_cast<double>(shared_->queued(Model::thread));
    gauges[1].queued = static_cast<double>(shared_->queued(Model::process));
  }
  return gauges;
}

nlohmann::json Dispatcher::stats() const {
  const auto figures = gauges();
  nlohmann::json models = nlohmann::json::object();
  for (Model model : {Model::thread, Model::process}) {
    const auto i = static_cast<std::size_t>(model_index(model));
    const auto& c = counters_[i];
    models[std::string(api::to_string(model))] = {
        {"workers", static_cast<std::uint64_t>(figures[i].workers)},
        {"busy", static_cast<std::uint64_t>(figures[i].busy)},
        {"queued", static_cast<std::uint64_t>(figures[i].queued)},
        {"running", static_cast<std::uint64_t>(figures[i].running)},
        {"submitted", c.submitted.load()},
        {"succeeded", c.succeeded.load()},
        {"failed", c.failed.load()},
        {"cancelled", c.cancelled.load()},
        {"timed_out", c.timed_out.load()},
        {"throughput_10s", metrics_.throughput(model, 10)},
        {"throughput_1m", metrics_.throughput(model, 60)},
    };
  }
  const double uptime = std::chrono::duration<double>(SteadyClock::now() - started_at_).count();
  return {{"uptime_s", std::round(uptime * 1000.0) / 1000.0}, {"models", std::move(models)}};
}

std::string Dispatcher::metrics_text() { return metrics_.serialize(gauges()); }

api::Health Dispatcher::health() const {
  api::Health health;
  {
    std::lock_guard lock(mutex_);
    health.draining = draining_;
  }
  const auto pool = processes_.stats();
  const bool store_ok = shared_ == nullptr || shared_->healthy();
  health.ready = pool.ready && !health.draining && store_ok;
  if (pool.boot_failing) {
    health.not_ready_reason = "worker processes fail to boot (the server log says why); retrying with backoff";
  } else if (!store_ok) {
    health.not_ready_reason = "the job store cannot be reached (the server log says why)";
  }
  return health;
}

}  // namespace switchyard::server
