#include "server/uuid.hpp"

namespace switchyard::server {

UuidV7Generator::UuidV7Generator() : random_(std::random_device{}()) {}

workers::FrameJobId UuidV7Generator::next() {
  std::lock_guard lock(mutex_);
  auto ms = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count());
  constexpr std::uint32_t kCounterMax = (1u << 30) - 1;
  if (ms > last_ms_) {
    last_ms_ = ms;
    counter_ = static_cast<std::uint32_t>(random_() & ((1u << 29) - 1));  // leave room to count up
  } else {
    // Same millisecond (or the clock went back): keep the last timestamp and count up, so ids
    // stay strictly increasing; on counter overflow borrow the next millisecond.
    if (++counter_ > kCounterMax) {
      ++last_ms_;
      counter_ = 0;
    }
  }
  const std::uint64_t random_bits = random_();
  workers::FrameJobId id{};
  for (int i = 0; i < 6; ++i) id[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(last_ms_ >> (40 - 8 * i));
  // Byte 6: version 7 in the high nibble, then counter bits 29..26; byte 7: counter bits 25..18.
  id[6] = static_cast<std::uint8_t>(0x70 | ((counter_ >> 26) & 0x0f));
  id[7] = static_cast<std::uint8_t>(counter_ >> 18);
  // Byte 8: variant 0b10, then counter bits 17..12; bytes 9-10: counter bits 11..0 and 4 random.
  id[8] = static_cast<std::uint8_t>(0x80 | ((counter_ >> 12) & 0x3f));
  id[9] = static_cast<std::uint8_t>(counter_ >> 4);
  id[10] = static_cast<std::uint8_t>(((counter_ & 0x0f) << 4) | (random_bits & 0x0f));
  for (int i = 11; i < 16; ++i) id[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(random_bits >> (8 * (i - 10)));
  return id;
}

}  // namespace switchyard::server
