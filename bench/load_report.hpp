#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/load_plan.hpp"

namespace bench {

/// What one load generator run does; set from the command line.
struct LoadOptions {
  std::string host = "127.0.0.1";
  std::vector<std::uint16_t> ports;  // connection i goes to ports[i % size]
  int concurrency = 16;
  int threads = 1;
  long count = 1000;
  double duration_s = 0;  // 0: no cap, `count` decides
  double deadline_s = 120;
  // job mode
  std::string type = "noop";
  std::string model = "auto";
  std::string input = "{}";
  long timeout_ms = 0;
  int batch = 0;              // 0: POST /v1/jobs; k: POST /v1/jobs:batch with k jobs
  int prefer_wait_s = 0;      // `Prefer: wait=N` on a single submit
  int poll_wait_s = 30;       // `?wait=N` on each long-poll
  bool submit_first = false;  // submit every job, then read them all (jobs in flight at once)
  bool read_last_first = false;  // with submit_first: long-poll the last job before reading the rest
  // plain mode
  std::string plain_method;
  std::string plain_path = "/healthz";
  std::string plain_body;
  int interval_ms = 0;  // pause between a connection's requests (0: closed loop, full speed)
};

/// A job status the server never changes again.
inline bool is_terminal(const std::string& status) {
  return status == "succeeded" || status == "failed" || status == "cancelled" || status == "timed_out";
}

/// The JSON report of a finished run: rates, latency percentiles, statuses, HTTP codes, and
/// "ok" (true only when every job started ended `succeeded`, or every plain request got a 2xx).
nlohmann::json make_report(const LoadOptions& options, Tally& tally, double elapsed_s,
                           std::optional<double> submit_phase_s, long connects);

}  // namespace bench
