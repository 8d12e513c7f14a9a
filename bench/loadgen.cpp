// Load generator for Switchyard: many keep-alive connections driven by Beast client coroutines
// on one or a few io threads. It submits jobs (single or batch, with `Prefer: wait` or submit +
// long-poll), reads every job to its terminal state and reports one JSON object on stdout:
// rates, latency percentiles, final statuses and HTTP codes. A job that does not end
// `succeeded` is counted by its outcome and makes the exit status 1; it is never dropped.
// Plain mode hammers one method and path for a raw request rate instead. With several
// --port values (replicas of one service) the connections are spread over them round-robin.

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/http/field.hpp>
#include <boost/beast/http/verb.hpp>
#include <nlohmann/json.hpp>

#include "bench/http_connection.hpp"
#include "bench/load_plan.hpp"
#include "bench/load_report.hpp"

namespace {

namespace asio = boost::asio;
namespace http = boost::beast::http;
using bench::Clock;
using bench::Exchange;
using bench::HttpConnection;
using bench::is_terminal;
using bench::Request;
using bench::Tally;
using Options = bench::LoadOptions;
using nlohmann::json;
using std::chrono::milliseconds;

/// A job the server accepted and that is not yet known to be terminal.
struct Submitted {
  std::string id;
  Clock::time_point sent;
};

/// Everything one io thread's coroutines share; lives until its thread has joined.
struct Shard {
  asio::io_context context{1};
  std::vector<std::unique_ptr<HttpConnection>> connections;
  Tally tally;
  std::vector<Submitted> to_read;  // --submit-first: filled by phase 1, read by phase 2
  std::size_t next_to_read = 0;
};

/// The fixed parts of a run: options, plan, deadline and the request bodies built once.
class Run {
 public:
  Run(const Options& options, bench::LoadPlan& plan, Clock::time_point deadline)
      : options_(options), plan_(plan), deadline_(deadline) {
    json job = {{"type", options.type}, {"model", options.model}, {"input", json::parse(options.input)}};
    if (options.timeout_ms > 0) job["timeout_ms"] = options.timeout_ms;
    single_body_ = job.dump();
    single_request_ = post("/v1/jobs", single_body_);
    if (options.batch > 0) batch_request_ = post("/v1/jobs:batch", batch_body(options.batch));
  }

  asio::awaitable<void> jobs_worker(Shard& shard, HttpConnection& connection) {
    while (const long n = plan_.claim(std::max(options_.batch, 1))) {
      std::vector<Submitted> accepted = co_await submit(shard.tally, connection, n);
      if (options_.submit_first) {
        shard.to_read.insert(shard.to_read.end(), accepted.begin(), accepted.end());
        continue;
      }
      for (const Submitted& job : accepted) co_await read_to_end(shard.tally, connection, job);
    }
  }

  asio::awaitable<void> read_worker(Shard& shard, HttpConnection& connection) {
    while (shard.next_to_read < shard.to_read.size()) {
      const Submitted job = shard.to_read[shard.next_to_read++];
      co_await read_to_end(shard.tally, connection, job);
    }
  }

  asio::awaitable<void> plain_worker(Shard& shard, HttpConnection& connection) {
    Request request{http::string_to_verb(options_.plain_method), options_.plain_path, 11};
    request.set(http::field::host, options_.host);
    if (!options_.plain_body.empty()) {
      request.set(http::field::content_type, "application/json");
      request.body() = options_.plain_body;
    }
    request.prepare_payload();
    asio::steady_timer pause(shard.context);
    while (plan_.claim(1) > 0) {
      const Exchange exchange = co_await connection.exchange(request, request_timeout(0));
      shard.tally.count_response(exchange);
      if (!exchange.error) shard.tally.submit.add(exchange.elapsed);
      if (options_.interval_ms > 0) {
        pause.expires_after(milliseconds{options_.interval_ms});
        co_await pause.async_wait(asio::as_tuple(asio::use_awaitable));
      }
    }
  }

 private:
  const Request& tail_request(long n) {
    tail_request_ = post("/v1/jobs:batch", batch_body(n));
    return *tail_request_;
  }

  [[nodiscard]] std::string batch_body(long n) const {
    std::string body = R"({"jobs":[)";
    for (long i = 0; i < n; ++i) body += (i == 0 ? "" : ",") + single_body_;
    return body + "]}";
  }

  // Long enough for the server's wait plus a margin, never past the run's deadline.
  [[nodiscard]] milliseconds request_timeout(int server_wait_s) const {
    const auto left = std::chrono::duration_cast<milliseconds>(deadline_ - Clock::now());
    return std::max(milliseconds{1}, std::min(left, milliseconds{(server_wait_s + 30) * 1000}));
  }

  [[nodiscard]] Request post(std::string_view target, std::string body) const {
    Request request{http::verb::post, target, 11};
    request.set(http::field::host, options_.host);
    request.set(http::field::content_type, "application/json");
    if (options_.prefer_wait_s > 0 && options_.batch == 0) {
      request.set("Prefer", "wait=" + std::to_string(options_.prefer_wait_s));
    }
    request.body() = std::move(body);
    request.prepare_payload();
    return request;
  }

  // Submits `n` jobs in one request. Jobs that came back terminal (a `Prefer: wait`) are
  // recorded here; the others are returned to be read.
  asio::awaitable<std::vector<Submitted>> submit(Tally& tally, HttpConnection& connection, long n) {
    const bool batch = options_.batch > 0;
    // Built once per run: the client's CPU comes out of the same cores as the server's.
    const Request& request = !batch ? single_request_ : n == options_.batch ? batch_request_ : tail_request(n);
    const auto sent = Clock::now();
    const Exchange exchange = co_await connection.exchange(request, request_timeout(options_.prefer_wait_s));
    tally.count_response(exchange);
    std::vector<Submitted> accepted;
    const unsigned code = exchange.error ? 0 : exchange.response.result_int();
    if (code != 200 && code != 202) {
      tally.statuses[exchange.error ? "lost" : "not_admitted"] += n;
      co_return accepted;
    }
    tally.submit.add(exchange.elapsed);
    const json body = json::parse(exchange.response.body(), nullptr, false);
    const json* jobs = &body;
    if (batch && body.is_object()) {
      const auto found = body.find("jobs");
      jobs = found != body.end() ? &*found : nullptr;
    }
    const bool well_formed =
        jobs != nullptr && (batch ? jobs->is_array() && std::ssize(*jobs) == n : jobs->is_object());
    if (!well_formed) {
      tally.statuses["lost"] += n;
      co_return accepted;
    }
    auto take = [&](const json& job) {
      const std::string status = job.value("status", "");
      if (is_terminal(status)) {
        finish(tally, job, sent);
      } else {
        accepted.push_back({job.value("id", ""), sent});
      }
    };
    if (batch) {
      for (const json& job : *jobs) take(job);
    } else {
      take(*jobs);
    }
    co_return accepted;
  }

  // Long-polls one job until it is terminal or the run's deadline has passed.
  asio::awaitable<void> read_to_end(Tally& tally, HttpConnection& connection, const Submitted& job) {
    Request request{http::verb::get, "/v1/jobs/" + job.id + "?wait=" + std::to_string(options_.poll_wait_s), 11};
    request.set(http::field::host, options_.host);
    while (Clock::now() < deadline_) {
      const Exchange exchange = co_await connection.exchange(request, request_timeout(options_.poll_wait_s));
      tally.count_response(exchange);
      if (exchange.error || exchange.response.result_int() != 200) {
        tally.statuses[exchange.error ? "lost" : "unreadable"] += 1;
        co_return;
      }
      const json body = json::parse(exchange.response.body(), nullptr, false);
      const std::string status = body.is_object() ? body.value("status", "") : "";
      if (is_terminal(status)) {
        finish(tally, body, job.sent);
        co_return;
      }
    }
    tally.statuses["unfinished"] += 1;
  }

  static void finish(Tally& tally, const json& job, Clock::time_point sent) {
    tally.end_to_end.add(Clock::now() - sent);
    tally.statuses[job.value("status", "")] += 1;
    auto text = [&](const char* key) {
      const auto found = job.find(key);
      return found != job.end() && found->is_string() ? found->get<std::string>() : std::string{};
    };
    tally.count_span(text("created_at"), text("finished_at"));
  }

  const Options& options_;
  bench::LoadPlan& plan_;
  Clock::time_point deadline_;
  std::string single_body_;
  Request single_request_;
  Request batch_request_;
  std::optional<Request> tail_request_;  // the last, shorter batch
};

using Worker = asio::awaitable<void> (Run::*)(Shard&, HttpConnection&);

// Runs `worker` on every connection of every shard, one io thread per shard, until all end.
void run_phase(std::vector<std::unique_ptr<Shard>>& shards, Run& run, Worker worker) {
  std::vector<std::thread> threads;
  for (auto& shard : shards) {
    shard->context.restart();
    for (auto& connection : shard->connections) {
      // A connection whose coroutine throws stops: it is counted and said, and the run is not ok.
      asio::co_spawn(shard->context, (run.*worker)(*shard, *connection),
                     [connection = connection.get(), &tally = shard->tally](const std::exception_ptr& error) {
                       connection->idle();
                       if (!error) return;
                       ++tally.aborted_connections;
                       try {
                         std::rethrow_exception(error);
                       } catch (const std::exception& e) {
                         std::fprintf(stderr, "switchyard_loadgen: a connection stopped: %s\n", e.what());
                       } catch (...) {
                         std::fprintf(stderr, "switchyard_loadgen: a connection stopped by an unknown exception\n");
                       }
                     });
    }
    threads.emplace_back([&context = shard->context] { context.run(); });
  }
  for (auto& thread : threads) thread.join();
}

double seconds_between(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

void add_options(CLI::App& app, Options& options) {
  app.add_option("--host", options.host, "server address (loopback only)")->check(CLI::IsMember({"127.0.0.1"}));
  app.add_option("--port", options.ports, "server port; several (--port A,B or --port A --port B): connections "
                 "spread over them round-robin")
      ->required()
      ->delimiter(',')
      ->check(CLI::Range(1, 65535));
  app.add_option("-c,--concurrency", options.concurrency, "connections, each one request at a time")
      ->check(CLI::Range(1, 20000));
  app.add_option("--threads", options.threads, "io threads (each with its own io_context)")->check(CLI::Range(1, 8));
  app.add_option("-n,--count", options.count, "jobs (or plain requests) to start")->check(CLI::Range(1L, 10'000'000L));
  app.add_option("-d,--duration", options.duration_s, "stop starting new work after S seconds (0: no cap)")
      ->check(CLI::Range(0.0, 3600.0));
  app.add_option("--deadline", options.deadline_s, "hard bound on the whole run in seconds")
      ->check(CLI::Range(1.0, 3600.0));
  app.add_option("--type", options.type, "job type");
  app.add_option("--model", options.model, "auto, thread or process")
      ->check(CLI::IsMember({"auto", "thread", "process"}));
  app.add_option("--input", options.input, "job input as JSON")->check([](const std::string& text) {
    return json::accept(text) ? std::string{} : std::string{"--input is not JSON"};
  });
  app.add_option("--timeout-ms", options.timeout_ms, "job timeout_ms (0: the server's default)");
  app.add_option("--batch", options.batch, "submit K jobs per POST /v1/jobs:batch (0: single POST /v1/jobs)")
      ->check(CLI::Range(0, 1000));
  app.add_option("--prefer-wait", options.prefer_wait_s, "Prefer: wait=N seconds on single submits (0: none)")
      ->check(CLI::Range(0, 3600));
  app.add_option("--poll-wait", options.poll_wait_s, "?wait=N seconds on each long-poll")->check(CLI::Range(1, 3600));
  app.add_flag("--submit-first", options.submit_first, "submit every job first, then read them all");
  app.add_flag("--read-last-first", options.read_last_first,
               "with --submit-first: each connection reads the last job it submitted first (a long-poll), "
               "then the rest, so that with -c 1 no read competes with the jobs for the CPU")
      ->needs("--submit-first");
  app.add_option("--plain", options.plain_method, "plain mode: hammer this method (GET, POST) on --path")
      ->check(CLI::IsMember({"GET", "POST"}));
  app.add_option("--path", options.plain_path, "plain mode: target");
  app.add_option("--body", options.plain_body, "plain mode: JSON body");
  app.add_option("--interval-ms", options.interval_ms, "plain mode: pause between a connection's requests (a probe)")
      ->check(CLI::Range(0, 60'000));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Switchyard load generator: prints one JSON report; exit 1 if any job did not succeed"};
  Options options;
  add_options(app, options);
  CLI11_PARSE(app, argc, argv);

  std::vector<std::unique_ptr<Shard>> shards;
  for (int i = 0; i < options.threads; ++i) shards.push_back(std::make_unique<Shard>());
  const auto address = asio::ip::make_address(options.host);
  const auto targets = std::ssize(options.ports);
  for (int i = 0; i < options.concurrency; ++i) {
    Shard& shard = *shards[i % options.threads];
    const asio::ip::tcp::endpoint endpoint(address, options.ports[i % targets]);
    shard.connections.push_back(std::make_unique<HttpConnection>(shard.context.get_executor(), endpoint));
  }

  const auto start = Clock::now();
  const auto stop_starting_at =
      options.duration_s > 0
          ? start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options.duration_s))
          : Clock::time_point::max();
  const auto deadline =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options.deadline_s));
  bench::LoadPlan plan(options.count, std::min(stop_starting_at, deadline));
  Run run(options, plan, deadline);

  std::optional<double> submit_phase_s;
  if (!options.plain_method.empty()) {
    run_phase(shards, run, &Run::plain_worker);
  } else {
    run_phase(shards, run, &Run::jobs_worker);
    if (options.submit_first) {
      submit_phase_s = seconds_between(start, Clock::now());
      if (options.read_last_first) {
        for (auto& shard : shards) {
          // FIFO: the last job queued ends last (give or take one per worker).
          if (!shard->to_read.empty())
            std::rotate(shard->to_read.begin(), shard->to_read.end() - 1, shard->to_read.end());
        }
      }
      run_phase(shards, run, &Run::read_worker);
    }
  }
  const double elapsed_s = seconds_between(start, Clock::now());

  Tally total;
  long connects = 0;
  for (auto& shard : shards) {
    total.merge(shard->tally);
    for (auto& connection : shard->connections) connects += connection->connects();
  }
  const json out = bench::make_report(options, total, elapsed_s, submit_phase_s, connects);
  std::cout << out.dump() << '\n';
  return out["ok"].get<bool>() ? 0 : 1;
}
