#pragma once

#include <cstddef>
#include <string>

#include <sys/types.h>

#include "workers/job_type.hpp"

namespace switchyard::workers {

/// How a worker process was started (its command line, built by the process pool).
struct WorkerOptions {
  int fd = 3;                 ///< the worker's end of the socketpair
  pid_t parent = 0;           ///< the server's pid; the worker exits if its parent is gone
  BuiltinOptions builtin;     ///< the same catalogue options as the server
  std::string log_format = "text";  ///< the server's log format, so worker lines match
  std::size_t memory_mb = 0;        ///< RLIMIT_AS of the worker in MiB; 0 = unlimited
  std::size_t max_files = 0;        ///< RLIMIT_NOFILE of the worker; 0 = inherited
  std::size_t cpu_seconds = 0;      ///< CPU seconds one job may use (RLIMIT_CPU per job); 0 = no limit
  bool sandbox = true;              ///< seccomp: a job cannot create processes or exec programs
  bool fail_boot = false;           ///< diagnostic: exit before hello, to test boot-failure handling
};

/// Installs the worker's seccomp filter: fork, vfork, clone without CLONE_THREAD and execve
/// fail with EPERM (clone3 with ENOSYS, so threads fall back to clone). Threads stay allowed.
/// Returns false (with errno-style text in `problem`) if the kernel refused the filter.
bool install_process_sandbox(std::string& problem);

/// The loop inside a worker process: say hello, then read a run frame, run the job, write the
/// result frame, until the server closes the socket. Single-threaded; returns the exit code.
/// Called only in a freshly exec'd process (never in a fork of the threaded server).
int worker_main(const WorkerOptions& options);

}  // namespace switchyard::workers
