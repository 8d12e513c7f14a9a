#include <doctest/doctest.h>

#include <memory>

#include <boost/asio/io_context.hpp>
#include <boost/asio/strand.hpp>

#include "workers/cpu_time.hpp"
#include "workers/metered_executor.hpp"

using namespace switchyard;

namespace {

void burn_cpu_ms(double ms) {
  const double start = workers::thread_cpu_ms();
  while (workers::thread_cpu_ms() - start < ms) {
  }
}

}  // namespace

TEST_CASE("MeteredExecutor charges each queued function's CPU time until the meter is closed") {
  boost::asio::io_context context;
  auto meter = std::make_shared<workers::CpuMeter>();
  const workers::MeteredExecutor executor(boost::asio::make_strand(context), meter);

  executor.execute([] { burn_cpu_ms(20); });
  executor.execute([] { burn_cpu_ms(10); });
  CHECK(meter->total_ms() == 0);  // queued, not run inline: the caller is outside the strand
  context.run();
  const double charged = meter->total_ms();
  CHECK(charged >= 30);
  CHECK(charged < 300);
  CHECK(meter->open());

  meter->close();
  CHECK_FALSE(meter->open());
  bool ran = false;
  executor.execute([&ran] {
    burn_cpu_ms(10);
    ran = true;
  });
  context.restart();
  context.run();
  CHECK(ran);
  CHECK(meter->total_ms() == charged);  // run, but no longer timed or charged
}

TEST_CASE("closing the meter inside a stretch charges that stretch up to the close, and no further") {
  boost::asio::io_context context;
  auto meter = std::make_shared<workers::CpuMeter>();
  const workers::MeteredExecutor executor(boost::asio::make_strand(context), meter);
  double at_close = -1;
  executor.execute([&] {
    burn_cpu_ms(20);
    meter->close();
    at_close = meter->total_ms();  // final already: the job's end reads it here
    burn_cpu_ms(30);               // the executor's bookkeeping after the job: not charged
  });
  context.run();
  CHECK(at_close >= 20);
  CHECK(at_close < 45);
  CHECK(meter->total_ms() == at_close);
}
