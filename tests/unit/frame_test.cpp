#include <doctest/doctest.h>

#include <cstring>
#include <stdexcept>

#include "workers/frame.hpp"

using namespace switchyard::workers;

namespace {
std::array<std::uint8_t, kFrameHeaderSize> header_of(const std::string& frame) {
  std::array<std::uint8_t, kFrameHeaderSize> bytes{};
  std::memcpy(bytes.data(), frame.data(), bytes.size());
  return bytes;
}
}  // namespace

TEST_CASE("a frame round-trips through encode and decode") {
  const auto id = parse_uuid("0193f1c2-7a4e-7d3a-9a43-5f0d7e1b2c3d").value();
  const std::string frame = encode_frame(FrameType::run, id, R"({"type":"noop","input":{}})");
  REQUIRE(frame.size() == kFrameHeaderSize + 26);
  const auto decoded = decode_frame_header(header_of(frame));
  REQUIRE(decoded.header);
  CHECK(decoded.header->type == FrameType::run);
  CHECK(decoded.header->length == 26);
  CHECK(decoded.header->job_id == id);
  CHECK(frame.substr(kFrameHeaderSize) == R"({"type":"noop","input":{}})");
}

TEST_CASE("malformed headers are rejected with the reason") {
  const FrameJobId id{};
  std::string frame = encode_frame(FrameType::result, id, "{}");
  SUBCASE("bad magic") {
    frame[0] = 'X';
    CHECK(decode_frame_header(header_of(frame)).error == FrameError::bad_magic);
  }
  SUBCASE("unsupported version") {
    frame[4] = 9;
    CHECK(decode_frame_header(header_of(frame)).error == FrameError::bad_version);
  }
  SUBCASE("unknown type") {
    frame[5] = 0;
    CHECK(decode_frame_header(header_of(frame)).error == FrameError::bad_type);
    frame[5] = 4;
    CHECK(decode_frame_header(header_of(frame)).error == FrameError::bad_type);
  }
  SUBCASE("reserved bytes set") {
    frame[7] = 1;
    CHECK(decode_frame_header(header_of(frame)).error == FrameError::bad_reserved);
  }
  SUBCASE("oversized payload length") {
    const std::uint32_t too_long = kMaxFramePayload + 1;
    for (int i = 0; i < 4; ++i) frame[8 + i] = static_cast<char>((too_long >> (8 * i)) & 0xff);
    const auto decoded = decode_frame_header(header_of(frame));
    CHECK_FALSE(decoded.header);
    CHECK(decoded.error == FrameError::too_long);
  }
}

TEST_CASE("encode refuses a payload over the cap") {
  const std::string huge(kMaxFramePayload + 1, 'x');
  CHECK_THROWS_AS(encode_frame(FrameType::result, FrameJobId{}, huge), std::length_error);
}

TEST_CASE("the job id carried in a frame tells one job from another") {
  const auto a = parse_uuid("0193f1c2-7a4e-7d3a-9a43-5f0d7e1b2c3d").value();
  const auto b = parse_uuid("0193f1c2-7a4e-7d3a-9a43-5f0d7e1b2c3e").value();
  const auto decoded = decode_frame_header(header_of(encode_frame(FrameType::result, a, "")));
  REQUIRE(decoded.header);
  CHECK(decoded.header->job_id == a);
  CHECK(decoded.header->job_id != b);
}

TEST_CASE("uuids parse and format canonically") {
  const std::string text = "0193f1c2-7a4e-7d3a-9a43-5f0d7e1b2c3d";
  CHECK(format_uuid(parse_uuid(text).value()) == text);
  CHECK(format_uuid(parse_uuid("0193F1C2-7A4E-7D3A-9A43-5F0D7E1B2C3D").value()) == text);
  CHECK_FALSE(parse_uuid("0193f1c2-7a4e-7d3a-9a43-5f0d7e1b2c3"));
  CHECK_FALSE(parse_uuid("0193f1c2x7a4e-7d3a-9a43-5f0d7e1b2c3d"));
  CHECK_FALSE(parse_uuid("0193f1c2-7a4e-7d3a-9a43-5f0d7e1b2c3g"));
  CHECK_FALSE(parse_uuid(""));
}

TEST_CASE("a worker's result is checked against the job it was asked to run") {
  const auto job = parse_uuid("0193f1c2-7a4e-7d3a-9a43-5f0d7e1b2c3d").value();
  const auto other = parse_uuid("0193f1c2-7a4e-7d3a-9a43-5f0d7e1b2c3e").value();
  FrameHeader header{FrameType::result, 0, job};
  SUBCASE("a good answer") {
    const auto reply = decode_result(header, R"({"ok":true,"result":{"count":4},"cpu_ms":1.5,"cpu_total_ms":9})", job);
    REQUIRE(reply.valid);
    CHECK(reply.outcome.ok);
    CHECK(reply.outcome.result["count"] == 4);
    CHECK(reply.cpu_ms == 1.5);
    CHECK(reply.cpu_total_ms == 9);
  }
  SUBCASE("a job's own failure is a valid answer") {
    const auto reply = decode_result(header, R"({"ok":false,"error":{"code":"handler_error","message":"x"},"cpu_ms":0})", job);
    REQUIRE(reply.valid);
    CHECK(reply.outcome.error_code == "handler_error");
  }
  SUBCASE("the wrong job id") {
    const auto reply = decode_result(FrameHeader{FrameType::result, 0, other}, R"({"ok":true,"cpu_ms":0})", job);
    CHECK_FALSE(reply.valid);
    CHECK(reply.problem == "worker answered for the wrong job id");
  }
  SUBCASE("the wrong frame type") {
    CHECK_FALSE(decode_result(FrameHeader{FrameType::hello, 0, job}, R"({"ok":true,"cpu_ms":0})", job).valid);
  }
  SUBCASE("malformed payloads") {
    for (const char* payload : {"", "not json", "[]", R"({"cpu_ms":0})", R"({"ok":"yes","cpu_ms":0})",
                                R"({"ok":true})", R"({"ok":true,"cpu_ms":"1"})", R"({"ok":true,"cpu_ms":1,"cpu_total_ms":"x"})",
                                R"({"ok":false,"cpu_ms":0})", R"({"ok":false,"cpu_ms":0,"error":{"code":5}})"}) {
      CHECK_MESSAGE(!decode_result(header, payload, job).valid, payload);
    }
  }
}
