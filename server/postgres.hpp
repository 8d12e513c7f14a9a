#pragma once

#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

struct pg_conn;
struct pg_result;

namespace switchyard::server {

/// A PostgreSQL error: what failed, and the server's message (never the password).
class PgError : public std::runtime_error {
 public:
  PgError(const std::string& what, std::string sqlstate = {})
      : std::runtime_error(what), sqlstate_(std::move(sqlstate)) {}
  /// The SQLSTATE code ("40001", ...) when the server sent one.
  [[nodiscard]] const std::string& sqlstate() const { return sqlstate_; }

 private:
  std::string sqlstate_;
};

/// The result of one statement: rows of text values (libpq's text format).
class PgResult {
 public:
  explicit PgResult(pg_result* result);
  [[nodiscard]] int rows() const;
  [[nodiscard]] bool is_null(int row, int column) const;
  [[nodiscard]] std::string text(int row, int column) const;

 private:
  std::shared_ptr<pg_result> result_;
};

/// One libpq connection, blocking. Thread-safety: none (one thread at a time).
class PgConnection {
 public:
  /// Connects to `url` (a libpq connection URI or key=value string); throws PgError.
  explicit PgConnection(const std::string& url);
  ~PgConnection();
  PgConnection(const PgConnection&) = delete;
  PgConnection& operator=(const PgConnection&) = delete;

  /// Runs one or more statements without parameters; throws PgError.
  void exec(const std::string& sql);
  /// Runs one statement with text parameters ($1, $2, ...; nullopt is NULL); throws PgError.
  /// The statement is prepared on this connection the first time its text is seen, so that the
  /// server parses and plans it once, not on every call (up to kMaxPrepared texts; the rest
  /// run unprepared).
  PgResult query(const std::string& sql, const std::vector<std::optional<std::string>>& params = {});
  /// False once the connection is known to be broken.
  [[nodiscard]] bool ok() const;
  /// For an idle connection: false if it is broken or the server sent something (its goodbye
  /// before closing it), so that it is dropped instead of failing the next statement.
  [[nodiscard]] bool alive();
  /// The libpq connection, for LISTEN (PQsocket, PQconsumeInput, PQnotifies).
  [[nodiscard]] pg_conn* native() const { return conn_; }

 private:
  static constexpr std::size_t kMaxPrepared = 64;

  pg_conn* conn_ = nullptr;
  std::unordered_map<std::string, std::string> prepared_;  // statement text -> its name here
};

/// The database URL without its password, for logs and messages.
std::string redact_database_url(const std::string& url);

/// Brings the Switchyard schema up to date: versioned migrations, each in its own transaction,
/// recorded in switchyard_schema_migrations. Safe when several servers run it at once (a
/// transaction-scoped advisory lock serialises them; the later ones find nothing to do).
/// Refuses a database whose schema is newer than this build. Returns the migrations applied.
int migrate_postgres(PgConnection& connection);

/// The schema version this build brings a database to.
int postgres_schema_version();

}  // namespace switchyard::server
