#pragma once

#include <chrono>
#include <string>

#include "server/connection_deadline.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>

namespace bench {

using Request = boost::beast::http::request<boost::beast::http::string_body>;
using Response = boost::beast::http::response<boost::beast::http::string_body>;
using Clock = std::chrono::steady_clock;

/// What one request/response exchange gave: a transport error or a response, and how long it took.
struct Exchange {
  boost::system::error_code error;
  Response response;
  Clock::duration elapsed{};
};

/// One keep-alive HTTP/1.1 client connection to a fixed endpoint, used by one coroutine at a
/// time. It connects on first use and again after the server closed it, so a caller only sees
/// an error when a fresh connection fails too. An exchange's time bound is the server's lazily
/// checked ConnectionDeadline, not Beast's tcp_stream: that one starts and cancels a timer
/// around each read and write, CPU taken from the cores the server under test runs on.
/// Not thread-safe: it lives on one io_context.
class HttpConnection {
 public:
  HttpConnection(boost::asio::any_io_executor executor, boost::asio::ip::tcp::endpoint endpoint);

  /// Sends `request` and reads the response; `timeout` bounds the connect, when one is needed,
  /// and then the request and its response.
  boost::asio::awaitable<Exchange> exchange(const Request& request, std::chrono::milliseconds timeout);

  /// Ends the pending deadline wait, so the io_context's run() can return once nothing else is
  /// left to do. For when no exchange follows for a while, e.g. at the end of a phase.
  void idle() { deadline_.cancel(); }

  /// How many times a connection was (re)opened: 1 per connection when keep-alive holds.
  [[nodiscard]] long connects() const { return connects_; }

 private:
  boost::asio::awaitable<boost::system::error_code> ensure_connected(std::chrono::milliseconds timeout);
  boost::asio::awaitable<Exchange> try_exchange(const Request& request, std::chrono::milliseconds timeout);
  void close();

  boost::asio::ip::tcp::socket socket_;
  switchyard::server::ConnectionDeadline deadline_{socket_};  // closes the socket when an exchange overruns
  boost::asio::ip::tcp::endpoint endpoint_;
  boost::beast::flat_buffer buffer_;
  bool open_ = false;
  long connects_ = 0;
};

}  // namespace bench
