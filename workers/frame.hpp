#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "workers/job_type.hpp"

namespace switchyard::workers {

/// The frames exchanged between the server and a worker process over a socketpair.
/// Layout (little-endian): magic "SWYD" (4), version (1), type (1), reserved (2, zero),
/// payload length (4), job id (16 bytes, the job's UUID), then `length` bytes of JSON.
/// A frame that breaks any rule is a protocol error: the server kills the worker that sent it.
enum class FrameType : std::uint8_t {
  hello = 1,   ///< worker → server once after start: {"pid", "cpu_total_ms"}; job id all zero
  run = 2,     ///< server → worker: {"type", "input"}
  result = 3,  ///< worker → server: {"ok", "result"|"error", "cpu_ms", "cpu_total_ms"}
};

/// A 128-bit job identifier as carried in frames.
using FrameJobId = std::array<std::uint8_t, 16>;

inline constexpr std::uint32_t kFrameMagic = 0x44595753;  // "SWYD" read as little-endian
inline constexpr std::uint8_t kFrameVersion = 1;
inline constexpr std::size_t kFrameHeaderSize = 28;
/// Hard cap on a payload: a job's input is bounded by the HTTP body limit, a result by this.
inline constexpr std::uint32_t kMaxFramePayload = 64u << 20;

/// A decoded frame header.
struct FrameHeader {
  FrameType type{};
  std::uint32_t length = 0;
  FrameJobId job_id{};
};

/// Why a header was rejected.
enum class FrameError { bad_magic, bad_version, bad_type, bad_reserved, too_long };

/// A human-readable name for a FrameError.
std::string_view to_string(FrameError error) noexcept;

/// Result of decoding a header: either a header or an error.
struct HeaderDecode {
  std::optional<FrameHeader> header;
  FrameError error{};
};

/// Serialises a complete frame (header + payload). Throws std::length_error if the payload
/// exceeds kMaxFramePayload.
std::string encode_frame(FrameType type, const FrameJobId& job_id, std::string_view payload);

/// Decodes and checks a header from exactly kFrameHeaderSize bytes. Pure; thread-safe.
HeaderDecode decode_frame_header(std::span<const std::uint8_t, kFrameHeaderSize> bytes) noexcept;

/// A worker's answer to a run frame, decoded and checked against the job it was asked to run.
struct ResultReply {
  bool valid = false;       ///< false: a protocol error (the worker must be killed); see problem
  std::string problem;
  Outcome outcome;
  double cpu_ms = 0;        ///< CPU time of this job in the worker
  double cpu_total_ms = 0;  ///< the worker's CPU time so far
};

/// Checks that a frame is a result for `expected` with a well-formed payload
/// ({"ok", "result"|"error", "cpu_ms", "cpu_total_ms"}). Pure; never throws.
ResultReply decode_result(const FrameHeader& header, std::string_view payload, const FrameJobId& expected);

/// Parses a canonical UUID string ("8-4-4-4-12" hex) into 16 bytes; nullopt if malformed.
std::optional<FrameJobId> parse_uuid(std::string_view text) noexcept;

/// Formats 16 bytes as a canonical lower-case UUID string.
std::string format_uuid(const FrameJobId& id);

}  // namespace switchyard::workers
