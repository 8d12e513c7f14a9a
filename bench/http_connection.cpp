#include "bench/http_connection.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>

namespace bench {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;

namespace {
constexpr auto kUseTuple = asio::as_tuple(asio::use_awaitable);
}  // namespace

HttpConnection::HttpConnection(asio::any_io_executor executor, asio::ip::tcp::endpoint endpoint)
    : socket_(std::move(executor)), endpoint_(std::move(endpoint)) {}

void HttpConnection::close() {
  beast::error_code ignored;
  socket_.shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
  socket_.close(ignored);
  buffer_.clear();
  open_ = false;
}

asio::awaitable<beast::error_code> HttpConnection::ensure_connected(std::chrono::milliseconds timeout) {
  if (open_) co_return beast::error_code{};
  deadline_.expires_after(timeout);
  auto [error] = co_await socket_.async_connect(endpoint_, kUseTuple);
  if (error) co_return error;
  // Small requests and responses: Nagle would add a delayed-ACK round trip to each one.
  socket_.set_option(asio::ip::tcp::no_delay(true), error);
  open_ = true;
  ++connects_;
  co_return error;
}

asio::awaitable<Exchange> HttpConnection::try_exchange(const Request& request, std::chrono::milliseconds timeout) {
  Exchange result;
  const auto start = Clock::now();
  if (auto error = co_await ensure_connected(timeout)) {
    deadline_.expires_never();
    result.error = error;
    co_return result;
  }
  deadline_.expires_after(timeout);
  auto [write_error, written] = co_await http::async_write(socket_, request, kUseTuple);
  if (!write_error) {
    auto [read_error, read] = co_await http::async_read(socket_, buffer_, result.response, kUseTuple);
    result.error = read_error;
  } else {
    result.error = write_error;
  }
  deadline_.expires_never();  // an idle connection stays open, as with a keep-alive client
  result.elapsed = Clock::now() - start;
  if (result.error || !result.response.keep_alive()) close();
  co_return result;
}

asio::awaitable<Exchange> HttpConnection::exchange(const Request& request, std::chrono::milliseconds timeout) {
  const bool was_open = open_;
  Exchange result = co_await try_exchange(request, timeout);
  // A keep-alive connection the server closed while idle fails on first use: that is not the
  // server refusing this request, so try once more on a fresh connection.
  const bool stale = result.error == http::error::end_of_stream || result.error == asio::error::connection_reset ||
                     result.error == asio::error::broken_pipe;
  if (was_open && stale) result = co_await try_exchange(request, timeout);
  co_return result;
}

}  // namespace bench
