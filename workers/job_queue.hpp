#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace switchyard::workers {

/// A priority queue with FIFO order among equal priorities and removal by id.
/// Higher priority first. Not thread-safe: the owner serialises access.
template <typename T>
class JobQueue {
 public:
  /// Adds `item` under `id`; returns false (and adds nothing) if `id` is already queued.
  bool push(const std::string& id, int priority, T item) {
    if (index_.contains(id)) return false;
    const Key key{-static_cast<std::int64_t>(priority), next_seq_++};
    auto [it, inserted] = items_.emplace(key, Entry{id, std::move(item)});
    index_.emplace(id, it);
    return inserted;
  }

  /// Removes and returns the first item, or nullopt when empty.
  std::optional<T> pop() {
    if (items_.empty()) return std::nullopt;
    return take(items_.begin());
  }

  /// Removes and returns the first item for which `eligible(item)` is true.
  std::optional<T> pop_first(const std::function<bool(const T&)>& eligible) {
    for (auto it = items_.begin(); it != items_.end(); ++it) {
      if (eligible(it->second.item)) return take(it);
    }
    return std::nullopt;
  }

  /// Removes the item queued under `id`; nullopt if it is not queued.
  std::optional<T> remove(const std::string& id) {
    auto found = index_.find(id);
    if (found == index_.end()) return std::nullopt;
    return take(found->second);
  }

  /// Removes and returns every item in queue order.
  std::vector<T> drain() {
    std::vector<T> out;
    out.reserve(items_.size());
    for (auto& [key, entry] : items_) out.push_back(std::move(entry.item));
    items_.clear();
    index_.clear();
    return out;
  }

  [[nodiscard]] std::size_t size() const noexcept { return items_.size(); }
  [[nodiscard]] bool empty() const noexcept { return items_.empty(); }

 private:
  using Key = std::pair<std::int64_t, std::uint64_t>;  // (-priority, arrival sequence)
  struct Entry {
    std::string id;
    T item;
  };
  using Map = std::map<Key, Entry>;

  T take(typename Map::iterator it) {
    T item = std::move(it->second.item);
    index_.erase(it->second.id);
    items_.erase(it);
    return item;
  }

  Map items_;
  std::unordered_map<std::string, typename Map::iterator> index_;
  std::uint64_t next_seq_ = 0;
};

}  // namespace switchyard::workers
