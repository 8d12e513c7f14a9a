#pragma once

#include <functional>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include <sys/types.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>

namespace switchyard::workers {

/// How a child process ended, as seen by wait4.
struct ExitInfo {
  int status = 0;      ///< raw wait status
  double cpu_ms = 0;   ///< user + system CPU time of the whole process life

  /// True if the process was ended by a signal.
  [[nodiscard]] bool signaled() const noexcept;
  /// The signal that ended it, or 0.
  [[nodiscard]] int signal() const noexcept;
  /// "exit code 0", "signal SIGSEGV (Segmentation fault)", ...
  [[nodiscard]] std::string describe() const;
};

/// Reaps child processes: an Asio signal_set on SIGCHLD drives a wait4(-1, WNOHANG) loop, and
/// each exit is handed to the callback registered for that pid. Signals sent through this class
/// cannot hit a recycled pid: the pid is reaped under the same lock that guards the send.
/// Thread-safety: all members are thread-safe.
class ChildReaper {
 public:
  /// Installs the SIGCHLD handler on `context`; do this before spawning any child.
  explicit ChildReaper(boost::asio::io_context& context);
  ChildReaper(const ChildReaper&) = delete;
  ChildReaper& operator=(const ChildReaper&) = delete;

  /// Starts waiting for SIGCHLD.
  void start();
  /// Stops waiting for SIGCHLD (after the last child is gone).
  void stop();

  /// Registers a live child and what to call (once, from a reaping thread) when it exits.
  void watch(pid_t pid, std::function<void(const ExitInfo&)> on_exit);

  /// Sends `sig` to the child's process group if the child has not been reaped yet.
  /// Returns false if it was already gone.
  bool signal_group(pid_t pid, int sig);

  /// Number of watched children not yet reaped.
  [[nodiscard]] std::size_t alive() const;

  /// Reaps every child that has exited (also called from the SIGCHLD handler).
  void reap();

 private:
  void wait_for_signal();

  boost::asio::signal_set signals_;
  mutable std::mutex mutex_;
  std::unordered_map<pid_t, std::function<void(const ExitInfo&)>> watched_;
  std::unordered_map<pid_t, ExitInfo> unclaimed_;  // exited before watch() was called
  bool stopped_ = false;
};

}  // namespace switchyard::workers
