#pragma once

#include <ctime>

#include <sys/resource.h>

namespace switchyard::workers {

/// User plus system CPU time in a rusage, in milliseconds.
inline double rusage_cpu_ms(const rusage& usage) noexcept {
  const auto ms = [](const timeval& tv) {
    return static_cast<double>(tv.tv_sec) * 1e3 + static_cast<double>(tv.tv_usec) / 1e3;
  };
  return ms(usage.ru_utime) + ms(usage.ru_stime);
}

/// CPU time the calling process has used so far, in milliseconds.
inline double process_cpu_ms() noexcept {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return rusage_cpu_ms(usage);
}

/// CPU time of the calling thread, in milliseconds.
inline double thread_cpu_ms() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
}

}  // namespace switchyard::workers
