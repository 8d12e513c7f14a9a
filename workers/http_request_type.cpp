#include "workers/http_request_type.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <utility>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/url/parse.hpp>
#include <openssl/evp.h>

namespace switchyard::workers {
namespace {

namespace asio = boost::asio;
namespace http = boost::beast::http;
using Json = nlohmann::json;
using asio::ip::address;
using asio::ip::tcp;

constexpr std::size_t kMaxHeaderBytes = 64 * 1024;

// ---- destination policy ---------------------------------------------------------------------

struct Block {
  address network;
  unsigned prefix = 0;
};

address unmapped(const address& a) {
  if (a.is_v6() && a.to_v6().is_v4_mapped()) return asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6());
  return a;
}

bool contains(const Block& block, const address& a) {
  if (block.network.is_v4() != a.is_v4()) return false;
  auto prefix_equal = [&](const auto& x, const auto& y) {
    unsigned bits = block.prefix;
    for (std::size_t i = 0; i < x.size() && bits > 0; ++i) {
      const unsigned take = std::min(bits, 8U);
      const auto mask = static_cast<unsigned char>(0xFF00U >> take);
      if ((x[i] & mask) != (y[i] & mask)) return false;
      bits -= take;
    }
    return true;
  };
  return a.is_v4() ? prefix_equal(block.network.to_v4().to_bytes(), a.to_v4().to_bytes())
                   : prefix_equal(block.network.to_v6().to_bytes(), a.to_v6().to_bytes());
}

/// "10.0.0.0/8", "::1", "[fe80::]/10" or "127.0.0.1"; nullopt if the entry is not an address.
std::optional<Block> parse_block(std::string_view entry) {
  std::string_view text = entry;
  std::string_view prefix_text;
  if (auto slash = text.find('/'); slash != std::string_view::npos) {
    prefix_text = text.substr(slash + 1);
    text = text.substr(0, slash);
  }
  if (text.size() >= 2 && text.front() == '[' && text.back() == ']') text = text.substr(1, text.size() - 2);
  boost::system::error_code ec;
  address network = asio::ip::make_address(std::string(text), ec);
  if (ec) return std::nullopt;
  const unsigned width = network.is_v4() ? 32 : 128;
  unsigned prefix = width;
  if (entry.find('/') != std::string_view::npos) {
    if (prefix_text.empty() || prefix_text.size() > 3 ||
        !std::all_of(prefix_text.begin(), prefix_text.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      return std::nullopt;
    }
    prefix = static_cast<unsigned>(std::stoul(std::string(prefix_text)));
    if (prefix > width) return std::nullopt;
  }
  if (network.is_v6() && network.to_v6().is_v4_mapped() && prefix >= 96) {
    return Block{unmapped(network), prefix - 96};
  }
  return Block{network, prefix};
}

bool is_host_name(std::string_view s) {
  return !s.empty() && s.size() <= 253 && std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
           c == '_';
  });
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; };
           return lower(x) == lower(y);
         });
}

/// Blocks that hold cloud metadata services and other host-local surprises.
const std::array<Block, 3>& sensitive_blocks() {
  static const std::array<Block, 3> blocks{Block{asio::ip::make_address("169.254.0.0"), 16},
                                           Block{asio::ip::make_address("fe80::"), 10},
                                           Block{asio::ip::make_address("fd00:ec2::254"), 128}};
  return blocks;
}

// ---- URL and input ------------------------------------------------------------------------

/// Where a request goes, derived from its URL.
struct Target {
  std::string host;                // decoded host name, or the address text
  std::optional<address> literal;  // set when the host is an IP literal
  std::uint16_t port = 80;
  std::string resource;            // path and query, "/" at least
  std::string host_header;
};

/// Parses and checks the URL; on failure returns the message for "/url".
std::pair<std::optional<Target>, std::string> parse_target(std::string_view text) {
  auto parsed = boost::urls::parse_absolute_uri(text);
  if (!parsed) return {std::nullopt, "is not a valid absolute URL"};
  const boost::urls::url_view url = *parsed;
  if (url.scheme_id() == boost::urls::scheme::https) return {std::nullopt, "only http:// is supported"};
  if (url.scheme_id() != boost::urls::scheme::http) return {std::nullopt, "must be an http:// URL"};
  if (!url.has_authority() || url.encoded_host().empty()) return {std::nullopt, "must name a host"};
  if (url.has_userinfo()) return {std::nullopt, "must not contain user info"};
  Target t;
  switch (url.host_type()) {
    case boost::urls::host_type::ipv4:
    case boost::urls::host_type::ipv6: {
      boost::system::error_code ec;
      t.literal = asio::ip::make_address(std::string(url.host_address()), ec);
      if (ec) return {std::nullopt, "has an invalid IP address"};
      t.host = t.literal->to_string();
      break;
    }
    case boost::urls::host_type::name:
      t.host = url.host_name();
      if (!is_host_name(t.host)) return {std::nullopt, "has an invalid host name"};
      break;
    default:
      return {std::nullopt, "has an unsupported host"};
  }
  if (url.has_port() && !url.port().empty()) {
    // port_number() wraps values above 65535 instead of rejecting them, so parse the text.
    const std::string_view digits = url.port();
    unsigned long port = 0;
    for (char c : digits) {
      port = port * 10 + static_cast<unsigned long>(c - '0');  // the grammar allows digits only
      if (port > 65535) break;
    }
    if (port == 0 || port > 65535) return {std::nullopt, "has an invalid port"};
    t.port = static_cast<std::uint16_t>(port);
  }
  t.resource = std::string(url.encoded_target());
  if (t.resource.empty() || t.resource.front() != '/') t.resource.insert(0, "/");
  t.host_header = std::string(url.encoded_host_and_port());
  return {std::move(t), {}};
}

bool is_token(std::string_view s) {
  static constexpr std::string_view kSpecials = "!#$%&'*+-.^_`|~";
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           kSpecials.find(c) != std::string_view::npos;
  });
}

std::string escape_pointer_token(std::string_view token) {
  std::string out;
  for (char c : token) out += c == '~' ? std::string("~0") : c == '/' ? std::string("~1") : std::string(1, c);
  return out;
}

std::vector<FieldError> check_input(const Json& input) {
  std::vector<FieldError> errors;
  if (auto [target, message] = parse_target(input.at("url").get<std::string>()); !target) {
    errors.push_back({"/url", message});
  }
  if (auto headers = input.find("headers"); headers != input.end()) {
    for (const auto& [name, value] : headers->items()) {
      const std::string path = "/headers/" + escape_pointer_token(name);
      const auto& v = value.get_ref<const std::string&>();
      if (!is_token(name)) {
        errors.push_back({path, "is not a valid header name"});
      } else if (iequals(name, "host") || iequals(name, "content-length") || iequals(name, "transfer-encoding") ||
                 iequals(name, "connection")) {
        errors.push_back({path, "is set by the client and cannot be given"});
      } else if (v.find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos) {
        errors.push_back({path, "must not contain CR, LF or NUL"});
      }
    }
  }
  return errors;
}

// ---- running ------------------------------------------------------------------------------

bool valid_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t len = 0;
    std::uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1FU;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0FU;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07U;
    } else {
      return false;
    }
    if (i + len > s.size()) return false;
    for (std::size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3FU);
    }
    static constexpr std::array<std::uint32_t, 5> kMin{0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

std::string base64_encode(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(bytes.data()), static_cast<int>(bytes.size()));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

// Header bytes outside ASCII are obs-text, historically ISO-8859-1; JSON needs UTF-8.
std::string latin1_to_utf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) {
    const auto b = static_cast<unsigned char>(c);
    if (b < 0x80) {
      out += c;
    } else {
      out += static_cast<char>(0xC0 | (b >> 6));
      out += static_cast<char>(0x80 | (b & 0x3F));
    }
  }
  return out;
}

/// What every http.request run shares; immutable after registration.
struct HttpSettings {
  std::vector<std::string> allow;
  std::size_t max_response_bytes = 0;
  int max_timeout_ms = 0;
};

/// An I/O failure as an Outcome, unless the job itself was cancelled: then it propagates.
asio::awaitable<Outcome> io_failure(boost::system::error_code ec, std::string what) {
  const auto state = co_await asio::this_coro::cancellation_state;
  if (ec == asio::error::operation_aborted && state.cancelled() != asio::cancellation_type::none) {
    throw boost::system::system_error(ec, what);
  }
  if (ec == boost::beast::error::timeout) co_return Outcome::failure("timeout", what + ": timed out");
  co_return Outcome::failure("http_error", what + ": " + ec.message());
}

double ms_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

asio::awaitable<Outcome> run_http_request(Json input, std::shared_ptr<const HttpSettings> settings) {
  const auto start = std::chrono::steady_clock::now();
  auto [parsed, url_error] = parse_target(input.at("url").get<std::string>());
  if (!parsed) co_return Outcome::failure("handler_error", "url " + url_error);
  const Target target = std::move(*parsed);
  const auto timeout = std::chrono::milliseconds(input.value("timeout_ms", settings->max_timeout_ms));
  const auto verb = http::string_to_verb(input.value("method", "GET"));
  auto executor = co_await asio::this_coro::executor;

  std::vector<tcp::endpoint> endpoints;
  if (target.literal) {
    endpoints.emplace_back(*target.literal, target.port);
  } else {
    // getaddrinfo cannot be interrupted: a slow lookup delays cancellation until it returns.
    tcp::resolver resolver(executor);
    auto [ec, results] = co_await resolver.async_resolve(target.host, std::to_string(target.port),
                                                         tcp::resolver::numeric_service,
                                                         asio::as_tuple(asio::use_awaitable));
    if (ec) co_return co_await io_failure(ec, "could not resolve " + target.host);
    for (const auto& entry : results) endpoints.push_back(entry.endpoint());
    if (endpoints.empty()) co_return Outcome::failure("http_error", "no address for " + target.host);
  }
  // Every address must pass, or a name with one public and one private address would be a way in.
  for (const auto& endpoint : endpoints) {
    if (!destination_allowed(target.host, endpoint.address(), settings->allow)) {
      co_return Outcome::failure("destination_denied", "destination " + target.host + " (" +
                                                           endpoint.address().to_string() + ") is not allowed");
    }
  }

  boost::beast::tcp_stream stream(executor);
  stream.expires_after(timeout);  // one deadline for connect, write and read together
  if (auto [ec, ep] = co_await stream.async_connect(endpoints, asio::as_tuple(asio::use_awaitable)); ec) {
    co_return co_await io_failure(ec, "could not connect to " + target.host_header);
  }

  http::request<http::string_body> request{verb, target.resource, 11};
  request.set(http::field::host, target.host_header);
  request.set(http::field::user_agent, "switchyard");
  if (auto headers = input.find("headers"); headers != input.end()) {
    for (const auto& [name, value] : headers->items()) request.set(name, value.get<std::string>());
  }
  request.keep_alive(false);
  if (auto body = input.find("body"); body != input.end()) request.body() = body->get<std::string>();
  if (input.contains("body") || verb == http::verb::post || verb == http::verb::put || verb == http::verb::patch) {
    request.prepare_payload();
  }
  if (auto [ec, n] = co_await http::async_write(stream, request, asio::as_tuple(asio::use_awaitable)); ec) {
    co_return co_await io_failure(ec, "could not send the request");
  }

  boost::beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.header_limit(kMaxHeaderBytes);
  parser.body_limit(settings->max_response_bytes);
  if (verb == http::verb::head) parser.skip(true);  // a HEAD response has no body to wait for
  if (auto [ec, n] = co_await http::async_read(stream, buffer, parser, asio::as_tuple(asio::use_awaitable)); ec) {
    if (ec == http::error::body_limit || ec == http::error::header_limit) {
      co_return Outcome::failure("response_too_large", "the response exceeds " +
                                                           std::to_string(settings->max_response_bytes) + " bytes");
    }
    co_return co_await io_failure(ec, "could not read the response");
  }
  boost::system::error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_both, ignored);

  const auto& response = parser.get();
  Json headers = Json::object();
  for (const auto& field : response) {
    std::string name(field.name_string());
    std::transform(name.begin(), name.end(), name.begin(),
                   [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; });
    std::string value(field.value());
    if (!valid_utf8(value)) value = latin1_to_utf8(value);
    if (auto it = headers.find(name); it != headers.end()) {
      it->get_ref<std::string&>() += ", " + value;
    } else {
      headers[name] = std::move(value);
    }
  }
  Json result{{"status", response.result_int()}, {"headers", std::move(headers)}};
  if (valid_utf8(response.body())) {
    result["body"] = response.body();
  } else {
    result["body"] = base64_encode(response.body());
    result["body_encoding"] = "base64";
  }
  result["elapsed_ms"] = ms_since(start);
  co_return Outcome::success(std::move(result));
}

Json input_schema(const BuiltinOptions& options) {
  return {
      {"type", "object"},
      {"additionalProperties", false},
      {"required", {"url"}},
      {"properties",
       {{"url", {{"type", "string"}, {"maxLength", 8192}, {"description", "Absolute http:// URL to request."}}},
        {"method",
         {{"type", "string"},
          {"enum", {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"}},
          {"default", "GET"},
          {"description", "HTTP method."}}},
        {"headers",
         {{"type", "object"},
          {"maxProperties", 100},
          {"additionalProperties", {{"type", "string"}, {"maxLength", 8192}}},
          {"description", "Request header fields, name to value."}}},
        {"body", {{"type", "string"}, {"maxLength", 1 << 20}, {"description", "Request body, sent as is."}}},
        {"timeout_ms",
         {{"type", "integer"},
          {"minimum", 1},
          {"maximum", options.http_max_timeout_ms},
          {"default", options.http_max_timeout_ms},
          {"description", "Deadline for connecting, sending and receiving, in milliseconds."}}}}}};
}

}  // namespace

void check_http_allow_list(const std::vector<std::string>& allow) {
  for (const auto& entry : allow) {
    const bool looks_like_address = entry.find_first_of(":/[]") != std::string::npos;
    if (parse_block(entry) || (!looks_like_address && is_host_name(entry))) continue;
    throw std::invalid_argument("bad http.request allow-list entry '" + entry + "': expected a host name, address or CIDR");
  }
}

bool destination_allowed(std::string_view host, const address& raw, const std::vector<std::string>& allow) {
  const address a = unmapped(raw);
  for (const auto& sensitive : sensitive_blocks()) {
    if (!contains(sensitive, a)) continue;
    return std::any_of(allow.begin(), allow.end(), [&](const std::string& entry) {
      const auto block = parse_block(entry);
      return block && block->prefix >= sensitive.prefix && contains(sensitive, block->network) && contains(*block, a);
    });
  }
  if (allow.empty()) return a.is_loopback();
  return std::any_of(allow.begin(), allow.end(), [&](const std::string& entry) {
    if (auto block = parse_block(entry)) return contains(*block, a);
    return is_host_name(entry) && iequals(entry, host);
  });
}

void register_http_request_type(Catalogue& catalogue, const BuiltinOptions& options) {
  check_http_allow_list(options.http_allow);
  auto settings = std::make_shared<const HttpSettings>(
      HttpSettings{options.http_allow, options.http_max_response_bytes, options.http_max_timeout_ms});
  JobType t;
  t.name = "http.request";
  t.kind = Kind::io;
  t.description = "Makes one outbound HTTP request to an allowed destination and returns the status, headers and body.";
  t.input_schema = input_schema(options);
  // Not a coroutine lambda: the frame of run_http_request owns copies of what it needs.
  t.async = [settings](Json input) { return run_http_request(std::move(input), settings); };
  t.extra_check = check_input;
  catalogue.add(std::move(t));
}

}  // namespace switchyard::workers
