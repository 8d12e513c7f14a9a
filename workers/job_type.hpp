#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <nlohmann/json.hpp>

namespace switchyard::workers {

/// What a job type spends its time on; decides the default execution model.
enum class Kind { io, cpu };

/// "io" or "cpu".
std::string_view to_string(Kind kind) noexcept;

/// Why a running job was asked to stop.
enum class StopReason : int { none = 0, timeout, cancel, shutdown };

/// "none", "timeout", "cancel" or "shutdown".
std::string_view to_string(StopReason reason) noexcept;

/// A cooperative stop request that a blocking job polls between units of work.
/// Thread-safe: any thread may request a stop; the first reason wins.
class StopFlag {
 public:
  /// Records `reason` if no reason was recorded yet; returns true if this call won.
  bool request(StopReason reason) noexcept {
    auto expected = StopReason::none;
    return reason_.compare_exchange_strong(expected, reason, std::memory_order_acq_rel);
  }
  /// True once any stop was requested.
  [[nodiscard]] bool stop_requested() const noexcept {
    return reason_.load(std::memory_order_acquire) != StopReason::none;
  }
  /// The reason recorded first, or StopReason::none.
  [[nodiscard]] StopReason reason() const noexcept { return reason_.load(std::memory_order_acquire); }

 private:
  std::atomic<StopReason> reason_{StopReason::none};
};

/// The outcome of one run of a job: a result or an error. Job failures are values; they never
/// cross a thread or process boundary as exceptions.
struct Outcome {
  bool ok = false;
  nlohmann::json result;       ///< the job's result when ok
  std::string error_code;      ///< stable code when !ok, e.g. "handler_error"
  std::string error_message;   ///< human-readable detail when !ok

  /// A successful outcome carrying `result`.
  static Outcome success(nlohmann::json result) { return Outcome{true, std::move(result), {}, {}}; }
  /// A failed outcome with a stable `code` and a `message`.
  static Outcome failure(std::string code, std::string message) {
    return Outcome{false, nullptr, std::move(code), std::move(message)};
  }
};

/// One validation problem. `path` is a JSON Pointer relative to the validated document
/// ("" for the document itself, "/ms" for a member).
struct FieldError {
  std::string path;
  std::string message;
  friend bool operator==(const FieldError&, const FieldError&) = default;
};

/// A blocking implementation: runs on the calling thread until done; polls `stop` if it can take
/// long. Runs inside a worker process (process model) or on a blocking thread of the thread
/// model (an override).
using BlockingRun = std::function<Outcome(const nlohmann::json& input, const StopFlag& stop)>;

/// An asynchronous implementation: a coroutine on the caller's executor. Stops early through Asio
/// per-operation cancellation (timeout, DELETE); may then throw boost::system::system_error.
using AsyncRun = std::function<boost::asio::awaitable<Outcome>(nlohmann::json input)>;

/// Semantic checks that a JSON Schema cannot express (e.g. that base64 data decodes).
using ExtraCheck = std::function<std::vector<FieldError>(const nlohmann::json& input)>;

/// A named kind of work. Exactly one of `blocking` or `async` is set; either model can run
/// either implementation (see ThreadExecutor and worker_main).
struct JobType {
  std::string name;
  Kind kind = Kind::cpu;
  std::string description;
  nlohmann::json input_schema;   ///< JSON Schema (draft 7) that `input` must satisfy
  bool diagnostic = false;       ///< only registered when diagnostics are enabled
  bool process_only = false;     ///< refused on the thread model (it would harm the server)
  BlockingRun blocking;
  AsyncRun async;
  ExtraCheck extra_check;        ///< optional; runs only when the schema passed
};

/// Options that shape the built-in job types. The server and every worker process must be
/// given the same options so that both sides see the same catalogue.
struct BuiltinOptions {
  bool diagnostics = false;                 ///< register noop, alloc, crash, fork, open_files, hang, append_log
  std::vector<std::string> http_allow;      ///< http.request destinations: hosts or CIDRs; empty = loopback only
  std::size_t http_max_response_bytes = 1 << 20;
  int http_max_timeout_ms = 30000;
};

/// The set of job types a server offers, with their compiled input schemas.
/// Thread-safety: build it once (add), then share it read-only; const members are thread-safe.
class Catalogue {
 public:
  Catalogue();
  ~Catalogue();
  Catalogue(Catalogue&&) noexcept;
  Catalogue& operator=(Catalogue&&) noexcept;

  /// Adds a type and compiles its schema. Throws std::invalid_argument on a duplicate name,
  /// a bad schema, or a type without exactly one implementation.
  void add(JobType type);

  /// The type called `name`, or nullptr.
  [[nodiscard]] const JobType* find(std::string_view name) const noexcept;

  /// All types in the order they were added.
  [[nodiscard]] const std::vector<JobType>& types() const noexcept;

  /// Validates `input` against the type's schema, then its extra check. Empty when valid.
  [[nodiscard]] std::vector<FieldError> validate(const JobType& type, const nlohmann::json& input) const;

 private:
  struct Compiled;
  std::vector<JobType> types_;
  std::vector<std::unique_ptr<Compiled>> compiled_;  // parallel to types_
};

/// Registers the built-in types of API.md ("sleep", "http.request", "hash", "primes", "burn",
/// and with diagnostics "noop", "alloc", "crash", "fork", "open_files", "hang", "append_log").
void register_builtin_types(Catalogue& catalogue, const BuiltinOptions& options);

/// A catalogue with the built-in types.
Catalogue make_builtin_catalogue(const BuiltinOptions& options);

}  // namespace switchyard::workers
