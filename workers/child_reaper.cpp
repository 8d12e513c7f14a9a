#include "workers/child_reaper.hpp"

#include <csignal>
#include <cstring>
#include <vector>

#include <sys/resource.h>
#include <sys/wait.h>

#include "workers/cpu_time.hpp"

namespace switchyard::workers {

bool ExitInfo::signaled() const noexcept { return WIFSIGNALED(status); }

int ExitInfo::signal() const noexcept { return WIFSIGNALED(status) ? WTERMSIG(status) : 0; }

std::string ExitInfo::describe() const {
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    const char* abbrev = sigabbrev_np(sig);
    std::string name = abbrev != nullptr ? std::string("SIG") + abbrev : "signal " + std::to_string(sig);
    return "signal " + name + " (" + strsignal(sig) + ")";
  }
  if (WIFEXITED(status)) return "exit code " + std::to_string(WEXITSTATUS(status));
  return "status " + std::to_string(status);
}

ChildReaper::ChildReaper(boost::asio::io_context& context) : signals_(context, SIGCHLD) {}

void ChildReaper::start() {
  wait_for_signal();
  reap();  // children that exited before the handler was armed
}

void ChildReaper::stop() {
  std::lock_guard lock(mutex_);
  stopped_ = true;
  boost::system::error_code ignored;
  signals_.cancel(ignored);
}

void ChildReaper::wait_for_signal() {
  signals_.async_wait([this](const boost::system::error_code& error, int) {
    if (error) return;
    reap();
    {
      std::lock_guard lock(mutex_);
      if (stopped_) return;
    }
    wait_for_signal();
  });
}

void ChildReaper::watch(pid_t pid, std::function<void(const ExitInfo&)> on_exit) {
  std::unique_lock lock(mutex_);
  if (auto gone = unclaimed_.find(pid); gone != unclaimed_.end()) {
    const ExitInfo info = gone->second;
    unclaimed_.erase(gone);
    lock.unlock();
    on_exit(info);
    return;
  }
  watched_[pid] = std::move(on_exit);
}

bool ChildReaper::signal_group(pid_t pid, int sig) {
  std::lock_guard lock(mutex_);
  if (!watched_.contains(pid)) return false;
  // The worker leads its own process group, so this reaches anything it started too.
  if (::kill(-pid, sig) != 0) ::kill(pid, sig);
  return true;
}

std::size_t ChildReaper::alive() const {
  std::lock_guard lock(mutex_);
  return watched_.size();
}

void ChildReaper::reap() {
  std::vector<std::pair<std::function<void(const ExitInfo&)>, ExitInfo>> exited;
  {
    std::lock_guard lock(mutex_);
    for (;;) {
      int status = 0;
      rusage usage{};
      const pid_t pid = ::wait4(-1, &status, WNOHANG, &usage);
      if (pid <= 0) break;  // 0: children remain, none exited; -1: no children (ECHILD) or EINTR
      ExitInfo info{status, rusage_cpu_ms(usage)};
      if (auto it = watched_.find(pid); it != watched_.end()) {
        exited.emplace_back(std::move(it->second), info);
        watched_.erase(it);
      } else {
        unclaimed_[pid] = info;
      }
    }
  }
  for (auto& [callback, info] : exited) callback(info);
}

}  // namespace switchyard::workers
