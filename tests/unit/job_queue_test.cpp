#include <doctest/doctest.h>

#include "workers/job_queue.hpp"

using switchyard::workers::JobQueue;

TEST_CASE("higher priority first, FIFO among equals") {
  JobQueue<std::string> queue;
  queue.push("a", 0, "a");
  queue.push("b", 5, "b");
  queue.push("c", 0, "c");
  queue.push("d", 5, "d");
  queue.push("e", -3, "e");
  std::string order;
  while (auto item = queue.pop()) order += *item;
  CHECK(order == "bdace");
  CHECK(queue.empty());
}

TEST_CASE("remove by id keeps the order of the rest") {
  JobQueue<int> queue;
  for (int i = 0; i < 5; ++i) queue.push(std::to_string(i), 0, i);
  CHECK(queue.remove("2") == 2);
  CHECK_FALSE(queue.remove("2"));
  CHECK_FALSE(queue.remove("missing"));
  CHECK(queue.size() == 4);
  std::vector<int> rest;
  while (auto item = queue.pop()) rest.push_back(*item);
  CHECK(rest == std::vector<int>{0, 1, 3, 4});
}

TEST_CASE("a duplicate id is refused") {
  JobQueue<int> queue;
  CHECK(queue.push("x", 0, 1));
  CHECK_FALSE(queue.push("x", 9, 2));
  CHECK(queue.size() == 1);
  CHECK(queue.pop() == 1);
}

TEST_CASE("pop_first skips ineligible items without reordering them") {
  JobQueue<int> queue;
  queue.push("1", 0, 1);
  queue.push("2", 0, 2);
  queue.push("3", 0, 3);
  CHECK(queue.pop_first([](int v) { return v % 2 == 0; }) == 2);
  CHECK_FALSE(queue.pop_first([](int v) { return v > 10; }));
  CHECK(queue.drain() == std::vector<int>{1, 3});
  CHECK(queue.empty());
}
