#include <doctest/doctest.h>

#include <set>

#include "server/uuid.hpp"

using namespace switchyard;

TEST_CASE("UUIDv7 ids carry version 7, the RFC variant and the current time") {
  server::UuidV7Generator generator;
  const auto before = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch()).count();
  const auto id = generator.next();
  CHECK((id[6] >> 4) == 7);
  CHECK((id[8] >> 6) == 2);
  std::uint64_t ms = 0;
  for (int i = 0; i < 6; ++i) ms = (ms << 8) | id[static_cast<std::size_t>(i)];
  CHECK(static_cast<std::int64_t>(ms) >= before);
  CHECK(static_cast<std::int64_t>(ms) <= before + 1000);
}

TEST_CASE("ids from one generator are unique and strictly increasing") {
  server::UuidV7Generator generator;
  std::string previous;
  std::set<std::string> seen;
  for (int i = 0; i < 100000; ++i) {
    const std::string id = workers::format_uuid(generator.next());
    REQUIRE(id > previous);
    previous = id;
    seen.insert(id);
  }
  CHECK(seen.size() == 100000);
}
