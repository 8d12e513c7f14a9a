#pragma once

#include <algorithm>
#include <atomic>
#include <map>
#include <string>

#include "bench/http_connection.hpp"
#include "bench/latency.hpp"

namespace bench {

/// How many jobs (or plain requests) are left to start, shared by every worker coroutine on
/// every io thread. A run ends when the count is used up or the duration cap has passed,
/// whichever comes first. Thread-safe (one atomic counter).
class LoadPlan {
 public:
  LoadPlan(long total, Clock::time_point stop_starting_at) : left_(total), stop_starting_at_(stop_starting_at) {}

  /// Claims up to `want` units of work; 0 means stop.
  long claim(long want) {
    if (Clock::now() >= stop_starting_at_) return 0;
    long left = left_.load(std::memory_order_relaxed);
    while (left > 0) {
      const long take = std::min(left, want);
      if (left_.compare_exchange_weak(left, left - take, std::memory_order_relaxed)) return take;
    }
    return 0;
  }

 private:
  std::atomic<long> left_;
  Clock::time_point stop_starting_at_;
};

/// What one io thread counted. Not thread-safe: one per io thread, merged after they joined.
struct Tally {
  LatencyLog submit;                     // the submitting request (or every request, in plain mode)
  LatencyLog end_to_end;                 // from the submit being sent to the terminal state being read
  std::map<std::string, long> statuses;  // final outcome of every job that was started
  std::map<std::string, long> http_codes;
  long requests = 0;
  long transport_errors = 0;
  long aborted_connections = 0;  // connections whose coroutine ended by an exception
  // Earliest `created_at` and latest `finished_at` of the terminal jobs, as the server wrote
  // them (RFC 3339 with milliseconds, so they order as strings).
  std::string first_created;
  std::string last_finished;

  void count_span(const std::string& created_at, const std::string& finished_at) {
    if (!created_at.empty() && (first_created.empty() || created_at < first_created)) first_created = created_at;
    if (finished_at > last_finished) last_finished = finished_at;
  }

  void count_response(const Exchange& exchange) {
    ++requests;
    if (exchange.error) {
      ++transport_errors;
      ++http_codes["transport_error"];
    } else {
      ++http_codes[std::to_string(exchange.response.result_int())];
    }
  }

  void merge(const Tally& other) {
    submit.merge(other.submit);
    end_to_end.merge(other.end_to_end);
    for (const auto& [key, n] : other.statuses) statuses[key] += n;
    for (const auto& [key, n] : other.http_codes) http_codes[key] += n;
    requests += other.requests;
    transport_errors += other.transport_errors;
    aborted_connections += other.aborted_connections;
    count_span(other.first_created, other.last_finished);
  }
};

}  // namespace bench
