#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <random>

#include "workers/frame.hpp"

namespace switchyard::server {

/// Makes UUIDv7 job ids (RFC 9562): 48 bits of Unix milliseconds, then a counter seeded at
/// random each millisecond (so ids from one generator are strictly increasing), then random
/// bits. Thread-safety: next() is thread-safe.
class UuidV7Generator {
 public:
  UuidV7Generator();
  /// A new id, greater than every id this generator returned before.
  workers::FrameJobId next();

 private:
  std::mutex mutex_;
  std::mt19937_64 random_;
  std::uint64_t last_ms_ = 0;
  std::uint32_t counter_ = 0;  // 12 bits in rand_a + 18 bits at the top of rand_b
};

}  // namespace switchyard::server
