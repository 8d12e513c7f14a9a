#include <doctest/doctest.h>

#include "server/job_store.hpp"
#include "server/uuid.hpp"

using namespace switchyard;
using api::JobStatus;

namespace {
std::vector<std::string> fill(server::MemoryJobStore& store, int count, const std::string& type = "sleep") {
  static server::UuidV7Generator ids;
  std::vector<std::string> made;
  for (int i = 0; i < count; ++i) {
    api::Job job;
    job.id = workers::format_uuid(ids.next());
    job.type = type;
    store.insert(job);
    made.push_back(job.id);
  }
  return made;
}

void finish(server::MemoryJobStore& store, const std::string& id, JobStatus status = JobStatus::succeeded) {
  store.update(id, [status](api::Job& job) { job.status = status; });
  store.retire(id);
}
}  // namespace

TEST_CASE("retention evicts the oldest-finished terminal jobs, never active ones") {
  server::MemoryJobStore store(2);
  auto ids = fill(store, 5);
  finish(store, ids[3]);
  finish(store, ids[0]);
  CHECK(store.size() == 5);
  store.update(ids[1], [](api::Job& job) { job.status = JobStatus::succeeded; });
  const auto evicted = store.retire(ids[1]);
  REQUIRE(evicted.job_ids.size() == 1);
  CHECK(evicted.job_ids[0] == ids[3]);  // finished first, though created later
  CHECK(store.find(ids[3]) == nullptr);
  CHECK(store.find(ids[0]) != nullptr);
  CHECK(store.find(ids[2]) != nullptr);  // still queued: never evicted
  CHECK(store.find(ids[4]) != nullptr);
  CHECK(store.size() == 4);
}

TEST_CASE("listing is newest first and pages with a cursor") {
  server::MemoryJobStore store(1000);
  auto ids = fill(store, 25);
  api::ListQuery query;
  query.limit = 10;
  std::vector<std::string> seen;
  for (int page = 0; page < 3; ++page) {
    const auto result = store.list(query);
    for (const auto& job : result.jobs) seen.push_back(job.id);
    if (page < 2) {
      REQUIRE(result.next_cursor);
      query.after_id = api::parse_cursor(*result.next_cursor);
    } else {
      CHECK(result.jobs.size() == 5);
      CHECK_FALSE(result.next_cursor);
    }
  }
  std::vector<std::string> expected(ids.rbegin(), ids.rend());
  CHECK(seen == expected);
}

TEST_CASE("jobs inserted out of id order, or twice, list in id order and once") {
  // New ids go at the end of the map (the insertion's hint); an older id, as a durable store's
  // reload may insert, and a repeated id must still land right.
  server::MemoryJobStore store(1000);
  server::UuidV7Generator ids;
  std::vector<std::string> made;
  for (int i = 0; i < 6; ++i) made.push_back(workers::format_uuid(ids.next()));
  for (const int i : {3, 4, 0, 5, 1, 2}) {
    api::Job job;
    job.id = made[static_cast<std::size_t>(i)];
    job.type = "first";
    store.insert(job);
  }
  api::Job again;
  again.id = made[2];
  again.type = "second";
  store.insert(again);  // the first record of an id stays
  CHECK(store.size() == 6);
  REQUIRE(store.find(made[2]) != nullptr);
  CHECK(store.find(made[2])->type == "first");
  api::ListQuery query;
  query.limit = 10;
  std::vector<std::string> seen;
  for (const auto& job : store.list(query).jobs) seen.push_back(job.id);
  CHECK(seen == std::vector<std::string>(made.rbegin(), made.rend()));
  for (const auto& id : made) CHECK(store.find(id) != nullptr);

  // The newest id again: the case the hint serves, where a repeat must not replace nor add.
  api::Job newest_again;
  newest_again.id = made[5];
  newest_again.type = "second";
  store.insert(newest_again);
  CHECK(store.size() == 6);
  REQUIRE(store.find(made[5]) != nullptr);
  CHECK(store.find(made[5])->type == "first");

  // The index still matches the map: the repeated job leaves both when it is evicted.
  server::MemoryJobStore small(0);
  api::Job one;
  one.id = made[0];
  small.insert(one);
  small.insert(one);
  small.update(made[0], [](api::Job& job) { job.status = JobStatus::succeeded; });
  const auto evicted = small.retire(made[0]);
  CHECK(evicted.job_ids == std::vector<std::string>{made[0]});
  CHECK(small.find(made[0]) == nullptr);
  CHECK(small.size() == 0);
}

TEST_CASE("a page that ends exactly at the last match has no cursor") {
  server::MemoryJobStore store(1000);
  fill(store, 10);
  api::ListQuery query;
  query.limit = 10;
  CHECK_FALSE(store.list(query).next_cursor);
}

TEST_CASE("filters by status and type") {
  server::MemoryJobStore store(1000);
  auto sleeps = fill(store, 3, "sleep");
  auto hashes = fill(store, 2, "hash");
  finish(store, sleeps[1], JobStatus::failed);
  api::ListQuery query;
  query.type = "hash";
  CHECK(store.list(query).jobs.size() == 2);
  query.type.reset();
  query.status = JobStatus::failed;
  const auto failed = store.list(query);
  REQUIRE(failed.jobs.size() == 1);
  CHECK(failed.jobs[0].id == sleeps[1]);
}

TEST_CASE("an idempotency key lives as long as its jobs") {
  server::MemoryJobStore store(1);
  auto ids = fill(store, 2);
  store.remember_key("k", {"fp", {ids[0]}});
  REQUIRE(store.find_key("k") != nullptr);
  CHECK(store.find_key("k")->fingerprint == "fp");
  finish(store, ids[0]);
  CHECK(store.find_key("k") != nullptr);
  finish(store, ids[1]);  // evicts ids[0], and the key with it
  CHECK(store.find(ids[0]) == nullptr);
  CHECK(store.find_key("k") == nullptr);
}
