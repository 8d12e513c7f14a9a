#include <doctest/doctest.h>

#include <array>
#include <chrono>
#include <optional>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include "server/connection_deadline.hpp"

using namespace switchyard;
using namespace std::chrono_literals;
namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

/// A connected pair of loopback sockets, the server end with a deadline, and a pending read on
/// it whose end is recorded.
struct Connection {
  Connection()
      : acceptor(context, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)), client(context), server(context) {
    client.connect(acceptor.local_endpoint());
    acceptor.accept(server);
    deadline.emplace(server);
  }

  void read() {
    server.async_read_some(asio::buffer(bytes), [this](const boost::system::error_code& error, std::size_t n) {
      read_error = error;
      read_bytes = n;
      read_ended = Clock::now();
    });
  }

  /// Runs `action` on the io_context after `delay`.
  template <typename Action>
  void after(std::chrono::milliseconds delay, Action action) {
    auto timer = std::make_shared<asio::steady_timer>(context, delay);
    timer->async_wait([timer, action](const boost::system::error_code&) { action(); });
  }

  /// Runs until the pending read ends; returns how long after `started` it did.
  std::chrono::milliseconds run_read() {
    context.run_for(10s);
    context.restart();
    REQUIRE(read_ended);
    return std::chrono::duration_cast<std::chrono::milliseconds>(*read_ended - started);
  }

  /// Starts a read and checks that the deadline cuts it, `at_least` after `started` or later.
  void expect_cut(std::chrono::milliseconds at_least) {
    read();
    const auto took = run_read();
    CHECK(read_error);
    CHECK_FALSE(server.is_open());
    CHECK(took >= at_least);
    CHECK(took < 2s);
  }

  asio::io_context context;
  tcp::acceptor acceptor;
  tcp::socket client;
  tcp::socket server;
  std::optional<server::ConnectionDeadline> deadline;
  std::array<char, 64> bytes{};
  boost::system::error_code read_error;
  std::size_t read_bytes = 0;
  std::optional<Clock::time_point> read_ended;
  Clock::time_point started = Clock::now();
};

}  // namespace

TEST_CASE("a read still pending at the connection's deadline fails and the socket is closed") {
  Connection c;
  c.deadline->expires_after(100ms);
  c.expect_cut(95ms);
}

TEST_CASE("a deadline moved later is the one kept, and one moved earlier is honoured") {
  SUBCASE("later") {
    Connection c;
    c.deadline->expires_after(100ms);
    c.after(60ms, [&c] { c.deadline->expires_after(200ms); });  // now due at about 260 ms
    c.expect_cut(250ms);
  }
  SUBCASE("earlier") {
    Connection c;
    c.deadline->expires_after(60s);
    c.deadline->expires_after(100ms);
    c.expect_cut(95ms);
  }
}

TEST_CASE("no deadline while a request is handled; the next one set is enforced") {
  Connection c;
  c.deadline->expires_after(50ms);
  c.deadline->expires_never();
  c.after(300ms, [&c] { asio::write(c.client, asio::buffer("ping", 4)); });
  c.read();
  const auto took = c.run_read();
  CHECK_FALSE(c.read_error);  // the timer woke at 50 ms and let it be
  CHECK(c.read_bytes == 4);
  CHECK(took >= 295ms);

  c.started = Clock::now();
  c.read_ended.reset();
  c.deadline->expires_after(100ms);
  c.expect_cut(95ms);
}

TEST_CASE("a connection that ends before its deadline is left alone") {
  Connection c;
  c.deadline->expires_after(50ms);
  c.deadline.reset();  // the session ended: the pending wait must not touch the socket
  bool fired = false;
  c.after(150ms, [&fired] { fired = true; });
  c.context.run_for(5s);
  CHECK(fired);
  CHECK(c.server.is_open());
}

TEST_CASE("cancel ends the pending wait at once, and a deadline set afterwards is enforced") {
  Connection c;
  c.deadline->expires_after(60s);
  c.deadline->cancel();
  const auto before = Clock::now();
  c.context.run_for(10s);  // returns as soon as nothing is left to wait for
  CHECK(Clock::now() - before < 2s);
  CHECK(c.server.is_open());

  c.context.restart();
  c.started = Clock::now();
  c.deadline->expires_after(100ms);
  c.expect_cut(95ms);
}
