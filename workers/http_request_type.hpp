#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/ip/address.hpp>

#include "workers/job_type.hpp"

namespace switchyard::workers {

/// Registers the "http.request" io job type: one HTTP/1.1 request over plain TCP (no TLS, no
/// redirects followed) to a destination that `options.http_allow` permits. Throws
/// std::invalid_argument if the allow list has a malformed entry (see check_http_allow_list).
void register_http_request_type(Catalogue& catalogue, const BuiltinOptions& options);

/// Throws std::invalid_argument naming the first entry of an http.request allow list that is
/// neither a host name nor an IPv4/IPv6 address or CIDR block (e.g. "10.0.0.0/33").
void check_http_allow_list(const std::vector<std::string>& allow);

/// Whether http.request may connect to `address`, one of the addresses the URL host `host`
/// resolved to (or the host itself when it is an IP literal), under the allow list `allow`
/// (BuiltinOptions::http_allow):
/// - an empty list allows loopback only (127.0.0.0/8 and ::1);
/// - otherwise an entry allows the address if it is a host name equal to `host` (ASCII case
///   insensitive) or an address / CIDR block that contains `address`;
/// - link-local addresses (169.254.0.0/16 with the metadata address 169.254.169.254, fe80::/10)
///   and fd00:ec2::254 are allowed only by an address or CIDR entry that lies inside that block
///   itself: never by a host name, by the loopback default, or by a wider block like 0.0.0.0/0.
/// An IPv4-mapped IPv6 address is judged as its IPv4 address. Malformed entries match nothing.
/// Pure; thread-safe.
[[nodiscard]] bool destination_allowed(std::string_view host, const boost::asio::ip::address& address,
                                       const std::vector<std::string>& allow);

}  // namespace switchyard::workers
