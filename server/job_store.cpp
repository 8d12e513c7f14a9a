#include "server/job_store.hpp"

namespace switchyard::server {

void JobStore::insert_all(const std::vector<api::Job>& jobs, const std::optional<std::string>& key,
                          IdempotencyRecord record) {
  for (const auto& job : jobs) insert(job);
  if (key) remember_key(*key, std::move(record));
}

MemoryJobStore::MemoryJobStore(std::size_t retain_terminal) : retain_terminal_(retain_terminal) {}

void MemoryJobStore::insert(api::Job job) {
  // An id this server just made (UUIDv7) is greater than every id before it, so it goes at the
  // end: with that hint the map inserts in constant time, instead of a descent whose every step
  // compares two ids that share their timestamp prefix. Other ids (a reload, jobs claimed from a
  // shared store) cost one comparison more and land in order.
  const auto before = jobs_.size();
  auto id = job.id;
  const auto it = jobs_.emplace_hint(jobs_.end(), std::move(id), std::move(job));
  if (jobs_.size() > before) by_id_.emplace(it->first, it);  // the view is of the map's own key, which stays put
}

const api::Job* MemoryJobStore::find(const std::string& id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &it->second->second;
}

bool MemoryJobStore::update(const std::string& id, const std::function<void(api::Job&)>& change) {
  auto it = by_id_.find(id);
  if (it == by_id_.end()) return false;
  change(it->second->second);
  return true;
}

Evicted MemoryJobStore::retire(const std::string& id) {
  finished_order_.push_back(id);
  Evicted evicted;
  while (finished_order_.size() > retain_terminal_) evict_oldest(evicted);
  return evicted;
}

Evicted MemoryJobStore::expire(api::TimePoint cutoff) {
  Evicted evicted;
  while (!finished_order_.empty()) {
    const auto* oldest = find(finished_order_.front());
    if (oldest != nullptr && oldest->finished_at && *oldest->finished_at >= cutoff) break;
    evict_oldest(evicted);
  }
  return evicted;
}

void MemoryJobStore::evict_oldest(Evicted& evicted) {
  std::string victim = std::move(finished_order_.front());
  finished_order_.pop_front();
  if (auto found = by_id_.find(victim); found != by_id_.end()) {
    const auto node = found->second;
    by_id_.erase(found);  // first: its key is a view of the node's
    jobs_.erase(node);
  }
  if (auto key = key_of_job_.find(victim); key != key_of_job_.end()) {
    // The key goes with the first of its jobs to go: a replay must return every job it made.
    if (auto record = keys_.find(key->second); record != keys_.end()) {
      for (const auto& other : record->second.job_ids) key_of_job_.erase(other);
      evicted.keys.push_back(record->first);
      keys_.erase(record);
    }
    key_of_job_.erase(victim);
  }
  evicted.job_ids.push_back(std::move(victim));
}

api::ListPage MemoryJobStore::list(const api::ListQuery& query) const {
  api::ListPage page;
  auto matches = [&query](const api::Job& job) {
    return (!query.status || job.status == *query.status) && (!query.type || job.type == *query.type) &&
           (!query.model || job.model == *query.model);
  };
  // Newest first: walk backwards from just before the cursor's id.
  auto it = query.after_id ? jobs_.lower_bound(*query.after_id) : jobs_.end();
  while (it != jobs_.begin()) {
    --it;
    if (!matches(it->second)) continue;
    if (page.jobs.size() == query.limit) {
      page.next_cursor = api::make_cursor(page.jobs.back().id);
      break;
    }
    page.jobs.push_back(it->second);
  }
  return page;
}

const IdempotencyRecord* MemoryJobStore::find_key(const std::string& key) const {
  auto it = keys_.find(key);
  return it == keys_.end() ? nullptr : &it->second;
}

void MemoryJobStore::remember_key(const std::string& key, IdempotencyRecord record) {
  for (const auto& id : record.job_ids) key_of_job_[id] = key;
  keys_[key] = std::move(record);
}

}  // namespace switchyard::server
