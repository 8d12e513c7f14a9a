#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>

#include "server/app.hpp"
#include "server/config.hpp"
#include "server/log.hpp"
#include "workers/worker_main.hpp"

int main(int argc, char** argv) {
  using namespace switchyard::server;
  Command command = parse_command_line(argc, argv);
  if (auto* exit_now = std::get_if<ExitNow>(&command)) {
    std::fputs(exit_now->text.c_str(), exit_now->code == 0 ? stdout : stderr);
    return exit_now->code;
  }
  if (auto* worker = std::get_if<WorkerCommand>(&command)) {
    log::setup(worker->options.log_format, "info");
    const int code = switchyard::workers::worker_main(worker->options);
    // Leave without atexit handlers: under ASan, LeakSanitizer's exit check clones a tracer task,
    // which the worker's seccomp filter (no processes) refuses, and it would print a fatal error.
    // Worker code is leak-checked in-process by the unit tests; the server process still is.
    spdlog::default_logger_raw()->flush();
    std::fflush(nullptr);
    std::_Exit(code);
  }
  if (auto* health = std::get_if<HealthcheckCommand>(&command)) return run_healthcheck(*health);
  if (auto* migrate = std::get_if<MigrateCommand>(&command)) return run_migrate(*migrate);
  return run_server(std::get<ServeCommand>(command).config);
}
