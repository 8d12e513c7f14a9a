#include "server/http_server.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <string>
#include <tuple>
#include <vector>

#include "server/connection_deadline.hpp"
#include "server/log.hpp"

namespace switchyard::server {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

namespace {

constexpr auto kUseTuple = asio::as_tuple(asio::use_awaitable);

/// The response to send, with `response`'s body moved into it.
http::response<http::string_body> to_beast(api::Response&& response, unsigned version, bool keep_alive, bool head) {
  http::response<http::string_body> out{static_cast<http::status>(response.status), version};
  out.set(http::field::server, "switchyard");
  out.set(http::field::content_type, response.content_type);
  for (const auto& [name, value] : response.headers) out.set(name, value);
  out.keep_alive(keep_alive);
  if (head) {
    out.content_length(response.body.size());
  } else {
    out.body() = std::move(response.body);
    out.prepare_payload();
  }
  return out;
}

/// The response's bytes: Beast's serializer run to the end into one string. One flat buffer to
/// write costs far less than writing the message itself, whose nested buffer views Beast walks
/// again on every partial write (about a quarter of a /healthz request's instructions).
std::string serialize(http::response<http::string_body>& response) {
  std::string out;
  out.reserve(256 + response.body().size());
  http::serializer<false, http::string_body> serializer{response};
  beast::error_code error;
  while (!error && !serializer.is_done()) {
    serializer.next(error, [&out, &serializer](beast::error_code&, const auto& buffers) {
      for (const auto buffer : beast::buffers_range_ref(buffers)) {
        out.append(static_cast<const char*>(buffer.data()), buffer.size());
      }
      serializer.consume(beast::buffer_bytes(buffers));
    });
  }
  return out;
}

/// A problem response for a request that could not be parsed, or nullopt to close silently.
std::optional<api::Problem> read_error_problem(const beast::error_code& error, std::size_t max_body,
                                               std::size_t max_header) {
  if (error == http::error::body_limit) {
    return api::make_problem(413, "body_too_large", "the request body exceeds " + std::to_string(max_body) + " bytes");
  }
  if (error == http::error::header_limit) {
    return api::make_problem(431, "headers_too_large",
                             "the request header block exceeds " + std::to_string(max_header) + " bytes");
  }
  if (error.category() == make_error_code(http::error::bad_method).category()) {
    // A malformed request line, header, Content-Length or chunk.
    if (error == http::error::partial_message) return std::nullopt;  // the client went away mid-request
    return api::make_problem(400, "bad_request", "malformed HTTP request: " + error.message());
  }
  return std::nullopt;  // timeouts, resets: nobody to answer
}

/// Lower-case coding names of every Transfer-Encoding field, in order ("gzip, chunked" -> 2).
std::vector<std::string> transfer_codings(const http::request<http::string_body>& message) {
  std::vector<std::string> codings;
  const auto range = message.equal_range(http::field::transfer_encoding);
  for (auto field = range.first; field != range.second; ++field) {
    std::string_view rest = field->value();
    while (!rest.empty()) {
      const auto comma = rest.find(',');
      std::string_view item = rest.substr(0, comma);
      rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
      item = item.substr(0, item.find(';'));  // transfer parameters do not change the coding
      while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
      while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
      std::string name(item);
      for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      codings.push_back(std::move(name));
    }
  }
  return codings;
}

bool valid_host(std::string_view host) {
  static constexpr std::string_view kAllowed = "-._~!$&'()*+,;=:[]%";
  return std::all_of(host.begin(), host.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || kAllowed.find(c) != std::string_view::npos;
  });
}

/// What Beast's parser accepts but RFC 9112 refuses, checked once the header is read and before
/// the body is: framing a proxy in front could read differently (request smuggling), the Host
/// field, and the request target. Returns the problem to answer before closing, or nullopt. An
/// absolute-form target ("http://host/path") is rewritten to origin form, as RFC 9112 3.2.2 asks.
std::optional<api::Problem> check_request_head(http::request<http::string_body>& message) {
  auto bad = [](std::string detail) { return api::make_problem(400, "bad_request", std::move(detail)); };
  const auto te_fields = message.count(http::field::transfer_encoding);
  if (te_fields > 0) {
    const auto codings = transfer_codings(message);
    if (message.version() < 11) return bad("Transfer-Encoding is not allowed in an HTTP/1.0 request");
    if (message.count(http::field::content_length) > 0) {
      return bad("a request must not carry both Content-Length and Transfer-Encoding");
    }
    if (codings.empty() || codings.back() != "chunked") {
      return bad("the final transfer coding must be chunked, or the body's length is unknown");
    }
    if (std::count(codings.begin(), codings.end(), "chunked") > 1) return bad("chunked is applied more than once");
    for (const auto& coding : codings) {
      if (coding != "chunked") {
        return api::make_problem(501, "not_implemented", "the transfer coding '" + coding + "' is not supported");
      }
    }
  }
  const auto hosts = message.count(http::field::host);
  if (hosts > 1) return bad("more than one Host field");
  if (hosts == 0 && message.version() >= 11) return bad("an HTTP/1.1 request needs a Host field");
  if (hosts == 1 && !valid_host(message[http::field::host])) return bad("the Host field is not a valid host[:port]");

  const std::string_view target = message.target();
  if (target.find('#') != std::string_view::npos) return bad("a request target cannot carry a #fragment");
  if (target.starts_with('/')) return std::nullopt;
  for (std::string_view scheme : {"http://", "https://"}) {
    if (target.size() >= scheme.size() && api::iequals(target.substr(0, scheme.size()), scheme)) {
      const auto path = target.find_first_of("/?", scheme.size());
      std::string origin = path == std::string_view::npos ? "/" : std::string(target.substr(path));
      if (origin.front() == '?') origin.insert(origin.begin(), '/');
      message.target(origin);
      return std::nullopt;
    }
  }
  return bad("the request target must be a path such as /v1/jobs (origin form) or an absolute http URL");
}

/// The method as a metrics label: known verbs only, so clients cannot mint label values.
std::string_view method_label(http::verb verb) {
  switch (verb) {
    case http::verb::get: case http::verb::head: case http::verb::post: case http::verb::put:
    case http::verb::delete_: case http::verb::patch: case http::verb::options:
      return http::to_string(verb);
    default:
      return "other";
  }
}

}  // namespace

HttpServer::HttpServer(IoThreads& io, HttpOptions options, api::Router& router, Metrics& metrics)
    : io_(io), options_(options), router_(router), metrics_(metrics), acceptor_(io.main()) {}

tcp::endpoint HttpServer::listen(const std::string& host, std::uint16_t port) {
  const tcp::endpoint endpoint(asio::ip::make_address(host), port);
  acceptor_.open(endpoint.protocol());
  acceptor_.set_option(asio::socket_base::reuse_address(true));
  acceptor_.bind(endpoint);
  acceptor_.listen(asio::socket_base::max_listen_connections);
  return acceptor_.local_endpoint();
}

void HttpServer::start() {
  asio::co_spawn(acceptor_.get_executor(), accept_loop(), asio::detached);
}

void HttpServer::stop() {
  stopping_ = true;
  asio::post(acceptor_.get_executor(), [this] {
    beast::error_code ignored;
    acceptor_.close(ignored);
  });
}

asio::awaitable<void> HttpServer::accept_loop() {
  while (!stopping_) {
    auto [error, accepted] = co_await acceptor_.async_accept(kUseTuple);
    if (error == asio::error::operation_aborted || !acceptor_.is_open()) break;
    if (error) {
      // EMFILE and friends: back off briefly instead of spinning.
      log::event(spdlog::level::warn, "accept failed", {{"error", error.message()}});
      asio::steady_timer pause(acceptor_.get_executor(), std::chrono::milliseconds(50));
      co_await pause.async_wait(kUseTuple);
      continue;
    }
    // The connection moves to the io thread chosen for it (a context of its own: no strand is
    // needed, as nothing else runs on that thread at the same time).
    const std::size_t shard = io_.place();
    tcp::socket socket = shard == 0 ? std::move(accepted) : tcp::socket(io_.context(shard));
    if (shard != 0) {
      beast::error_code move_error;
      const auto protocol = accepted.local_endpoint(move_error).protocol();
      const auto fd = move_error ? -1 : accepted.release(move_error);
      if (!move_error) socket.assign(protocol, fd, move_error);
      if (move_error) {
        if (fd >= 0 && !socket.is_open()) ::close(fd);
        log::event(spdlog::level::warn, "could not move a new connection to its io thread; closed it",
                   {{"error", move_error.message()}, {"io_thread", shard}});
        continue;  // the connection is dropped, as if reset at once
      }
    }
    auto executor = socket.get_executor();
    if (connections_.fetch_add(1) >= options_.max_connections) {
      asio::co_spawn(executor, refuse(std::move(socket)), asio::detached);
      continue;
    }
    asio::co_spawn(executor, session(std::move(socket)), [this](std::exception_ptr failure) {
      connections_.fetch_sub(1);
      if (failure) {
        try {
          std::rethrow_exception(failure);
        } catch (const std::exception& e) {
          log::event(spdlog::level::err, "connection ended by an exception", {{"error", e.what()}});
        }
      }
    });
  }
}

asio::awaitable<void> HttpServer::refuse(tcp::socket socket) {
  api::Problem problem = api::make_problem(503, "too_many_connections", "the server has too many open connections");
  problem.headers.emplace_back("Retry-After", "1");
  auto response = to_beast(api::to_response(problem), 11, false, false);
  {
    ConnectionDeadline deadline(socket);
    deadline.expires_after(std::chrono::seconds(2));
    co_await http::async_write(socket, response, kUseTuple);
  }
  beast::error_code ignored;
  socket.shutdown(tcp::socket::shutdown_send, ignored);
  connections_.fetch_sub(1);
}

asio::awaitable<void> HttpServer::session(tcp::socket socket) {
  ConnectionDeadline deadline(socket);
  beast::flat_buffer buffer;
  for (;;) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(static_cast<std::uint32_t>(options_.max_header_bytes));
    parser.body_limit(options_.max_body_bytes);
    deadline.expires_after(options_.read_timeout);
    auto [read_error, bytes] = co_await http::async_read_header(socket, buffer, parser, kUseTuple);
    std::optional<api::Problem> problem;
    if (!read_error) problem = check_request_head(parser.get());  // before any body byte is read
    if (!read_error && !problem && !parser.is_done()) {
      // curl and others send "Expect: 100-continue" with larger bodies and pause until told to go.
      if (auto expect = parser.get()[http::field::expect]; api::iequals(expect, "100-continue")) {
        http::response<http::empty_body> go_on{http::status::continue_, parser.get().version()};
        co_await http::async_write(socket, go_on, kUseTuple);
      }
      std::tie(read_error, bytes) = co_await http::async_read(socket, buffer, parser, kUseTuple);
    }
    if (read_error == http::error::end_of_stream) break;
    const auto started = std::chrono::steady_clock::now();
    if (read_error) {
      problem = read_error_problem(read_error, options_.max_body_bytes, options_.max_header_bytes);
      if (problem && read_error == http::error::header_limit) {
        // Over the limit before the request line even ended (the parser has no target yet): the
        // target itself is too long.
        if (parser.get().target().empty()) {
          problem = api::make_problem(414, "uri_too_long", "the request target exceeds the header limit of " +
                                                               std::to_string(options_.max_header_bytes) + " bytes");
        }
      }
    }
    if (read_error || problem) {
      if (!problem) break;
      deadline.expires_after(options_.write_timeout);
      auto response = to_beast(api::to_response(*problem), 11, false, false);
      co_await http::async_write(socket, response, kUseTuple);
      metrics_.http_request("unknown", "unmatched", problem->status,
                            std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
      break;
    }

    auto& message = parser.get();
    api::Request request;
    request.method = std::string(message.method_string());
    request.target = std::string(message.target());
    for (const auto& field : message) request.headers.emplace_back(field.name_string(), field.value());
    request.body = std::move(message.body());
    const bool keep_alive = message.keep_alive() && !stopping_;
    const unsigned version = message.version();
    const bool head = request.method == "HEAD";

    deadline.expires_never();  // a long-poll may legitimately take up to the wait cap
    api::Response answer = co_await router_.handle(std::move(request));
    const int status = answer.status;
    const std::string route = std::move(answer.route);
    auto response = to_beast(std::move(answer), version, keep_alive, head);
    const std::string wire = serialize(response);
    deadline.expires_after(options_.write_timeout);
    auto [write_error, written] = co_await asio::async_write(socket, asio::buffer(wire), kUseTuple);
    metrics_.http_request(method_label(message.method()), route, status,
                          std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
    if (write_error || !keep_alive) break;
  }
  beast::error_code ignored;
  socket.shutdown(tcp::socket::shutdown_send, ignored);
}

}  // namespace switchyard::server
