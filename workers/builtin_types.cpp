#include "workers/diagnostic_types.hpp"
#include "workers/http_request_type.hpp"
#include "workers/job_type.hpp"
#include "workers/schema_helpers.hpp"

#include <time.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <openssl/evp.h>

namespace switchyard::workers {
namespace {

using Json = nlohmann::json;

double ms_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

// Strict RFC 4648 base64 (standard alphabet); the trailing padding may be left out.
std::optional<std::string> base64_decode(std::string_view text) {
  if (text.size() % 4 == 0) {
    for (int i = 0; i < 2 && !text.empty() && text.back() == '='; ++i) text.remove_suffix(1);
  }
  if (text.size() % 4 == 1) return std::nullopt;
  std::string out;
  out.reserve(text.size() / 4 * 3 + 2);
  std::uint32_t bits = 0;
  int count = 0;
  for (char c : text) {
    std::uint32_t v = 0;
    if (c >= 'A' && c <= 'Z') {
      v = static_cast<std::uint32_t>(c - 'A');
    } else if (c >= 'a' && c <= 'z') {
      v = static_cast<std::uint32_t>(c - 'a' + 26);
    } else if (c >= '0' && c <= '9') {
      v = static_cast<std::uint32_t>(c - '0' + 52);
    } else if (c == '+') {
      v = 62;
    } else if (c == '/') {
      v = 63;
    } else {
      return std::nullopt;
    }
    bits = (bits << 6) | v;
    if (++count == 4) {
      out += static_cast<char>((bits >> 16) & 0xff);
      out += static_cast<char>((bits >> 8) & 0xff);
      out += static_cast<char>(bits & 0xff);
      bits = 0;
      count = 0;
    }
  }
  if (count == 2) {
    out += static_cast<char>((bits >> 4) & 0xff);
  } else if (count == 3) {
    out += static_cast<char>((bits >> 10) & 0xff);
    out += static_cast<char>((bits >> 2) & 0xff);
  }
  return out;
}

boost::asio::awaitable<Outcome> run_sleep(Json input) {
  const auto ms = input.at("ms").get<std::int64_t>();
  boost::asio::steady_timer timer(co_await boost::asio::this_coro::executor);
  const auto start = std::chrono::steady_clock::now();
  timer.expires_after(std::chrono::milliseconds(ms));
  // A cancelled wait throws system_error(operation_aborted); the executor maps it.
  co_await timer.async_wait(boost::asio::use_awaitable);
  co_return Outcome::success({{"slept_ms", ms_since(start)}});
}

JobType sleep_type() {
  JobType t;
  t.name = "sleep";
  t.kind = Kind::io;
  t.description = "Waits for the given number of milliseconds on a timer without holding a thread.";
  t.input_schema = object_schema({{"ms", integer_schema(0, 86'400'000, "How long to wait, in milliseconds.")}},
                                 {"ms"});
  t.async = run_sleep;
  return t;
}

struct EvpMdDeleter {
  void operator()(EVP_MD* md) const noexcept { EVP_MD_free(md); }
};
struct EvpMdCtxDeleter {
  void operator()(EVP_MD_CTX* ctx) const noexcept { EVP_MD_CTX_free(ctx); }
};

Outcome run_hash(const Json& input, const StopFlag& stop) {
  auto data = input.at("data").get<std::string>();
  if (input.value("encoding", "utf8") == "base64") {
    auto decoded = base64_decode(data);
    if (!decoded) return Outcome::failure("handler_error", "data is not valid base64");
    data = std::move(*decoded);
  }
  const auto iterations = input.value("iterations", std::int64_t{1});
  // An explicit fetch keeps OpenSSL 3 from looking the algorithm up again on every init.
  std::unique_ptr<EVP_MD, EvpMdDeleter> md(
      EVP_MD_fetch(nullptr, input.value("algorithm", "sha256") == "sha512" ? "SHA2-512" : "SHA2-256", nullptr));
  std::unique_ptr<EVP_MD_CTX, EvpMdCtxDeleter> ctx(EVP_MD_CTX_new());
  if (!md || !ctx) return Outcome::failure("handler_error", "OpenSSL digest unavailable");

  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int length = 0;
  const void* next = data.data();
  std::size_t next_size = data.size();
  for (std::int64_t i = 0; i < iterations; ++i) {
    if (i % 1024 == 1023 && stop.stop_requested()) return Outcome::failure("cancelled", "stopped");
    if (EVP_DigestInit_ex2(ctx.get(), md.get(), nullptr) != 1 || EVP_DigestUpdate(ctx.get(), next, next_size) != 1 ||
        EVP_DigestFinal_ex(ctx.get(), digest.data(), &length) != 1) {
      return Outcome::failure("handler_error", "OpenSSL digest failed");
    }
    next = digest.data();
    next_size = length;
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(length * 2);
  for (unsigned int i = 0; i < length; ++i) {
    hex += kHex[digest[i] >> 4];
    hex += kHex[digest[i] & 0xf];
  }
  return Outcome::success({{"hex", hex}});
}

JobType hash_type() {
  JobType t;
  t.name = "hash";
  t.kind = Kind::cpu;
  t.description = "Computes an iterated SHA-256 or SHA-512 digest of the data and returns it as hex.";
  t.input_schema = object_schema(
      {{"data", {{"type", "string"}, {"maxLength", 1'048'576}, {"description", "The bytes to digest, as text or base64."}}},
       {"encoding",
        {{"type", "string"}, {"enum", {"utf8", "base64"}}, {"default", "utf8"}, {"description", "How data is encoded."}}},
       {"algorithm",
        {{"type", "string"}, {"enum", {"sha256", "sha512"}}, {"default", "sha256"}, {"description", "Digest algorithm."}}},
       {"iterations",
        {{"type", "integer"},
         {"minimum", 1},
         {"maximum", 10'000'000},
         {"default", 1},
         {"description", "Digest rounds: the first over data, each later one over the previous digest."}}}},
      {"data"});
  t.blocking = run_hash;
  t.extra_check = [](const Json& input) {
    std::vector<FieldError> errors;
    if (input.value("encoding", "utf8") == "base64" && !base64_decode(input.at("data").get<std::string>())) {
      errors.push_back({"/data", "is not valid base64"});
    }
    return errors;
  };
  return t;
}

std::uint64_t isqrt(std::uint64_t n) {
  auto r = static_cast<std::uint64_t>(std::sqrt(static_cast<double>(n)));
  while (r * r > n) --r;
  while ((r + 1) * (r + 1) <= n) ++r;
  return r;
}

/// Odd primes up to `limit` (inclusive), by a plain sieve: limit is at most sqrt(n).
std::vector<std::uint64_t> odd_primes_up_to(std::uint64_t limit) {
  std::vector<bool> composite(limit + 1, false);
  std::vector<std::uint64_t> primes;
  for (std::uint64_t p = 3; p <= limit; p += 2) {
    if (composite[p]) continue;
    primes.push_back(p);
    for (std::uint64_t m = p * p; m <= limit; m += 2 * p) composite[m] = true;
  }
  return primes;
}

// Segmented sieve over odd numbers: memory is O(sqrt(n)) for the base primes plus one segment.
Outcome run_primes(const Json& input, const StopFlag& stop) {
  const auto n = input.at("n").get<std::uint64_t>();
  if (n < 2) return Outcome::success({{"count", 0}});
  constexpr std::uint64_t kSegmentOdds = 256 * 1024;  // one byte per odd number: 256 KiB
  const auto base = odd_primes_up_to(isqrt(n));
  std::vector<std::uint64_t> next(base.size());  // next odd multiple of each base prime to strike
  for (std::size_t i = 0; i < base.size(); ++i) next[i] = base[i] * base[i];
  std::vector<unsigned char> segment(kSegmentOdds);

  std::uint64_t count = 1;  // the prime 2
  for (std::uint64_t low = 3; low <= n; low += 2 * kSegmentOdds) {
    if (stop.stop_requested()) return Outcome::failure("cancelled", "stopped");
    const std::uint64_t high = std::min(n, low + 2 * kSegmentOdds - 1);  // inclusive
    const std::uint64_t odds = (high - low) / 2 + 1;
    std::fill_n(segment.begin(), odds, static_cast<unsigned char>(1));
    for (std::size_t i = 0; i < base.size(); ++i) {
      std::uint64_t m = next[i];
      for (; m <= high; m += 2 * base[i]) segment[(m - low) / 2] = 0;
      next[i] = m;
    }
    count += static_cast<std::uint64_t>(std::count(segment.begin(), segment.begin() + static_cast<std::ptrdiff_t>(odds),
                                                   static_cast<unsigned char>(1)));
  }
  return Outcome::success({{"count", count}});
}

JobType primes_type() {
  JobType t;
  t.name = "primes";
  t.kind = Kind::cpu;
  t.description = "Counts the primes less than or equal to n with a memory-bounded segmented sieve.";
  t.input_schema =
      object_schema({{"n", integer_schema(0, 10'000'000'000, "Upper bound (inclusive) of the primes to count.")}}, {"n"});
  t.blocking = run_primes;
  return t;
}

// Where burn stores its arithmetic, so that the optimiser cannot drop the loop.
volatile std::uint64_t burn_sink = 0;

double thread_cpu_ms() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
}

Outcome run_burn(const Json& input, const StopFlag& stop) {
  const auto target = static_cast<double>(input.at("ms").get<std::int64_t>());
  const double start = thread_cpu_ms();
  std::uint64_t x = 1;
  for (;;) {
    const double used = thread_cpu_ms() - start;
    if (used >= target) return Outcome::success({{"cpu_ms", used}});
    if (stop.stop_requested()) return Outcome::failure("cancelled", "stopped after " + std::to_string(used) + " ms of CPU");
    for (int i = 0; i < 20'000; ++i) x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    burn_sink = x;
  }
}

JobType burn_type() {
  JobType t;
  t.name = "burn";
  t.kind = Kind::cpu;
  t.description = "Spins until the running thread has used the given milliseconds of CPU time.";
  t.input_schema =
      object_schema({{"ms", integer_schema(0, 3'600'000, "CPU time to consume, in milliseconds.")}}, {"ms"});
  t.blocking = run_burn;
  return t;
}

}  // namespace

void register_builtin_types(Catalogue& catalogue, const BuiltinOptions& options) {
  catalogue.add(sleep_type());
  register_http_request_type(catalogue, options);
  catalogue.add(hash_type());
  catalogue.add(primes_type());
  catalogue.add(burn_type());
  if (options.diagnostics) register_diagnostic_types(catalogue);
}

}  // namespace switchyard::workers
