#include "bench/load_report.hpp"

#include <sys/resource.h>

#include <cstdio>
#include <ctime>

namespace bench {

using nlohmann::json;

namespace {

double client_cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& tv) {
    return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6;
  };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

// Seconds from one RFC 3339 UTC time with milliseconds ("2026-11-24T18:03:22.123Z") to
// another; null when either is missing or malformed.
json span_seconds(const std::string& from, const std::string& to) {
  auto epoch_ms = [](const std::string& text) -> std::optional<double> {
    std::tm tm{};
    int ms = 0;
    if (std::sscanf(text.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
                    &tm.tm_min, &tm.tm_sec, &ms) != 7) {
      return std::nullopt;
    }
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return static_cast<double>(timegm(&tm)) * 1000.0 + ms;
  };
  const auto start = epoch_ms(from);
  const auto end = epoch_ms(to);
  if (!start || !end) return nullptr;
  return (*end - *start) / 1000.0;
}

}  // namespace

json make_report(const LoadOptions& options, Tally& tally, double elapsed_s, std::optional<double> submit_phase_s,
                 long connects) {
  const bool plain = !options.plain_method.empty();
  long terminal = 0;
  long succeeded = 0;
  for (const auto& [status, n] : tally.statuses) {
    if (is_terminal(status)) terminal += n;
    if (status == "succeeded") succeeded += n;
  }
  long started = 0;
  for (const auto& [status, n] : tally.statuses) started += n;
  json out = {
      {"mode", plain ? "plain" : "jobs"},
      {"ports", options.ports},
      {"concurrency", options.concurrency},
      {"threads", options.threads},
      {"elapsed_s", elapsed_s},
      {"http",
       {{"requests", tally.requests},
        {"per_s", static_cast<double>(tally.requests) / elapsed_s},
        {"by_code", tally.http_codes},
        {"transport_errors", tally.transport_errors},
        {"aborted_connections", tally.aborted_connections},
        {"connects", connects}}},
      {"client_cpu_s", client_cpu_seconds()},
  };
  if (plain) {
    out["request"] = {{"method", options.plain_method}, {"path", options.plain_path}};
    out["latency_ms"] = {{"request", tally.submit.summary()}};
    long not_2xx = 0;
    for (const auto& [code, n] : tally.http_codes) not_2xx += code.starts_with('2') ? 0 : n;
    out["ok"] = tally.requests > 0 && not_2xx == 0 && tally.aborted_connections == 0;
    return out;
  }
  out["job"] = {{"type", options.type},
                {"model", options.model},
                {"input", json::parse(options.input)},
                {"batch", options.batch},
                {"prefer_wait_s", options.prefer_wait_s},
                {"submit_first", options.submit_first},
                {"read_last_first", options.read_last_first}};
  out["jobs"] = {{"started", started},          {"terminal", terminal},
                 {"succeeded", succeeded},      {"not_succeeded", started - succeeded},
                 {"by_status", tally.statuses}, {"per_s", static_cast<double>(terminal) / elapsed_s}};
  out["latency_ms"] = {{"submit", tally.submit.summary()}, {"end_to_end", tally.end_to_end.summary()}};
  if (submit_phase_s) out["submit_phase_s"] = *submit_phase_s;
  out["server_span_s"] = span_seconds(tally.first_created, tally.last_finished);
  out["ok"] = started > 0 && succeeded == started && tally.aborted_connections == 0;
  return out;
}

}  // namespace bench
