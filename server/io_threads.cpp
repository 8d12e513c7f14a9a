#include "server/io_threads.hpp"

#include <algorithm>
#include <cstdlib>
#include <string>

#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#include <boost/asio/executor_work_guard.hpp>

#include "workers/thread_executor.hpp"

namespace switchyard::server {

namespace asio = boost::asio;

namespace {

constexpr auto kStretch = std::chrono::milliseconds(10);
constexpr double kSpill = 0.5;

std::int64_t cpu_ns(clockid_t clock) {
  timespec now{};
  if (clock_gettime(clock, &now) != 0) return 0;
  return static_cast<std::int64_t>(now.tv_sec) * 1'000'000'000 + now.tv_nsec;
}

/// The run-queue nanoseconds from a schedstat file ("<on cpu> <waiting> <slices>"), read again
/// from its start; -1 if it cannot be read. (Its on-CPU figure is not used: for a thread on a CPU
/// it lags by up to a scheduler tick, where the thread's CPU clock is exact.)
std::int64_t schedstat_wait_ns(int fd) {
  char text[96];
  const ssize_t n = ::pread(fd, text, sizeof text - 1, 0);
  if (n <= 0) return -1;
  text[n] = '\0';
  char* end = nullptr;
  std::strtoll(text, &end, 10);
  if (end == text) return -1;
  const char* waiting_at = end;
  const long long waiting = std::strtoll(waiting_at, &end, 10);
  if (end == waiting_at) return -1;
  return waiting;
}

}  // namespace

IoThreads::IoThreads(int count) : tids_(static_cast<std::size_t>(std::max(1, count))) {
  // Concurrency hint 1: each context is run by one thread (other threads still post to it).
  for (int i = 0; i < std::max(1, count); ++i) contexts_.push_back(std::make_unique<asio::io_context>(1));
  schedstat_fds_.assign(contexts_.size(), -1);
  wait_ns_.assign(contexts_.size(), 0);
  last_demand_ns_.assign(contexts_.size(), 0);
  busy_.assign(contexts_.size(), 0.0);
}

IoThreads::~IoThreads() {
  for (int fd : schedstat_fds_) {
    if (fd >= 0) ::close(fd);
  }
}

std::int64_t IoThreads::demand_ns(std::size_t index) {
  const std::int64_t ran = cpu_ns(clocks_[index]);
  int& fd = schedstat_fds_[index];
  if (fd == -1) {
    const std::string path = "/proc/self/task/" + std::to_string(tids_[index].load()) + "/schedstat";
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fd = -2;  // not there: the CPU clock alone from now on
  }
  if (fd >= 0) {
    const std::int64_t waited = schedstat_wait_ns(fd);
    if (waited >= 0) {
      wait_ns_[index] = waited;
    } else {
      ::close(fd);  // the wait stays at its last reading: no more of it is counted
      fd = -2;
    }
  }
  return ran + wait_ns_[index];
}

std::vector<asio::io_context*> IoThreads::contexts() const {
  std::vector<asio::io_context*> all;
  for (const auto& context : contexts_) all.push_back(context.get());
  return all;
}

void IoThreads::run() {
  for (std::size_t i = 0; i < contexts_.size(); ++i) {  // an earlier run's threads are gone
    tids_[i].store(0);
    if (schedstat_fds_[i] >= 0) ::close(schedstat_fds_[i]);
    schedstat_fds_[i] = -1;
    wait_ns_[i] = 0;
  }
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> work;
  for (auto& context : contexts_) work.push_back(asio::make_work_guard(*context));  // idle is not done
  for (std::size_t i = 1; i < contexts_.size(); ++i) {
    threads_.emplace_back([this, i] {
      const std::string name = "switchyard-io-" + std::to_string(i);
      pthread_setname_np(pthread_self(), name.c_str());
      tids_[i].store(static_cast<int>(::gettid()));
      const workers::IoThreadMark mark(*contexts_[i]);
      contexts_[i]->run();
    });
  }
  tids_[0].store(static_cast<int>(::gettid()));
  // Each thread's id is its first act: wait for them, so that the first measurement already
  // reads schedstat and every later one compares like with like.
  for (auto& tid : tids_) {
    while (tid.load() == 0) std::this_thread::yield();
  }
  clocks_.assign(contexts_.size(), CLOCK_THREAD_CPUTIME_ID);
  pthread_getcpuclockid(pthread_self(), &clocks_[0]);
  for (std::size_t i = 1; i < contexts_.size(); ++i)
    pthread_getcpuclockid(threads_[i - 1].native_handle(), &clocks_[i]);
  for (std::size_t i = 0; i < contexts_.size(); ++i) last_demand_ns_[i] = demand_ns(i);
  measured_at_ = Clock::now();
  {
    const workers::IoThreadMark mark(*contexts_[0]);
    contexts_[0]->run();
  }
  for (auto& thread : threads_) thread.join();
  threads_.clear();
}

void IoThreads::stop() {
  for (auto& context : contexts_) context->stop();
}

std::size_t IoThreads::choose(const std::vector<double>& busy) {
  for (std::size_t i = 0; i < busy.size(); ++i) {
    if (busy[i] < kSpill) return i;
  }
  return static_cast<std::size_t>(std::min_element(busy.begin(), busy.end()) - busy.begin());
}

std::size_t IoThreads::place() {
  if (contexts_.size() == 1) return 0;
  const auto now = Clock::now();
  if (!clocks_.empty() && now - measured_at_ >= kStretch) {
    const double stretch_ns = static_cast<double>(std::chrono::nanoseconds(now - measured_at_).count());
    for (std::size_t i = 0; i < contexts_.size(); ++i) {
      const std::int64_t used = demand_ns(i);
      busy_[i] = static_cast<double>(used - last_demand_ns_[i]) / stretch_ns;
      last_demand_ns_[i] = used;
    }
    measured_at_ = now;
  }
  return choose(busy_);
}

}  // namespace switchyard::server
