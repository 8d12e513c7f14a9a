// libFuzzer target: the worker frame protocol (workers/frame.hpp), which the server uses to read
// what a worker process sends it.
//
// The input is a frame as it arrives on the socket: the first kFrameHeaderSize bytes are the
// header (zero-padded when the input is shorter), the rest is the payload. Checked:
//   - decode_frame_header agrees with an independent reading of the layout, never accepts a
//     length over kMaxFramePayload, and encode_frame(decode(x)) gives back the same bytes;
//   - decode_result never throws, agrees with an independent reading of the result payload, is
//     valid exactly when it reports no problem, refuses other frame types and other job ids,
//     and a valid reply re-encoded the way worker_main does decodes to the same outcome;
//   - parse_uuid / format_uuid round-trip.
// The whole input is also tried as a bare result payload, so that JSON mutations need not keep a
// valid header in front.

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "workers/frame.hpp"

namespace {

using namespace switchyard::workers;
using nlohmann::json;

#define FUZZ_CHECK(cond)                                                                            \
  do {                                                                                              \
    if (!(cond)) {                                                                                  \
      std::fprintf(stderr, "\nfuzz_frame: invariant violated (fuzz_frame.cpp:%d): %s\n", __LINE__, \
                   #cond);                                                                          \
      std::abort();                                                                                 \
    }                                                                                               \
  } while (0)

using HeaderBytes = std::array<std::uint8_t, kFrameHeaderSize>;

std::uint32_t u32(const std::uint8_t* p) {
  return static_cast<std::uint32_t>(p[0]) | static_cast<std::uint32_t>(p[1]) << 8 |
         static_cast<std::uint32_t>(p[2]) << 16 | static_cast<std::uint32_t>(p[3]) << 24;
}

/// The header rules of frame.hpp, written out again independently.
HeaderDecode reference_header(const HeaderBytes& b) {
  if (std::memcmp(b.data(), "SWYD", 4) != 0) return {std::nullopt, FrameError::bad_magic};
  if (b[4] != 1) return {std::nullopt, FrameError::bad_version};
  if (b[5] < 1 || b[5] > 3) return {std::nullopt, FrameError::bad_type};
  if (b[6] != 0 || b[7] != 0) return {std::nullopt, FrameError::bad_reserved};
  if (u32(b.data() + 8) > (64u << 20)) return {std::nullopt, FrameError::too_long};
  FrameHeader h;
  h.type = static_cast<FrameType>(b[5]);
  h.length = u32(b.data() + 8);
  std::memcpy(h.job_id.data(), b.data() + 12, 16);
  return {h, {}};
}

HeaderBytes first_header(std::string_view frame) {
  HeaderBytes bytes{};
  std::memcpy(bytes.data(), frame.data(), std::min(frame.size(), bytes.size()));
  return bytes;
}

void check_header(const HeaderBytes& bytes, std::string_view rest) {
  const HeaderDecode got = decode_frame_header(bytes);
  const HeaderDecode want = reference_header(bytes);
  FUZZ_CHECK(got.header.has_value() == want.header.has_value());
  FUZZ_CHECK(!to_string(got.error).empty());
  if (!got.header) {
    FUZZ_CHECK(got.error == want.error);
    return;
  }
  const FrameHeader& h = *got.header;
  FUZZ_CHECK(h.type == want.header->type);
  FUZZ_CHECK(h.length == want.header->length);
  FUZZ_CHECK(h.job_id == want.header->job_id);
  FUZZ_CHECK(h.length <= kMaxFramePayload);

  // encode(decode(x)): the same header bytes, the payload after them.
  const std::string_view payload = rest.substr(0, std::min<std::size_t>(rest.size(), h.length));
  const std::string again = encode_frame(h.type, h.job_id, payload);
  FUZZ_CHECK(again.size() == kFrameHeaderSize + payload.size());
  FUZZ_CHECK(std::memcmp(again.data(), bytes.data(), 8) == 0);
  FUZZ_CHECK(std::memcmp(again.data() + 12, bytes.data() + 12, 16) == 0);
  FUZZ_CHECK(std::string_view(again).substr(kFrameHeaderSize) == payload);
  if (payload.size() == h.length) FUZZ_CHECK(std::memcmp(again.data(), bytes.data(), kFrameHeaderSize) == 0);
  const HeaderDecode redecoded = decode_frame_header(first_header(again));
  FUZZ_CHECK(redecoded.header && redecoded.header->type == h.type && redecoded.header->job_id == h.job_id &&
             redecoded.header->length == payload.size());
}

/// What a well-formed result payload is, written out again independently.
bool reference_result_valid(std::string_view payload) {
  const json reply = json::parse(payload, nullptr, false);
  if (!reply.is_object()) return false;
  const auto ok = reply.find("ok");
  const auto cpu = reply.find("cpu_ms");
  const auto total = reply.find("cpu_total_ms");
  if (ok == reply.end() || !ok->is_boolean() || cpu == reply.end() || !cpu->is_number()) return false;
  if (total != reply.end() && !total->is_number()) return false;
  if (ok->get<bool>()) return true;
  const auto error = reply.find("error");
  if (error == reply.end() || !error->is_object()) return false;
  const auto code = error->find("code");
  return code != error->end() && code->is_string() && !code->get<std::string>().empty();
}

void check_reply(const ResultReply& r) {
  FUZZ_CHECK(r.valid == r.problem.empty());
  if (r.valid && !r.outcome.ok) FUZZ_CHECK(!r.outcome.error_code.empty());
}

/// A valid reply, re-encoded the way worker_main writes it, decodes to the same thing.
void check_round_trip(const ResultReply& r, const FrameJobId& id) {
  json reply = {{"ok", r.outcome.ok}, {"cpu_ms", r.cpu_ms}, {"cpu_total_ms", r.cpu_total_ms}};
  if (r.outcome.ok) {
    reply["result"] = r.outcome.result;
  } else {
    reply["error"] = {{"code", r.outcome.error_code}, {"message", r.outcome.error_message}};
  }
  const std::string frame =
      encode_frame(FrameType::result, id, reply.dump(-1, ' ', false, json::error_handler_t::replace));
  const HeaderDecode header = decode_frame_header(first_header(frame));
  FUZZ_CHECK(header.header && header.header->length + kFrameHeaderSize == frame.size());
  const ResultReply back = decode_result(*header.header, std::string_view(frame).substr(kFrameHeaderSize), id);
  FUZZ_CHECK(back.valid);
  FUZZ_CHECK(back.outcome.ok == r.outcome.ok);
  FUZZ_CHECK(back.outcome.result == r.outcome.result);
  FUZZ_CHECK(back.outcome.error_code == r.outcome.error_code);
  FUZZ_CHECK(back.outcome.error_message == r.outcome.error_message);
  FUZZ_CHECK(back.cpu_ms == r.cpu_ms);
  FUZZ_CHECK(back.cpu_total_ms == r.cpu_total_ms);
}

void check_result(const FrameHeader& header, std::string_view payload) {
  // Asked for the job the frame names.
  const ResultReply r = decode_result(header, payload, header.job_id);
  check_reply(r);
  if (header.type != FrameType::result) {
    FUZZ_CHECK(!r.valid);
  } else {
    FUZZ_CHECK(r.valid == reference_result_valid(payload));
    if (r.valid) check_round_trip(r, header.job_id);
  }
  // Asked for another job: always a protocol error.
  FrameJobId other = header.job_id;
  other[15] ^= 0x5a;
  const ResultReply wrong = decode_result(header, payload, other);
  check_reply(wrong);
  FUZZ_CHECK(!wrong.valid);
}

void check_uuid(std::string_view text, const HeaderBytes& bytes) {
  FrameJobId raw{};
  std::memcpy(raw.data(), bytes.data() + 12, raw.size());
  const std::string formatted = format_uuid(raw);
  FUZZ_CHECK(formatted.size() == 36);
  FUZZ_CHECK(parse_uuid(formatted) == raw);

  const auto parsed = parse_uuid(text.substr(0, 36));
  if (!parsed) return;
  FUZZ_CHECK(text.size() >= 36);
  const std::string back = format_uuid(*parsed);
  for (std::size_t i = 0; i < 36; ++i) {
    const char c = text[i];
    const char lower = c >= 'A' && c <= 'F' ? static_cast<char>(c - 'A' + 'a') : c;
    FUZZ_CHECK(back[i] == lower);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const HeaderBytes bytes = first_header(input);
  const std::string_view rest = size > kFrameHeaderSize ? input.substr(kFrameHeaderSize) : std::string_view();

  check_header(bytes, rest);
  if (const HeaderDecode decoded = decode_frame_header(bytes); decoded.header) {
    // As the server reads it: exactly `length` bytes of payload (fewer if the input is short).
    check_result(*decoded.header, rest.substr(0, std::min<std::size_t>(rest.size(), decoded.header->length)));
  }
  // The whole input as the payload of a well-formed result header.
  FrameHeader synthetic;
  synthetic.type = FrameType::result;
  synthetic.length = static_cast<std::uint32_t>(size);
  std::memcpy(synthetic.job_id.data(), bytes.data() + 12, synthetic.job_id.size());
  check_result(synthetic, input);

  check_uuid(input, bytes);
  return 0;
}
