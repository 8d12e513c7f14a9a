#include "server/metrics.hpp"

#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>

#include <fmt/format.h>
#include <prometheus/text_serializer.h>

#include "workers/cpu_time.hpp"

namespace switchyard::server {

namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;

constexpr std::array<api::Model, 2> kModels = {api::Model::thread, api::Model::process};
constexpr std::array<api::JobStatus, 6> kStatuses = {api::JobStatus::queued,    api::JobStatus::running,
                                                     api::JobStatus::succeeded, api::JobStatus::failed,
                                                     api::JobStatus::cancelled, api::JobStatus::timed_out};
constexpr std::array<workers::RestartReason, 5> kReasons = {
    workers::RestartReason::crash, workers::RestartReason::timeout, workers::RestartReason::cancel,
    workers::RestartReason::recycle, workers::RestartReason::memory};

int index(api::Model model) { return model == api::Model::thread ? 0 : 1; }

const prometheus::Histogram::BucketBoundaries& job_buckets() {
  static const prometheus::Histogram::BucketBoundaries kBuckets = {
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300};
  return kBuckets;
}

const prometheus::Histogram::BucketBoundaries& http_buckets() {
  static const prometheus::Histogram::BucketBoundaries kBuckets = {
      0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
  return kBuckets;
}

const prometheus::Histogram::BucketBoundaries& store_buckets() {
  static const prometheus::Histogram::BucketBoundaries kBuckets = {
      0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5};
  return kBuckets;
}

double seconds_since_boot_of_process_start() {
  // Field 22 of /proc/self/stat is the start time in clock ticks after boot.
  std::ifstream stat("/proc/self/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const auto close = text.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream fields(text.substr(close + 2));
  std::string field;
  for (int i = 3; i <= 22 && fields >> field; ++i) {
    if (i == 22) return std::stod(field) / static_cast<double>(sysconf(_SC_CLK_TCK));
  }
  return 0;
}

double boot_time_seconds() {
  std::ifstream stat("/proc/stat");
  std::string key;
  while (stat >> key) {
    if (key == "btime") {
      double value = 0;
      stat >> value;
      return value;
    }
    stat.ignore(1 << 16, '\n');
  }
  return 0;
}

}  // namespace

void ThroughputWindow::record(std::chrono::steady_clock::time_point now) {
  const auto second = std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
  const auto slot = static_cast<std::size_t>(second % kBuckets);
  std::lock_guard lock(mutex_);
  if (second_[slot] != second) {
    second_[slot] = second;
    count_[slot] = 0;
  }
  ++count_[slot];
}

double ThroughputWindow::rate(int seconds, std::chrono::steady_clock::time_point now) const {
  const auto current = std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
  std::uint64_t total = 0;
  std::lock_guard lock(mutex_);
  // The last `seconds` whole seconds, plus the current partial one weighted in by dropping the
  // oldest: a window that moves every second and reads 0 soon after the work stops.
  for (int back = 0; back < seconds; ++back) {
    const auto second = current - back;
    const auto slot = static_cast<std::size_t>(((second % kBuckets) + kBuckets) % kBuckets);
    if (second_[slot] == second) total += count_[slot];
  }
  return static_cast<double>(total) / seconds;
}

Metrics::Metrics(const workers::Catalogue& catalogue)
    : registry_(std::make_shared<prometheus::Registry>()),
      submitted_(BuildCounter().Name("switchyard_jobs_submitted_total").Help("Jobs accepted, by model and type.").Register(*registry_)),
      completed_(BuildCounter().Name("switchyard_jobs_completed_total").Help("Jobs that reached a terminal state, by model, type and status.").Register(*registry_)),
      run_seconds_(BuildHistogram().Name("switchyard_job_run_seconds").Help("Wall time from start to end of a job run.").Register(*registry_)),
      queue_seconds_(BuildHistogram().Name("switchyard_job_queue_seconds").Help("Time a job waited between submission and start.").Register(*registry_)),
      cpu_seconds_(BuildCounter().Name("switchyard_job_cpu_seconds_total").Help("CPU time consumed by jobs.").Register(*registry_)),
      queued_(BuildGauge().Name("switchyard_jobs_queued").Help("Jobs waiting in a model's queue.").Register(*registry_)),
      running_(BuildGauge().Name("switchyard_jobs_running").Help("Jobs running now.").Register(*registry_)),
      workers_(BuildGauge().Name("switchyard_workers").Help("Workers of a model: io threads, or worker processes up.").Register(*registry_)),
      workers_busy_(BuildGauge().Name("switchyard_workers_busy").Help("Workers occupied by a job (a waiting coroutine occupies no thread).").Register(*registry_)),
      restarts_(BuildCounter().Name("switchyard_worker_restarts_total").Help("Worker processes replaced, by reason.").Register(*registry_)),
      throughput_(BuildGauge().Name("switchyard_throughput_jobs_per_second").Help("Completed jobs per second over a sliding window.").Register(*registry_)),
      http_requests_(BuildCounter().Name("switchyard_http_requests_total").Help("HTTP requests by method, route template and status code.").Register(*registry_)),
      http_duration_(BuildHistogram().Name("switchyard_http_request_duration_seconds").Help("HTTP request handling time by route template.").Register(*registry_)),
      store_commit_seconds_(BuildHistogram().Name("switchyard_store_commit_seconds").Help("Time of one durable store transaction (a group commit), fsync included.").Register(*registry_).Add({}, store_buckets())),
      store_changes_(BuildCounter().Name("switchyard_store_changes_total").Help("Job and key changes written by the durable store.").Register(*registry_).Add({})),
      store_commits_(BuildCounter().Name("switchyard_store_commits_total").Help("Durable store transactions by result (ok, error).").Register(*registry_)),
      store_commits_ok_(store_commits_.Add({{"result", "ok"}})),
      store_commits_failed_(store_commits_.Add({{"result", "error"}})),
      process_cpu_(BuildCounter().Name("process_cpu_seconds_total").Help("Total user and system CPU time spent in seconds.").Register(*registry_).Add({})),
      process_rss_(BuildGauge().Name("process_resident_memory_bytes").Help("Resident memory size in bytes.").Register(*registry_).Add({})),
      process_fds_(BuildGauge().Name("process_open_fds").Help("Number of open file descriptors.").Register(*registry_).Add({})),
      process_start_(BuildGauge().Name("process_start_time_seconds").Help("Start time of the process since unix epoch in seconds.").Register(*registry_).Add({})) {
  for (auto model : kModels) {
    const std::string m(api::to_string(model));
    const int i = index(model);
    queue_by_model_[i] = &queue_seconds_.Add({{"model", m}}, job_buckets());
    queued_by_model_[i] = &queued_.Add({{"model", m}});
    running_by_model_[i] = &running_.Add({{"model", m}});
    workers_by_model_[i] = &workers_.Add({{"model", m}});
    busy_by_model_[i] = &workers_busy_.Add({{"model", m}});
    rate_10s_[i] = &throughput_.Add({{"model", m}, {"window", "10s"}});
    rate_1m_[i] = &throughput_.Add({{"model", m}, {"window", "1m"}});
    for (const auto& type : catalogue.types()) {
      TypeChildren children{};
      children.submitted = &submitted_.Add({{"model", m}, {"type", type.name}});
      children.run_seconds = &run_seconds_.Add({{"model", m}, {"type", type.name}}, job_buckets());
      children.cpu_seconds = &cpu_seconds_.Add({{"model", m}, {"type", type.name}});
      for (auto status : kStatuses) {
        if (!api::is_terminal(status)) continue;
        children.completed[static_cast<std::size_t>(status)] =
            &completed_.Add({{"model", m}, {"type", type.name}, {"status", std::string(api::to_string(status))}});
      }
      by_type_.emplace(std::make_pair(i, type.name), children);
    }
  }
  for (auto reason : kReasons) {
    restarts_by_reason_[static_cast<std::size_t>(reason)] = &restarts_.Add({{"reason", std::string(workers::to_string(reason))}});
  }
  process_start_.Set(boot_time_seconds() + seconds_since_boot_of_process_start());
}

Metrics::TypeChildren* Metrics::children(api::Model model, const std::string& type) {
  auto it = by_type_.find({index(model), type});
  return it == by_type_.end() ? nullptr : &it->second;
}

void Metrics::job_submitted(api::Model model, const std::string& type) {
  if (auto* c = children(model, type)) c->submitted->Increment();
}

void Metrics::job_started(api::Model model, double queue_seconds) {
  queue_by_model_[index(model)]->Observe(queue_seconds);
}

void Metrics::job_completed(api::Model model, const std::string& type, api::JobStatus status, double run_seconds,
                            double cpu_seconds) {
  windows_[index(model)].record();
  auto* c = children(model, type);
  if (c == nullptr) return;
  if (auto* counter = c->completed[static_cast<std::size_t>(status)]) counter->Increment();
  c->run_seconds->Observe(run_seconds);
  if (cpu_seconds > 0) c->cpu_seconds->Increment(cpu_seconds);
}

void Metrics::worker_restarted(workers::RestartReason reason) {
  restarts_by_reason_[static_cast<std::size_t>(reason)]->Increment();
}

void Metrics::store_committed(double seconds, std::size_t changes, bool ok) {
  store_commit_seconds_.Observe(seconds);
  if (ok) {
    store_commits_ok_.Increment();
    store_changes_.Increment(static_cast<double>(changes));
  } else {
    store_commits_failed_.Increment();
  }
}

void Metrics::http_request(std::string_view method, std::string_view route, int code, double seconds) {
  // The label set is small and bounded (methods the router accepts x route templates x status
  // codes), never a raw path, so the children, once made, are kept here.
  std::array<char, 160> buffer{};
  const auto key_end = fmt::format_to_n(buffer.data(), buffer.size(), "{} {} {}", method, route, code);
  const bool fits = key_end.size <= buffer.size();  // always, for the router's labels
  const std::string_view key(buffer.data(), std::min(key_end.size, buffer.size()));
  prometheus::Counter* counter = nullptr;
  prometheus::Histogram* histogram = nullptr;
  if (fits) {
    std::shared_lock lock(http_mutex_);
    if (auto found = http_counters_.find(key); found != http_counters_.end()) counter = found->second;
    if (auto found = http_histograms_.find(route); found != http_histograms_.end()) histogram = found->second;
  }
  if (counter == nullptr || histogram == nullptr) {
    std::unique_lock lock(http_mutex_);
    const std::string route_label(route);
    counter =
        &http_requests_.Add({{"method", std::string(method)}, {"route", route_label}, {"code", std::to_string(code)}});
    histogram = &http_duration_.Add({{"route", route_label}}, http_buckets());
    if (fits) {
      http_counters_.emplace(key, counter);
      http_histograms_.emplace(route_label, histogram);
    }
  }
  counter->Increment();
  histogram->Observe(seconds);
}

double Metrics::throughput(api::Model model, int seconds) const { return windows_[index(model)].rate(seconds); }

void Metrics::update_process_metrics() {
  const double cpu = workers::process_cpu_ms() / 1000.0;
  if (cpu > process_cpu_seen_) {
    process_cpu_.Increment(cpu - process_cpu_seen_);
    process_cpu_seen_ = cpu;
  }
  std::ifstream statm("/proc/self/statm");
  double pages_total = 0, pages_resident = 0;
  if (statm >> pages_total >> pages_resident) process_rss_.Set(pages_resident * static_cast<double>(sysconf(_SC_PAGESIZE)));
  if (DIR* dir = opendir("/proc/self/fd")) {
    int count = 0;
    while (readdir(dir) != nullptr) ++count;
    closedir(dir);
    process_fds_.Set(count - 3);  // ".", ".." and the directory's own descriptor
  }
}

std::string Metrics::serialize(const std::array<ModelGauges, 2>& gauges) {
  {
    std::lock_guard lock(scrape_mutex_);
    update_process_metrics();
    for (int i = 0; i < 2; ++i) {
      queued_by_model_[i]->Set(gauges[i].queued);
      running_by_model_[i]->Set(gauges[i].running);
      workers_by_model_[i]->Set(gauges[i].workers);
      busy_by_model_[i]->Set(gauges[i].busy);
      rate_10s_[i]->Set(windows_[i].rate(10));
      rate_1m_[i]->Set(windows_[i].rate(60));
    }
  }
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace switchyard::server
