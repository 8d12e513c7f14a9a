#include "server/postgres_store.hpp"

#include <poll.h>
#include <unistd.h>
#include <algorithm>
#include <random>
#include <string_view>
#include <unordered_set>

#include <libpq-fe.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "api/job_service.hpp"
#include "api/requests.hpp"
#include "server/log.hpp"
#include "workers/frame.hpp"

namespace switchyard::server {

namespace asio = boost::asio;
using api::JobStatus;

namespace {

using Params = std::vector<std::optional<std::string>>;

/// The job columns every read selects, in the order `job_from_row` reads them; times as integer
/// microseconds so that nothing is lost to text formats.
std::string columns(const std::string& table) {
  const auto col = [&table](const char* name) { return table + "." + name; };
  const auto micros = [&](const char* name) { return "(extract(epoch FROM " + col(name) + ") * 1000000)::bigint"; };
  return col("id") + "::text, " + col("type") + ", " + col("model") + ", " + col("status") + ", " + col("priority") +
         ", " + col("timeout_ms") + ", " + col("attempts") + ", " + col("max_attempts") + ", " + col("input") +
         "::text, " + col("result") + "::text, " + col("error") + "::text, " + micros("created_at") + ", " +
         micros("started_at") + ", " + micros("finished_at") + ", " + col("queue_ms") + ", " + col("run_ms") + ", " +
         col("cpu_ms") + ", " + col("worker_pid");
}

/// A timestamptz from a parameter holding integer microseconds since the epoch (NULL stays NULL).
std::string at_micros(int param) {
  return "(timestamptz 'epoch' + $" + std::to_string(param) + "::bigint * interval '1 microsecond')";
}

api::TimePoint from_micros(std::int64_t micros) {
  return api::TimePoint(std::chrono::duration_cast<api::TimePoint::duration>(std::chrono::microseconds(micros)));
}

std::optional<std::string> micros_of(const std::optional<api::TimePoint>& time) {
  if (!time) return std::nullopt;
  return std::to_string(std::chrono::duration_cast<std::chrono::microseconds>(time->time_since_epoch()).count());
}

std::optional<std::string> number(const std::optional<double>& value) {
  if (!value) return std::nullopt;
  return nlohmann::json(*value).dump();
}

api::Job job_from_row(const PgResult& rows, int row) {
  auto text = [&](int column) { return rows.text(row, column); };
  auto null = [&](int column) { return rows.is_null(row, column); };
  api::Job job;
  job.id = text(0);
  job.type = text(1);
  job.model = api::parse_model(text(2)).value_or(api::Model::thread);
  job.status = api::parse_status(text(3)).value_or(JobStatus::failed);
  job.priority = std::stoi(text(4));
  job.timeout_ms = std::stoll(text(5));
  job.attempts = std::stoi(text(6));
  job.max_attempts = std::stoi(text(7));
  job.input = nlohmann::json::parse(text(8));
  if (!null(9)) job.result = nlohmann::json::parse(text(9));
  if (!null(10)) {
    const auto error = nlohmann::json::parse(text(10));
    job.error = api::JobError{error.value("code", ""), error.value("message", "")};
  }
  job.created_at = from_micros(std::stoll(text(11)));
  if (!null(12)) job.started_at = from_micros(std::stoll(text(12)));
  if (!null(13)) job.finished_at = from_micros(std::stoll(text(13)));
  if (!null(14)) job.queue_ms = std::stod(text(14));
  if (!null(15)) job.run_ms = std::stod(text(15));
  if (!null(16)) job.cpu_ms = std::stod(text(16));
  if (!null(17)) job.worker_pid = std::stoi(text(17));
  return job;
}

std::vector<api::Job> jobs_from(const PgResult& rows) {
  std::vector<api::Job> jobs;
  jobs.reserve(static_cast<std::size_t>(rows.rows()));
  for (int row = 0; row < rows.rows(); ++row) jobs.push_back(job_from_row(rows, row));
  return jobs;
}

/// A PostgreSQL array literal of uuids (ids are generated here: hex and dashes only).
std::string uuid_array(const std::vector<std::string>& ids) {
  std::string text = "{";
  for (const auto& id : ids) {
    if (text.size() > 1) text += ',';
    text += id;
  }
  return text + "}";
}

/// The attempt rule, as SQL over a row `j` whose replica stopped (shutdown or lost lease):
/// requeue while attempts remain (or it never started), else fail with `interrupted`.
std::string attempt_rule_assignments(const std::string& requeue, const std::string& message_sql) {
  return "status = CASE WHEN " + requeue +
         " THEN 'queued' ELSE 'failed' END, "
         "error = CASE WHEN " +
         requeue + " THEN NULL ELSE jsonb_build_object('code', 'interrupted', 'message', " + message_sql +
         ") END, "
         "finished_at = CASE WHEN " +
         requeue +
         " THEN NULL ELSE now() END, "
         "started_at = CASE WHEN " +
         requeue +
         " THEN NULL ELSE j.started_at END, "
         "worker_pid = CASE WHEN " +
         requeue +
         " THEN NULL ELSE j.worker_pid END, "
         "lease_owner = NULL, lease_expires_at = NULL";
}

/// NOTIFYs, for each row of `u` (id, status, model), the claimers of a requeued job or the
/// waiters of an ended one.
constexpr const char* kNotifyRows =
    "SELECT u.id::text, u.status, pg_notify(CASE WHEN u.status = 'queued' THEN 'switchyard_queued' "
    "ELSE 'switchyard_finished' END, CASE WHEN u.status = 'queued' THEN u.model ELSE u.id::text END) FROM u";

/// The jobs, and a NOTIFY per model that wakes the claimers: one statement, so that a
/// request without a key is one round trip (its own transaction).
constexpr const char* kInsertJobs =
    "WITH inserted AS (INSERT INTO switchyard_jobs (id, type, model, status, priority, timeout_ms, attempts, "
    "max_attempts, input, created_at) SELECT (r->>'id')::uuid, r->>'type', r->>'model', 'queued', "
    "(r->>'priority')::integer, (r->>'timeout_ms')::bigint, 0, (r->>'max_attempts')::integer, r->'input', "
    "timestamptz 'epoch' + (r->>'created_us')::bigint * interval '1 microsecond' "
    "FROM jsonb_array_elements($1::jsonb) AS r RETURNING model) "
    "SELECT pg_notify('switchyard_queued', m.model) FROM (SELECT DISTINCT model FROM inserted) m";

}  // namespace

std::string make_replica_id() {
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0) host[0] = '\0';
  std::random_device random;
  char suffix[9];
  std::snprintf(suffix, sizeof suffix, "%08x", random());
  return std::string(host[0] ? host : "host") + "-" + std::to_string(::getpid()) + "-" + suffix;
}

PostgresJobStore::PostgresJobStore(Options options)
    : options_(std::move(options)), memory_(0), pool_(options_.connections) {
  {
    auto connection = std::make_unique<PgConnection>(options_.url);
    migrate_postgres(*connection);
    maintain(*connection, false);
    connections_.push_back(std::move(connection));
  }
  writer_ = std::thread([this] { writer_loop(); });
  listener_ = std::thread([this] { listener_loop(); });
  maintenance_ = std::thread([this] { maintenance_loop(); });
  log::event(spdlog::level::info, "job store opened",
             {{"store", "postgres"},
              {"database", redact_database_url(options_.url)},
              {"replica", options_.replica_id},
              {"lease_ms", options_.lease.count()}});
}

PostgresJobStore::~PostgresJobStore() {
  {
    std::lock_guard lock(queue_mutex_);
    stopping_ = true;
  }
  queue_changed_.notify_all();
  stop_threads_ = true;
  if (writer_.joinable()) writer_.join();
  if (listener_.joinable()) listener_.join();
  if (maintenance_.joinable()) maintenance_.join();
  pool_.join();
}

// --- the request pool ----------------------------------------------------------------------

std::unique_ptr<PgConnection> PostgresJobStore::take_connection() {
  for (;;) {
    std::unique_ptr<PgConnection> connection;
    {
      std::lock_guard lock(connections_mutex_);
      if (connections_.empty()) break;
      connection = std::move(connections_.back());
      connections_.pop_back();
    }
    // An idle connection the server closed meanwhile (a restart) is dropped, not handed out.
    if (connection->alive()) return connection;
  }
  return std::make_unique<PgConnection>(options_.url);
}

void PostgresJobStore::give_back(std::unique_ptr<PgConnection> connection) {
  if (!connection->ok()) return;
  std::lock_guard lock(connections_mutex_);
  connections_.push_back(std::move(connection));
}

template <class T>
asio::awaitable<T> PostgresJobStore::on_pool(std::function<T(PgConnection&)> task) {
  auto run = [](PostgresJobStore* self, std::function<T(PgConnection&)> work) -> asio::awaitable<T> {
    try {
      auto connection = self->take_connection();
      // A failed task drops its connection (it may be broken or inside a failed transaction).
      T value = work(*connection);
      self->give_back(std::move(connection));
      co_return value;
    } catch (const PgError& e) {
      throw api::StoreUnavailable(e.what());
    }
  };
  co_return co_await asio::co_spawn(pool_, run(this, std::move(task)), asio::use_awaitable);
}

asio::awaitable<SharedQueue::Submitted> PostgresJobStore::submit(std::vector<api::Job> jobs,
                                                                 std::optional<std::string> key,
                                                                 std::string fingerprint) {
  nlohmann::json rows = nlohmann::json::array();
  std::vector<std::string> ids;
  for (const auto& job : jobs) {
    rows.push_back({{"id", job.id},
                    {"type", job.type},
                    {"model", api::to_string(job.model)},
                    {"priority", job.priority},
                    {"timeout_ms", job.timeout_ms},
                    {"max_attempts", job.max_attempts},
                    {"input", job.input},
                    {"created_us", *micros_of(job.created_at)}});
    ids.push_back(job.id);
  }
  auto outcome = co_await on_pool<Submitted>([&](PgConnection& db) {
    Submitted submitted;
    if (!key) {
      db.query(kInsertJobs, {rows.dump()});
      submitted.kind = Submitted::Kind::accepted;
      return submitted;
    }
    db.exec("BEGIN");
    // A key is remembered while all of its jobs are: one whose jobs were (partly) deleted by
    // the result TTL is forgotten, and this request is new. Bounded, for keys that keep moving.
    for (int round = 0; key; ++round) {
      if (round == 3) throw PgError("Idempotency-Key " + *key + " kept changing under this request");
      const auto inserted = db.query(
          "INSERT INTO switchyard_idempotency_keys (key, fingerprint, job_ids) VALUES ($1, $2, $3::uuid[]) "
          "ON CONFLICT (key) DO NOTHING RETURNING key",
          {*key, fingerprint, uuid_array(ids)});
      if (inserted.rows() == 1) break;
      // Used before (perhaps on another replica): the same request gets the same jobs.
      const auto earlier = db.query(
          "SELECT fingerprint, array_to_string(job_ids, ','), cardinality(job_ids) "
          "FROM switchyard_idempotency_keys WHERE key = $1 FOR UPDATE",
          {*key});
      if (earlier.rows() == 0) continue;  // deleted meanwhile
      if (earlier.text(0, 0) != fingerprint) {
        db.exec("ROLLBACK");
        submitted.kind = Submitted::Kind::conflict;
        return submitted;
      }
      // In the order they were made (ids are time-ordered).
      auto kept = jobs_from(db.query("SELECT " + columns("j") +
                                         " FROM switchyard_jobs j WHERE j.id = ANY (string_to_array($1, ',')::uuid[]) "
                                         "ORDER BY j.id",
                                     {earlier.text(0, 1)}));
      if (kept.size() == std::stoul(earlier.text(0, 2))) {
        db.exec("ROLLBACK");
        submitted.kind = Submitted::Kind::replayed;
        submitted.jobs = std::move(kept);
        return submitted;
      }
      db.query("DELETE FROM switchyard_idempotency_keys WHERE key = $1", {*key});
    }
    db.query(kInsertJobs, {rows.dump()});
    db.exec("COMMIT");
    submitted.kind = Submitted::Kind::accepted;
    return submitted;
  });
  if (outcome.kind == Submitted::Kind::accepted) outcome.jobs = std::move(jobs);
  co_return outcome;
}

asio::awaitable<std::optional<api::Job>> PostgresJobStore::get(std::string id) {
  if (!workers::parse_uuid(id)) co_return std::nullopt;  // not an id this service made
  co_return co_await on_pool<std::optional<api::Job>>([&id](PgConnection& db) -> std::optional<api::Job> {
    const auto rows = db.query("SELECT " + columns("j") + " FROM switchyard_jobs j WHERE j.id = $1::uuid", {id});
    if (rows.rows() == 0) return std::nullopt;
    return job_from_row(rows, 0);
  });
}

asio::awaitable<api::ListPage> PostgresJobStore::list_all(api::ListQuery query) {
  co_return co_await on_pool<api::ListPage>([&query](PgConnection& db) {
    std::string sql = "SELECT " + columns("j") + " FROM switchyard_jobs j WHERE true";
    Params params;
    auto param = [&params](std::string value) {
      params.emplace_back(std::move(value));
      return "$" + std::to_string(params.size());
    };
    if (query.status) sql += " AND j.status = " + param(std::string(api::to_string(*query.status)));
    if (query.type) sql += " AND j.type = " + param(*query.type);
    if (query.model) sql += " AND j.model = " + param(std::string(api::to_string(*query.model)));
    if (query.after_id) sql += " AND j.id < " + param(*query.after_id) + "::uuid";
    sql += " ORDER BY j.id DESC LIMIT " + param(std::to_string(query.limit + 1));
    api::ListPage page;
    page.jobs = jobs_from(db.query(sql, params));
    if (page.jobs.size() > query.limit) {
      page.jobs.pop_back();
      page.next_cursor = api::make_cursor(page.jobs.back().id);
    }
    return page;
  });
}

asio::awaitable<std::pair<bool, std::optional<api::Job>>> PostgresJobStore::cancel_queued(std::string id) {
  using Answer = std::pair<bool, std::optional<api::Job>>;
  if (!workers::parse_uuid(id)) co_return Answer{false, std::nullopt};
  co_return co_await on_pool<Answer>([&id](PgConnection& db) -> Answer {
    db.exec("BEGIN");
    const auto cancelled = db.query(
        "UPDATE switchyard_jobs j SET status = 'cancelled', finished_at = now(), "
        "error = jsonb_build_object('code', 'cancelled', 'message', 'cancelled while queued') "
        "WHERE j.id = $1::uuid AND j.status = 'queued' AND j.lease_owner IS NULL RETURNING " +
            columns("j"),
        {id});
    if (cancelled.rows() == 1) db.query("SELECT pg_notify('switchyard_finished', $1)", {id});
    db.exec("COMMIT");
    if (cancelled.rows() == 1) return {true, job_from_row(cancelled, 0)};
    const auto rows = db.query("SELECT " + columns("j") + " FROM switchyard_jobs j WHERE j.id = $1::uuid", {id});
    if (rows.rows() == 0) return {false, std::nullopt};
    return {false, job_from_row(rows, 0)};
  });
}

asio::awaitable<void> PostgresJobStore::request_cancel(std::string id) {
  co_await on_pool<bool>([&id](PgConnection& db) {
    db.query("SELECT pg_notify('switchyard_cancel', $1)", {id});
    return true;
  });
}

asio::awaitable<std::vector<api::Job>> PostgresJobStore::claim(api::Model model, std::size_t limit) {
  auto jobs = co_await on_pool<std::vector<api::Job>>([&](PgConnection& db) {
    return jobs_from(
        db.query("UPDATE switchyard_jobs j SET status = 'running', attempts = j.attempts + 1, started_at = now(), "
                 "lease_owner = $1, lease_expires_at = now() + $2::bigint * interval '1 millisecond' "
                 "FROM (SELECT id FROM switchyard_jobs WHERE status = 'queued' AND lease_owner IS NULL AND model = $3 "
                 "ORDER BY priority DESC, id LIMIT $4 FOR UPDATE SKIP LOCKED) c WHERE j.id = c.id RETURNING " +
                     columns("j"),
                 {options_.replica_id, std::to_string(options_.lease.count()), std::string(api::to_string(model)),
                  std::to_string(limit)}));
  });
  // As they were before the claim: the dispatcher starts them, which counts the attempt again.
  for (auto& job : jobs) {
    job.status = JobStatus::queued;
    job.attempts -= 1;
    job.started_at.reset();
  }
  std::sort(jobs.begin(), jobs.end(), [](const api::Job& a, const api::Job& b) {
    return a.priority != b.priority ? a.priority > b.priority : a.id < b.id;
  });
  co_return jobs;
}

// --- JobStore: the jobs this replica runs -------------------------------------------------

void PostgresJobStore::insert(api::Job job) {
  memory_.insert(std::move(job));
}

bool PostgresJobStore::update(const std::string& id, const std::function<void(api::Job&)>& change) {
  if (!memory_.update(id, change)) return false;
  enqueue(PutJob{*memory_.find(id)});
  return true;
}

Evicted PostgresJobStore::retire(const std::string& id) {
  // The database keeps the finished job (until the result TTL); this replica forgets it.
  memory_.retire(id);
  return {};
}

Evicted PostgresJobStore::expire(api::TimePoint /*cutoff*/) {
  return {};
}  // the maintenance thread does it

void PostgresJobStore::release(const std::string& id, bool started) {
  if (memory_.find(id) != nullptr) memory_.retire(id);
  enqueue(Release{id, started});
}

void PostgresJobStore::when_durable(std::function<void(bool)> done) {
  {
    std::lock_guard lock(queue_mutex_);
    waiting_.push_back(std::move(done));
  }
  queue_changed_.notify_one();
}

void PostgresJobStore::observe_commits(std::function<void(double, std::size_t, bool)> observer) {
  std::lock_guard lock(queue_mutex_);
  observer_ = std::move(observer);
}

void PostgresJobStore::listen(std::function<void(const Notice&)> handler) {
  std::lock_guard lock(queue_mutex_);
  handler_ = std::move(handler);
}

std::size_t PostgresJobStore::queued(api::Model model) const {
  return queued_[model == api::Model::thread ? 0 : 1].load();
}

void PostgresJobStore::enqueue(Change change) {
  {
    std::lock_guard lock(queue_mutex_);
    pending_.push_back(std::move(change));
  }
  queue_changed_.notify_one();
}

// --- the writer -------------------------------------------------------------------------

void PostgresJobStore::writer_loop() {
  std::unique_ptr<PgConnection> connection;
  for (;;) {
    std::vector<Change> batch;
    std::vector<std::function<void(bool)>> waiting;
    std::function<void(double, std::size_t, bool)> observer;
    {
      std::unique_lock lock(queue_mutex_);
      queue_changed_.wait(lock, [this] { return stopping_ || !pending_.empty() || !waiting_.empty(); });
      if (pending_.empty() && waiting_.empty()) return;  // stopping, nothing left
      batch.swap(pending_);
      waiting.swap(waiting_);
      observer = observer_;
    }
    bool ok = batch.empty();
    std::vector<api::Job> ended;
    // Jobs under this replica's lease: keep trying until written (once the lease expired the
    // writes are refused by their condition anyway), unless the server is stopping.
    for (int attempt = 0; !ok; ++attempt) {
      const auto began = std::chrono::steady_clock::now();
      try {
        if (!connection || !connection->ok()) connection = std::make_unique<PgConnection>(options_.url);
        ended.clear();
        ok = commit(*connection, batch, ended);
      } catch (const PgError& e) {
        connection.reset();
        log::event(spdlog::level::err, "job store write failed",
                   {{"store", "postgres"}, {"changes", batch.size()}, {"error", e.what()}});
      }
      if (observer) {
        observer(std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count(), batch.size(), ok);
      }
      if (ok) break;
      bool stopping = false;
      {
        std::lock_guard lock(queue_mutex_);
        stopping = stopping_;
      }
      if (stopping && attempt >= 2) {
        log::event(spdlog::level::err,
                   "job store: changes not written at shutdown; their leases expire and "
                   "other replicas take the jobs over",
                   {{"changes", batch.size()}});
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
    for (auto& done : waiting) done(ok);
    // Their waiters here need not wait for the NOTIFY and read the job back.
    for (auto& job : ended) deliver(Notice{Notice::Kind::finished, job.id, job.model, std::move(job)});
  }
}

bool PostgresJobStore::commit(PgConnection& db, const std::vector<Change>& batch, std::vector<api::Job>& ended) {
  // A PutJob carries the whole job: one followed by a later PutJob of the same job in this
  // batch (its start, then its end) is not written. A Release in between keeps it.
  std::vector<bool> replaced(batch.size(), false);
  std::unordered_set<std::string_view> later;
  for (std::size_t i = batch.size(); i-- > 0;) {
    if (const auto* put = std::get_if<PutJob>(&batch[i]))
      replaced[i] = !later.insert(put->job.id).second;
    else
      later.erase(std::get<Release>(batch[i]).id);
  }
  // A batch of starts only need not wait for its flush: the claim made each start durable, and
  // what a start adds (worker pid, start time) the job's end rewrites. The end's synchronous
  // commit flushes it too (the log is written in order).
  const bool starts_only = std::all_of(batch.begin(), batch.end(), [](const Change& change) {
    const auto* put = std::get_if<PutJob>(&change);
    return put != nullptr && put->job.status == JobStatus::running;
  });
  db.exec(starts_only ? "BEGIN; SET LOCAL synchronous_commit = off" : "BEGIN");
  try {
    for (std::size_t i = 0; i < batch.size(); ++i) {
      if (replaced[i]) continue;
      const auto& change = batch[i];
      if (const auto* put = std::get_if<PutJob>(&change)) {
        const auto& job = put->job;
        const bool terminal = api::is_terminal(job.status);
        const auto written = db.query(
            "WITH u AS (UPDATE switchyard_jobs j SET status = $3, attempts = $4::integer, result = $5::jsonb, "
            "error = $6::jsonb, started_at = " +
                at_micros(7) + ", finished_at = " + at_micros(8) +
                ", queue_ms = $9::double precision, run_ms = $10::double precision, cpu_ms = $11::double precision, "
                "worker_pid = $12::integer, lease_owner = CASE WHEN $13::boolean THEN NULL ELSE j.lease_owner END, "
                "lease_expires_at = CASE WHEN $13::boolean THEN NULL ELSE j.lease_expires_at END "
                "WHERE j.id = $1::uuid AND j.lease_owner = $2 RETURNING j.id, j.status, j.model) " +
                kNotifyRows + " WHERE u.status <> 'running'",
            {job.id, options_.replica_id, std::string(api::to_string(job.status)), std::to_string(job.attempts),
             job.result.is_null() ? std::nullopt : std::optional<std::string>(job.result.dump()),
             job.error ? std::optional<std::string>(
                             nlohmann::json{{"code", job.error->code}, {"message", job.error->message}}.dump())
                       : std::nullopt,
             micros_of(job.started_at), micros_of(job.finished_at), number(job.queue_ms), number(job.run_ms),
             number(job.cpu_ms),
             job.worker_pid ? std::optional<std::string>(std::to_string(*job.worker_pid)) : std::nullopt,
             terminal ? "true" : "false"});
        if (written.rows() == 0 && job.status != JobStatus::running) {
          log::job(spdlog::level::warn, job.id, "job change not written: this replica no longer holds its lease",
                   {{"status", api::to_string(job.status)}});
        } else if (terminal) {
          ended.push_back(job);
        }
      } else {
        const auto& release = std::get<Release>(change);
        const std::string requeue = release.started ? "j.attempts < j.max_attempts" : "true";
        db.query(
            "WITH u AS (UPDATE switchyard_jobs j SET attempts = CASE WHEN $3::boolean OR j.status <> 'running' "
            "THEN j.attempts ELSE j.attempts - 1 END, " +
                attempt_rule_assignments(requeue,
                                         "'the replica running the job shut down (attempt ' || "
                                         "j.attempts || ' of ' || j.max_attempts || ')'") +
                " WHERE j.id = $1::uuid AND j.lease_owner = $2 RETURNING j.id, j.status, j.model) " + kNotifyRows,
            {release.id, options_.replica_id, release.started ? "true" : "false"});
      }
    }
    db.exec("COMMIT");
    return true;
  } catch (...) {
    try {
      db.exec("ROLLBACK");
    } catch (const PgError&) {
      // The connection is gone; the first error says why.
    }
    throw;
  }
}

// --- the listener -------------------------------------------------------------------------

void PostgresJobStore::deliver(const Notice& notice) {
  std::function<void(const Notice&)> handler;
  {
    std::lock_guard lock(queue_mutex_);
    handler = handler_;
  }
  if (handler) handler(notice);
}

void PostgresJobStore::listener_loop() {
  std::unique_ptr<PgConnection> connection;
  bool missed = false;
  while (!stop_threads_) {
    if (!connection || !connection->ok()) {
      try {
        connection = std::make_unique<PgConnection>(options_.url);
        connection->exec("LISTEN switchyard_finished; LISTEN switchyard_queued; LISTEN switchyard_cancel");
        if (missed) deliver(Notice{Notice::Kind::reconnected, {}, api::Model::thread, std::nullopt});
        missed = false;
      } catch (const PgError& e) {
        connection.reset();
        missed = true;
        log::event(spdlog::level::err, "job store: cannot listen for notifications", {{"error", e.what()}});
        for (int i = 0; i < 10 && !stop_threads_; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
        continue;
      }
    }
    pg_conn* conn = connection->native();
    pollfd fd{PQsocket(conn), POLLIN, 0};
    if (::poll(&fd, 1, 100) < 0 && errno != EINTR) break;
    if (PQconsumeInput(conn) == 0) {
      log::event(spdlog::level::warn, "job store: notification connection lost; reconnecting",
                 {{"error", std::string(PQerrorMessage(conn))}});
      connection.reset();
      missed = true;
      continue;
    }
    while (PGnotify* raw = PQnotifies(conn)) {
      Notice notice;
      const std::string channel = raw->relname;
      const std::string payload = raw->extra;
      PQfreemem(raw);
      if (channel == "switchyard_finished") {
        notice = Notice{Notice::Kind::finished, payload, api::Model::thread, std::nullopt};
      } else if (channel == "switchyard_cancel") {
        notice = Notice{Notice::Kind::cancel, payload, api::Model::thread, std::nullopt};
      } else {
        notice = Notice{Notice::Kind::queued, {}, api::parse_model(payload).value_or(api::Model::thread), std::nullopt};
      }
      deliver(notice);
    }
  }
}

// --- maintenance: heartbeat, leases, reclaim, TTL -------------------------------------------

void PostgresJobStore::maintenance_loop() {
  std::unique_ptr<PgConnection> connection;
  // Renew well within the lease, and look for expired leases at least every second.
  const auto period = std::min<std::chrono::milliseconds>(options_.lease / 3, std::chrono::milliseconds(1000));
  auto next_expiry = std::chrono::steady_clock::now();
  auto renewed = std::chrono::steady_clock::now();
  bool lost = false;
  while (!stop_threads_) {
    const auto began = std::chrono::steady_clock::now();
    try {
      if (!connection || !connection->ok()) connection = std::make_unique<PgConnection>(options_.url);
      const bool expire_now = began >= next_expiry;
      maintain(*connection, expire_now);
      renewed = began;
      lost = false;
      if (expire_now) next_expiry = began + std::chrono::seconds(5);
      if (!healthy_.exchange(true)) log::event(spdlog::level::info, "job store reachable again", {});
    } catch (const PgError& e) {
      connection.reset();
      if (healthy_.exchange(false)) {
        log::event(spdlog::level::err, "job store unreachable: leases are not renewed", {{"error", e.what()}});
      }
    }
    if (!lost && std::chrono::steady_clock::now() - renewed > options_.lease * 2 / 3) {
      // Other replicas take the jobs over once the leases expire: stop them here first, so that
      // no job runs twice at the same moment.
      lost = true;
      log::event(spdlog::level::err, "job store leases not renewed for 2/3 of their time: stopping every job here",
                 {{"lease_ms", options_.lease.count()}});
      std::function<void(const Notice&)> handler;
      {
        std::lock_guard lock(queue_mutex_);
        handler = handler_;
      }
      if (handler) handler(Notice{Notice::Kind::leases_lost, {}, api::Model::thread, std::nullopt});
    }
    while (!stop_threads_ && std::chrono::steady_clock::now() < began + period) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
}

void PostgresJobStore::maintain(PgConnection& db, bool expire_now) {
  const std::string lease_ms = std::to_string(options_.lease.count());
  db.query("INSERT INTO switchyard_replicas (id) VALUES ($1) ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
           {options_.replica_id});
  // Rows the writer holds right now are renewed next time: waiting for them could deadlock.
  db.query(
      "UPDATE switchyard_jobs j SET lease_expires_at = now() + $2::bigint * interval '1 millisecond' "
      "FROM (SELECT id FROM switchyard_jobs WHERE lease_owner = $1 AND status IN ('queued', 'running') "
      "FOR UPDATE SKIP LOCKED) mine WHERE j.id = mine.id",
      {options_.replica_id, lease_ms});
  // Leases that expired belong to replicas that stopped renewing them (killed, or cut off):
  // their jobs go back to the queue or end, by the attempt rule.
  const auto reclaimed = db.query(
      "WITH expired AS (SELECT id FROM switchyard_jobs WHERE lease_owner IS NOT NULL AND lease_expires_at < now() "
      "AND status IN ('queued', 'running') FOR UPDATE SKIP LOCKED), "
      "u AS (UPDATE switchyard_jobs j SET " +
      attempt_rule_assignments("(j.status = 'queued' OR j.attempts < j.max_attempts)",
                               "'the replica running the job (' || j.lease_owner || ') stopped renewing its "
                               "lease (attempt ' || j.attempts || ' of ' || j.max_attempts || ')'") +
      " FROM expired WHERE j.id = expired.id RETURNING j.id, j.status, j.model) " + kNotifyRows);
  if (reclaimed.rows() > 0) {
    std::size_t requeued = 0;
    for (int row = 0; row < reclaimed.rows(); ++row) requeued += reclaimed.text(row, 1) == "queued" ? 1 : 0;
    log::event(spdlog::level::warn, "jobs reclaimed from expired leases",
               {{"requeued", requeued}, {"failed_interrupted", static_cast<std::size_t>(reclaimed.rows()) - requeued}});
  }
  const auto counts = db.query("SELECT model, count(*) FROM switchyard_jobs WHERE status = 'queued' GROUP BY model");
  std::size_t queued[2] = {0, 0};
  for (int row = 0; row < counts.rows(); ++row) {
    queued[counts.text(row, 0) == "thread" ? 0 : 1] = std::stoull(counts.text(row, 1));
  }
  queued_[0] = queued[0];
  queued_[1] = queued[1];
  if (expire_now && options_.result_ttl_s > 0) {
    const std::string ttl = nlohmann::json(options_.result_ttl_s).dump();
    db.query("DELETE FROM switchyard_jobs WHERE finished_at < now() - $1::double precision * interval '1 second'",
             {ttl});
    db.query(
        "DELETE FROM switchyard_idempotency_keys k WHERE k.created_at < now() - $1::double precision * "
        "interval '1 second' AND NOT EXISTS (SELECT 1 FROM switchyard_jobs j WHERE j.id = ANY (k.job_ids))",
        {ttl});
    db.query("DELETE FROM switchyard_replicas WHERE heartbeat_at < now() - interval '1 day'");
  }
}

}  // namespace switchyard::server
