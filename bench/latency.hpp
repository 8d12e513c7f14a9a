#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <vector>

#include <nlohmann/json.hpp>

namespace bench {

/// Every latency sample of one measure, in milliseconds; percentiles are exact (sorted), which
/// a few hundred thousand samples afford. Not thread-safe: one per io thread, merged at the end.
class LatencyLog {
 public:
  void add(std::chrono::steady_clock::duration elapsed) {
    samples_.push_back(std::chrono::duration<double, std::milli>(elapsed).count());
  }

  void merge(const LatencyLog& other) { samples_.insert(samples_.end(), other.samples_.begin(), other.samples_.end()); }

  [[nodiscard]] std::size_t count() const { return samples_.size(); }

  /// {"count", "mean", "p50", "p90", "p99", "max"} in ms; all null when there is no sample.
  [[nodiscard]] nlohmann::json summary() {
    nlohmann::json out = {{"count", samples_.size()}};
    if (samples_.empty()) {
      for (const char* key : {"mean", "p50", "p90", "p99", "max"}) out[key] = nullptr;
      return out;
    }
    std::sort(samples_.begin(), samples_.end());
    double sum = 0;
    for (double sample : samples_) sum += sample;
    out["mean"] = round3(sum / static_cast<double>(samples_.size()));
    out["p50"] = round3(percentile(0.50));
    out["p90"] = round3(percentile(0.90));
    out["p99"] = round3(percentile(0.99));
    out["max"] = round3(samples_.back());
    return out;
  }

 private:
  // Nearest rank on the sorted samples.
  [[nodiscard]] double percentile(double fraction) const {
    const auto rank = static_cast<std::size_t>(std::ceil(fraction * static_cast<double>(samples_.size())));
    return samples_[std::clamp<std::size_t>(rank, 1, samples_.size()) - 1];
  }

  static double round3(double value) { return std::round(value * 1000.0) / 1000.0; }

  std::vector<double> samples_;
};

}  // namespace bench
