#include <cstdio>
#include <thread>
#include <vector>

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
    return switchyard::workers::worker_main(worker->options);
  }
  if (auto* health = std::get_if<HealthcheckCommand>(&command)) return run_healthcheck(*health);
  return run_server(std::get<ServeCommand>(command).config);
}
