#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <string>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include "api/router.hpp"
#include "server/io_threads.hpp"
#include "server/metrics.hpp"

namespace switchyard::server {

/// Limits of the HTTP front end.
struct HttpOptions {
  std::size_t max_body_bytes = 1 << 20;
  std::size_t max_header_bytes = 16 << 10;
  std::size_t max_connections = 10000;
  std::chrono::milliseconds read_timeout{30000};
  std::chrono::milliseconds write_timeout{30000};
};

/// HTTP/1.1 on Boost.Beast: one coroutine per connection, on the io thread the connection is
/// placed on when accepted (IoThreads::place) and for its whole life, a deadline on
/// reading each request and on writing each response, header and body limits, keep-alive, and
/// pipelined requests answered in order (requests are read and answered one at a time, so
/// nothing piles up).
/// Thread-safety: start() and stop() may be called from any thread.
class HttpServer {
 public:
  HttpServer(IoThreads& io, HttpOptions options, api::Router& router, Metrics& metrics);

  /// Binds and listens; returns the bound endpoint (port 0 resolved). Throws on failure.
  boost::asio::ip::tcp::endpoint listen(const std::string& host, std::uint16_t port);

  /// Starts accepting connections.
  void start();

  /// Stops accepting; open connections close after their current response.
  void stop();

 private:
  boost::asio::awaitable<void> accept_loop();
  boost::asio::awaitable<void> session(boost::asio::ip::tcp::socket socket);
  boost::asio::awaitable<void> refuse(boost::asio::ip::tcp::socket socket);

  IoThreads& io_;
  HttpOptions options_;
  api::Router& router_;
  Metrics& metrics_;
  boost::asio::ip::tcp::acceptor acceptor_;
  std::atomic<std::size_t> connections_{0};
  std::atomic<bool> stopping_{false};
};

}  // namespace switchyard::server
