#include "workers/frame.hpp"

#include <cstring>
#include <stdexcept>

#include <nlohmann/json.hpp>

namespace switchyard::workers {
namespace {

void put_u32(std::string& out, std::uint32_t value) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xffu));
}

std::uint32_t get_u32(const std::uint8_t* p) noexcept {
  return static_cast<std::uint32_t>(p[0]) | (static_cast<std::uint32_t>(p[1]) << 8) |
         (static_cast<std::uint32_t>(p[2]) << 16) | (static_cast<std::uint32_t>(p[3]) << 24);
}

int hex_value(char c) noexcept {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::string_view to_string(FrameError error) noexcept {
  switch (error) {
    case FrameError::bad_magic: return "bad magic";
    case FrameError::bad_version: return "unsupported version";
    case FrameError::bad_type: return "unknown frame type";
    case FrameError::bad_reserved: return "reserved bytes not zero";
    case FrameError::too_long: return "payload over the frame limit";
  }
  return "unknown frame error";
}

std::string encode_frame(FrameType type, const FrameJobId& job_id, std::string_view payload) {
  if (payload.size() > kMaxFramePayload) throw std::length_error("frame payload over the limit");
  std::string out;
  out.reserve(kFrameHeaderSize + payload.size());
  put_u32(out, kFrameMagic);
  out.push_back(static_cast<char>(kFrameVersion));
  out.push_back(static_cast<char>(type));
  out.push_back('\0');
  out.push_back('\0');
  put_u32(out, static_cast<std::uint32_t>(payload.size()));
  out.append(reinterpret_cast<const char*>(job_id.data()), job_id.size());
  out.append(payload);
  return out;
}

HeaderDecode decode_frame_header(std::span<const std::uint8_t, kFrameHeaderSize> bytes) noexcept {
  const std::uint8_t* p = bytes.data();
  if (get_u32(p) != kFrameMagic) return {std::nullopt, FrameError::bad_magic};
  if (p[4] != kFrameVersion) return {std::nullopt, FrameError::bad_version};
  const auto type = p[5];
  if (type < static_cast<std::uint8_t>(FrameType::hello) || type > static_cast<std::uint8_t>(FrameType::result)) {
    return {std::nullopt, FrameError::bad_type};
  }
  if (p[6] != 0 || p[7] != 0) return {std::nullopt, FrameError::bad_reserved};
  FrameHeader header;
  header.type = static_cast<FrameType>(type);
  header.length = get_u32(p + 8);
  if (header.length > kMaxFramePayload) return {std::nullopt, FrameError::too_long};
  std::memcpy(header.job_id.data(), p + 12, header.job_id.size());
  return {header, {}};
}

ResultReply decode_result(const FrameHeader& header, std::string_view payload, const FrameJobId& expected) {
  ResultReply out;
  if (header.type != FrameType::result) {
    out.problem = "unexpected frame type from worker";
    return out;
  }
  if (header.job_id != expected) {
    out.problem = "worker answered for the wrong job id";
    return out;
  }
  const auto reply = nlohmann::json::parse(payload, nullptr, false);
  const auto number = [&reply](const char* key) { return reply.contains(key) && reply[key].is_number(); };
  if (!reply.is_object() || !reply.contains("ok") || !reply["ok"].is_boolean() || !number("cpu_ms") ||
      (reply.contains("cpu_total_ms") && !number("cpu_total_ms"))) {
    out.problem = "malformed result payload from worker";
    return out;
  }
  out.cpu_ms = reply["cpu_ms"].get<double>();
  out.cpu_total_ms = reply.contains("cpu_total_ms") ? reply["cpu_total_ms"].get<double>() : 0.0;
  if (reply["ok"].get<bool>()) {
    out.outcome = Outcome::success(reply.contains("result") ? reply["result"] : nlohmann::json::object());
  } else {
    const auto error = reply.contains("error") ? reply["error"] : nlohmann::json();
    const auto text = [&error](const char* key) -> std::optional<std::string> {
      if (!error.is_object() || !error.contains(key) || !error[key].is_string()) return std::nullopt;
      return error[key].get<std::string>();
    };
    const auto code = text("code");
    if (!code || code->empty()) {
      out.problem = "malformed error in result payload from worker";
      return out;
    }
    out.outcome = Outcome::failure(*code, text("message").value_or(""));
  }
  out.valid = true;
  return out;
}

std::optional<FrameJobId> parse_uuid(std::string_view text) noexcept {
  if (text.size() != 36) return std::nullopt;
  FrameJobId id{};
  std::size_t byte = 0;
  for (std::size_t i = 0; i < text.size();) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (text[i] != '-') return std::nullopt;
      ++i;
      continue;
    }
    const int hi = hex_value(text[i]);
    const int lo = hex_value(text[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    id[byte++] = static_cast<std::uint8_t>(hi * 16 + lo);
    i += 2;
  }
  return id;
}

std::string format_uuid(const FrameJobId& id) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(36);
  for (std::size_t i = 0; i < id.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out.push_back('-');
    out.push_back(kHex[id[i] >> 4]);
    out.push_back(kHex[id[i] & 0x0f]);
  }
  return out;
}

}  // namespace switchyard::workers
