#pragma once

#include <array>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "api/job.hpp"
#include "workers/execution.hpp"
#include "workers/job_type.hpp"

namespace switchyard::server {

/// Per-model figures sampled at scrape time.
struct ModelGauges {
  double queued = 0, running = 0, workers = 0, busy = 0;
};

/// Completed jobs per second over sliding windows, one-second buckets.
/// Thread-safety: all members are thread-safe.
class ThroughputWindow {
 public:
  /// Counts one completion now.
  void record(std::chrono::steady_clock::time_point now = std::chrono::steady_clock::now());
  /// Completions per second over the last `seconds` (1..60).
  [[nodiscard]] double rate(int seconds, std::chrono::steady_clock::time_point now = std::chrono::steady_clock::now()) const;

 private:
  static constexpr int kBuckets = 61;
  mutable std::mutex mutex_;
  std::array<std::int64_t, kBuckets> second_{};  // which absolute second each bucket holds
  std::array<std::uint64_t, kBuckets> count_{};
};

/// The Prometheus metrics of API.md. Families and the per-(model, type) children are built once
/// in the constructor; the hot path only increments references.
/// Thread-safety: all members are thread-safe (prometheus-cpp metrics are atomic; the few maps
/// here are immutable after construction or guarded).
class Metrics {
 public:
  /// Builds every family and the children for each known job type.
  explicit Metrics(const workers::Catalogue& catalogue);

  void job_submitted(api::Model model, const std::string& type);
  void job_started(api::Model model, double queue_seconds);
  void job_completed(api::Model model, const std::string& type, api::JobStatus status, double run_seconds,
                     double cpu_seconds);
  void worker_restarted(workers::RestartReason reason);
  void http_request(std::string_view method, std::string_view route, int code, double seconds);
  /// A durable store's transaction: how long it took (fsync included), the changes it wrote, whether it committed.
  void store_committed(double seconds, std::size_t changes, bool ok);

  /// Completed jobs per second for `model` over the last `seconds`.
  [[nodiscard]] double throughput(api::Model model, int seconds) const;

  /// The exposition text; `gauges` are the per-model figures sampled now.
  std::string serialize(const std::array<ModelGauges, 2>& gauges);

 private:
  struct TypeChildren {
    prometheus::Counter* submitted;
    prometheus::Histogram* run_seconds;
    prometheus::Counter* cpu_seconds;
    std::array<prometheus::Counter*, 6> completed{};  // by JobStatus
  };
  TypeChildren* children(api::Model model, const std::string& type);
  void update_process_metrics();

  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& submitted_;
  prometheus::Family<prometheus::Counter>& completed_;
  prometheus::Family<prometheus::Histogram>& run_seconds_;
  prometheus::Family<prometheus::Histogram>& queue_seconds_;
  prometheus::Family<prometheus::Counter>& cpu_seconds_;
  prometheus::Family<prometheus::Gauge>& queued_;
  prometheus::Family<prometheus::Gauge>& running_;
  prometheus::Family<prometheus::Gauge>& workers_;
  prometheus::Family<prometheus::Gauge>& workers_busy_;
  prometheus::Family<prometheus::Counter>& restarts_;
  prometheus::Family<prometheus::Gauge>& throughput_;
  prometheus::Family<prometheus::Counter>& http_requests_;
  prometheus::Family<prometheus::Histogram>& http_duration_;
  prometheus::Histogram& store_commit_seconds_;
  prometheus::Counter& store_changes_;
  prometheus::Family<prometheus::Counter>& store_commits_;
  prometheus::Counter& store_commits_ok_;
  prometheus::Counter& store_commits_failed_;
  prometheus::Counter& process_cpu_;
  prometheus::Gauge& process_rss_;
  prometheus::Gauge& process_fds_;
  prometheus::Gauge& process_start_;

  std::map<std::pair<int, std::string>, TypeChildren> by_type_;  // immutable after construction
  std::array<prometheus::Histogram*, 2> queue_by_model_{};
  std::array<prometheus::Gauge*, 2> queued_by_model_{}, running_by_model_{}, workers_by_model_{}, busy_by_model_{};
  std::array<prometheus::Gauge*, 2> rate_10s_{}, rate_1m_{};
  std::array<prometheus::Counter*, 5> restarts_by_reason_{};
  std::array<ThroughputWindow, 2> windows_;

  // The HTTP children by "method route code" and by route, so that a request looks its children
  // up without building label maps (Family::Add) or allocating; filled on first use.
  struct StringHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view text) const { return std::hash<std::string_view>{}(text); }
  };
  template <class T>
  using ByName = std::unordered_map<std::string, T*, StringHash, std::equal_to<>>;
  std::shared_mutex http_mutex_;
  ByName<prometheus::Counter> http_counters_;
  ByName<prometheus::Histogram> http_histograms_;

  std::mutex scrape_mutex_;        // one scrape at a time updates the sampled values
  double process_cpu_seen_ = 0;    // what process_cpu_ has been incremented to
};

}  // namespace switchyard::server
