#include "server/postgres.hpp"

#include <iterator>

#include <poll.h>

#include <boost/url/parse.hpp>
#include <boost/url/url.hpp>
#include <libpq-fe.h>

#include "server/log.hpp"

namespace switchyard::server {

namespace {

/// Any 64-bit number, the same in every build: the advisory lock that serialises migrations.
constexpr const char* kMigrationLock = "7301948263";

/// The schema, one entry per version, applied in order. Append only: a released entry never
/// changes (a change is a new entry).
constexpr const char* kMigrations[] = {
    // 1: jobs, with the columns that claiming (FOR UPDATE SKIP LOCKED), leases and the result
    //    TTL select on; idempotency keys; replicas and their heartbeats.
    R"sql(
CREATE TABLE switchyard_jobs (
  id               uuid PRIMARY KEY,
  type             text NOT NULL,
  model            text NOT NULL CHECK (model IN ('thread', 'process')),
  status           text NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'timed_out')),
  priority         integer NOT NULL,
  timeout_ms       bigint NOT NULL,
  attempts         integer NOT NULL DEFAULT 0,
  max_attempts     integer NOT NULL DEFAULT 1,
  input            jsonb NOT NULL,
  result           jsonb,
  error            jsonb,
  created_at       timestamptz NOT NULL,
  started_at       timestamptz,
  finished_at      timestamptz,
  queue_ms         double precision,
  run_ms           double precision,
  cpu_ms           double precision,
  worker_pid       integer,
  lease_owner      text,
  lease_expires_at timestamptz
);
CREATE INDEX switchyard_jobs_claim ON switchyard_jobs (model, priority DESC, id) WHERE status = 'queued';
CREATE INDEX switchyard_jobs_leases ON switchyard_jobs (lease_expires_at) WHERE status = 'running';
CREATE INDEX switchyard_jobs_finished ON switchyard_jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE switchyard_idempotency_keys (
  key         text PRIMARY KEY,
  fingerprint text NOT NULL,
  job_ids     uuid[] NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE switchyard_replicas (
  id           text PRIMARY KEY,
  started_at   timestamptz NOT NULL DEFAULT now(),
  heartbeat_at timestamptz NOT NULL DEFAULT now()
);
)sql",
    // 2: a queued job can hold a lease too (a worker crash requeues it on the replica that
    //    holds it), so claims take only unleased queued jobs and leases are found on both.
    R"sql(
DROP INDEX switchyard_jobs_claim;
DROP INDEX switchyard_jobs_leases;
CREATE INDEX switchyard_jobs_claimable ON switchyard_jobs (model, priority DESC, id)
  WHERE status = 'queued' AND lease_owner IS NULL;
CREATE INDEX switchyard_jobs_leased ON switchyard_jobs (lease_expires_at)
  WHERE lease_owner IS NOT NULL AND status IN ('queued', 'running');
CREATE INDEX switchyard_jobs_owner ON switchyard_jobs (lease_owner) WHERE lease_owner IS NOT NULL;
)sql",
};

std::string error_of(pg_conn* conn) {
  std::string message = PQerrorMessage(conn);
  while (!message.empty() && (message.back() == '\n' || message.back() == ' ')) message.pop_back();
  return message;
}

/// Throws PgError unless `result` is a success; takes ownership either way.
PgResult checked(pg_conn* conn, pg_result* result, const std::string& what) {
  PgResult owned(result);
  const auto status = result ? PQresultStatus(result) : PGRES_FATAL_ERROR;
  if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK) return owned;
  const char* state = result ? PQresultErrorField(result, PG_DIAG_SQLSTATE) : nullptr;
  throw PgError(what + ": " + error_of(conn), state ? state : "");
}

}  // namespace

PgResult::PgResult(pg_result* result) : result_(result, PQclear) {}

int PgResult::rows() const { return PQntuples(result_.get()); }

bool PgResult::is_null(int row, int column) const { return PQgetisnull(result_.get(), row, column) != 0; }

std::string PgResult::text(int row, int column) const {
  return {PQgetvalue(result_.get(), row, column), static_cast<std::size_t>(PQgetlength(result_.get(), row, column))};
}

PgConnection::PgConnection(const std::string& url) : conn_(PQconnectdb(url.c_str())) {
  if (conn_ == nullptr) throw PgError("PostgreSQL: out of memory");
  if (PQstatus(conn_) != CONNECTION_OK) {
    const std::string message = error_of(conn_);
    PQfinish(conn_);
    conn_ = nullptr;
    throw PgError("cannot connect to PostgreSQL at " + redact_database_url(url) + ": " + message);
  }
  // Notices ("relation already exists, skipping") go to the debug log, not to stderr.
  PQsetNoticeProcessor(
      conn_,
      [](void*, const char* message) {
        std::string text = message;
        while (!text.empty() && text.back() == '\n') text.pop_back();
        spdlog::debug("PostgreSQL: {}", text);
      },
      nullptr);
}

PgConnection::~PgConnection() {
  if (conn_ != nullptr) PQfinish(conn_);
}

void PgConnection::exec(const std::string& sql) { checked(conn_, PQexec(conn_, sql.c_str()), "PostgreSQL"); }

PgResult PgConnection::query(const std::string& sql, const std::vector<std::optional<std::string>>& params) {
  std::vector<const char*> values;
  values.reserve(params.size());
  for (const auto& p : params) values.push_back(p ? p->c_str() : nullptr);
  const int count = static_cast<int>(values.size());
  auto named = prepared_.find(sql);
  if (named == prepared_.end() && prepared_.size() < kMaxPrepared) {
    // A protocol-level prepared statement outlives a transaction that rolls back; one that
    // failed to prepare is not remembered.
    std::string name = "switchyard_" + std::to_string(prepared_.size());
    checked(conn_, PQprepare(conn_, name.c_str(), sql.c_str(), count, nullptr), "PostgreSQL");
    named = prepared_.emplace(sql, std::move(name)).first;
  }
  if (named == prepared_.end()) {
    return checked(conn_, PQexecParams(conn_, sql.c_str(), count, nullptr, values.data(), nullptr, nullptr, 0),
                   "PostgreSQL");
  }
  return checked(conn_, PQexecPrepared(conn_, named->second.c_str(), count, values.data(), nullptr, nullptr, 0),
                 "PostgreSQL");
}

bool PgConnection::ok() const { return PQstatus(conn_) == CONNECTION_OK; }

bool PgConnection::alive() {
  if (!ok()) return false;
  // An idle connection has nothing to read: anything there (the server's "terminating
  // connection" before it closed, or the close itself) means it is gone.
  pollfd fd{PQsocket(conn_), POLLIN, 0};
  return ::poll(&fd, 1, 0) == 0;
}

std::string redact_database_url(const std::string& url) {
  auto parsed = boost::urls::parse_uri(url);
  if (!parsed) return url.find("password") == std::string::npos ? url : "(a connection string with a password)";
  boost::urls::url copy(*parsed);
  if (copy.has_password()) copy.set_password("***");
  auto params = copy.params();
  for (auto it = params.begin(); it != params.end(); ++it) {
    if ((*it).key == "password") it = params.replace(it, {"password", "***"});
  }
  return std::string(copy.buffer());
}

int postgres_schema_version() { return static_cast<int>(std::size(kMigrations)); }

int migrate_postgres(PgConnection& connection) {
  int applied = 0;
  for (;;) {
    // One version per transaction, under a lock that every server takes: two servers starting
    // at once apply each version once, and a failure leaves the previous version intact.
    connection.exec("BEGIN");
    try {
      connection.query(std::string("SELECT pg_advisory_xact_lock(") + kMigrationLock + ")");
      // Under the lock: concurrent CREATE TABLE IF NOT EXISTS can still collide in the catalog.
      connection.exec("CREATE TABLE IF NOT EXISTS switchyard_schema_migrations ("
                      " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())");
      const auto current = connection.query("SELECT coalesce(max(version), 0) FROM switchyard_schema_migrations");
      const int version = std::stoi(current.text(0, 0));
      if (version > postgres_schema_version()) {
        throw PgError("the database has Switchyard schema version " + std::to_string(version) +
                      ", newer than this build knows (" + std::to_string(postgres_schema_version()) +
                      "); run a newer Switchyard");
      }
      if (version == postgres_schema_version()) {
        connection.exec("COMMIT");
        return applied;
      }
      connection.exec(kMigrations[version]);
      connection.query("INSERT INTO switchyard_schema_migrations (version) VALUES ($1)", {std::to_string(version + 1)});
      connection.exec("COMMIT");
      ++applied;
      log::event(spdlog::level::info, "store schema migrated", {{"store", "postgres"}, {"version", version + 1}});
    } catch (...) {
      try {
        connection.exec("ROLLBACK");
      } catch (const PgError&) {
        // The connection is gone; the first error says why.
      }
      throw;
    }
  }
}

}  // namespace switchyard::server
