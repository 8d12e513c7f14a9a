// The CPU ceiling for Switchyard's process model: N forked processes burning the same total CPU
// as a benchmark's `burn` jobs, with no HTTP, no JSON and no job store. Each job spins until
// the thread's CPU clock has advanced the job's milliseconds, as the `burn` job type does.
//
// Two ways to hand out the jobs, both reported:
// - `static` (the ceiling the benchmark compares against): one fork per process for the whole
//   batch; process i runs its share of the jobs back to back. Nothing is spent on dispatch, so
//   this is what the machine can do at best.
// - `pipe`: persistent processes, and the parent sends each job over a pipe and waits for a
//   one-byte answer, as a pool must when jobs arrive one at a time. The gap between the two is
//   the least any per-job dispatch costs; the gap between `pipe` and Switchyard is Switchyard's.
//
// Prints one JSON object: {"mode", "procs", "jobs", "ms", "wall_s", "cpu_s"}.

#include <poll.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "workers/cpu_time.hpp"

namespace {

using switchyard::workers::rusage_cpu_ms;
using switchyard::workers::thread_cpu_ms;

void burn(double ms) {
  const double start = thread_cpu_ms();
  volatile unsigned long sink = 0;
  while (thread_cpu_ms() - start < ms) {
    for (int i = 0; i < 1000; ++i) sink = sink + static_cast<unsigned long>(i);
  }
}

// A child of the static mode: its share of the jobs, then exit without flushing stdio twice.
[[noreturn]] void static_child(long jobs, double ms) {
  for (long i = 0; i < jobs; ++i) burn(ms);
  std::_Exit(0);
}

// A child of the pipe mode: one byte in is a job, one byte out says it is done; EOF ends it.
[[noreturn]] void pipe_child(int jobs_in, int done_out, double ms) {
  char byte = 0;
  while (read(jobs_in, &byte, 1) == 1) {
    burn(ms);
    if (write(done_out, &byte, 1) != 1) break;
  }
  std::_Exit(0);
}

void wait_all(const std::vector<pid_t>& children) {
  for (pid_t pid : children) {
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
  }
}

void run_static(int procs, long jobs, double ms) {
  std::vector<pid_t> children;
  for (int p = 0; p < procs; ++p) {
    const long share = jobs / procs + (p < jobs % procs ? 1 : 0);
    const pid_t pid = fork();
    if (pid == 0) static_child(share, ms);
    if (pid < 0) std::perror("fork"), std::exit(1);
    children.push_back(pid);
  }
  wait_all(children);
}

struct PipeWorker {
  pid_t pid = -1;
  int jobs_out = -1;  // parent writes a job here
  int done_in = -1;   // parent reads a completion here
};

PipeWorker start_pipe_worker(double ms) {
  int to_child[2];
  int from_child[2];
  if (pipe(to_child) != 0 || pipe(from_child) != 0) std::perror("pipe"), std::exit(1);
  const pid_t pid = fork();
  if (pid < 0) std::perror("fork"), std::exit(1);
  if (pid == 0) {
    close(to_child[1]);
    close(from_child[0]);
    pipe_child(to_child[0], from_child[1], ms);
  }
  close(to_child[0]);
  close(from_child[1]);
  return {pid, to_child[1], from_child[0]};
}

void run_pipe(int procs, long jobs, double ms) {
  std::vector<PipeWorker> workers;
  workers.reserve(static_cast<std::size_t>(procs));
  for (int p = 0; p < procs; ++p) workers.push_back(start_pipe_worker(ms));
  const char job = 'j';
  long sent = 0;
  long done = 0;
  for (auto& worker : workers) {
    if (sent < jobs && write(worker.jobs_out, &job, 1) == 1) ++sent;
  }
  std::vector<pollfd> fds;
  fds.reserve(workers.size());
  for (const auto& worker : workers) fds.push_back({worker.done_in, POLLIN, 0});
  while (done < jobs) {
    if (poll(fds.data(), fds.size(), 60'000) <= 0) break;  // bounded: a stuck child ends the run
    for (std::size_t i = 0; i < fds.size(); ++i) {
      char byte = 0;
      if ((fds[i].revents & POLLIN) == 0 || read(fds[i].fd, &byte, 1) != 1) continue;
      ++done;
      if (sent < jobs && write(workers[i].jobs_out, &job, 1) == 1) ++sent;
    }
  }
  std::vector<pid_t> children;
  for (const auto& worker : workers) {
    close(worker.jobs_out);  // EOF: the child leaves its loop
    close(worker.done_in);
    children.push_back(worker.pid);
  }
  wait_all(children);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"CPU ceiling: N processes burning jobs x ms of thread CPU time"};
  int procs = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  long jobs = 400;
  double ms = 10;
  std::string mode = "static";
  app.add_option("--procs", procs, "processes (default: one per core)")->check(CLI::Range(1, 256));
  app.add_option("--jobs", jobs, "jobs in all")->check(CLI::Range(1L, 1'000'000L));
  app.add_option("--ms", ms, "CPU milliseconds per job")->check(CLI::Range(0.0, 60'000.0));
  app.add_option("--mode", mode, "static (one fork per process for the batch) or pipe (a job per message)")
      ->check(CLI::IsMember({"static", "pipe"}));
  CLI11_PARSE(app, argc, argv);

  std::fflush(stdout);  // nothing buffered may be duplicated into the children
  const auto start = std::chrono::steady_clock::now();
  if (mode == "static") {
    run_static(procs, jobs, ms);
  } else {
    run_pipe(procs, jobs, ms);
  }
  const double wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  rusage children{};
  getrusage(RUSAGE_CHILDREN, &children);
  const nlohmann::json out = {{"mode", mode}, {"procs", procs},   {"jobs", jobs},
                              {"ms", ms},     {"wall_s", wall_s}, {"cpu_s", rusage_cpu_ms(children) / 1000.0}};
  std::printf("%s\n", out.dump().c_str());
  return 0;
}
