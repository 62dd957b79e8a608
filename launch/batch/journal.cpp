// SPDX-License-Identifier: MIT
// Journal framing, scanning (stops at the first frame that is truncated, has a bad magic or a bad
// CRC), durable appends and atomic file replacement.
#include "launch/batch/journal.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "common/check.h"
#include "launch/batch/digest.h"

namespace v4rt::launch::batch {

namespace {

using Json = nlohmann::ordered_json;

void put_u32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(char((v >> (8 * i)) & 0xFF));
}

uint32_t get_u32(const uint8_t* p) { return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24; }

uint32_t frame_crc(uint32_t kind, uint32_t len, const uint8_t* payload) {
  std::string words;
  put_u32(&words, kind);
  put_u32(&words, len);
  const uint32_t c = crc32(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(words.data()), 8));
  return crc32(std::span<const uint8_t>(payload, len), c);
}

void write_all(int fd, const char* data, size_t n, const std::string& path) {
  while (n > 0) {
    const ssize_t w = ::write(fd, data, n);
    if (w < 0 && errno == EINTR) continue;
    V4RT_REQUIRE(w > 0, path << ": write failed: " << std::strerror(errno));
    data += w;
    n -= size_t(w);
  }
}

void sync_fd(int fd, const std::string& path) {
  V4RT_REQUIRE(::fdatasync(fd) == 0, path << ": fdatasync failed: " << std::strerror(errno));
}

void sync_dir_of(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

int open_locked(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags, 0644);
  V4RT_REQUIRE(fd >= 0, path << ": cannot open: " << std::strerror(errno));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    ::close(fd);
    V4RT_FAIL(path << ": another batch job is writing this journal (it is locked)");
  }
  return fd;
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Header
// ------------------------------------------------------------------------------------------------

std::string JournalHeader::to_json() const {
  Json j{{"format", format},       {"input_sha256", input_sha256}, {"input_bytes", input_bytes},
         {"num_lines", num_lines}, {"seed", seed},                 {"ordered", ordered},
         {"model", model},         {"config_sha256", config_sha256}, {"created", created}};
  if (mtp > 0) j["mtp"] = mtp;  // absent: no drafting (journals written before --mtp existed)
  return j.dump();
}

JournalHeader JournalHeader::from_json(const std::string& text, const std::string& source) {
  JournalHeader h;
  try {
    const Json j = Json::parse(text);
    h.format = j.at("format").get<int>();
    V4RT_REQUIRE(h.format == 1, source << ": journal format " << h.format << " is not supported (expected 1)");
    h.input_sha256 = j.at("input_sha256").get<std::string>();
    h.input_bytes = j.at("input_bytes").get<int64_t>();
    h.num_lines = j.at("num_lines").get<int64_t>();
    h.seed = j.at("seed").get<uint64_t>();
    h.ordered = j.at("ordered").get<bool>();
    h.model = j.at("model").get<std::string>();
    h.config_sha256 = j.at("config_sha256").get<std::string>();
    h.created = j.at("created").get<int64_t>();
    h.mtp = j.value("mtp", 0);
  } catch (const nlohmann::json::exception& e) {
    V4RT_FAIL(source << ": bad journal header: " << e.what());
  }
  return h;
}

std::vector<std::string> header_mismatches(const JournalHeader& a, const JournalHeader& b) {
  std::vector<std::string> out;
  if (a.input_sha256 != b.input_sha256 || a.input_bytes != b.input_bytes || a.num_lines != b.num_lines)
    out.push_back("input (sha256 " + a.input_sha256.substr(0, 16) + "... vs now " + b.input_sha256.substr(0, 16) + "...)");
  if (a.seed != b.seed) out.push_back("--seed (" + std::to_string(a.seed) + " vs now " + std::to_string(b.seed) + ")");
  if (a.ordered != b.ordered) out.push_back(std::string("--ordered (") + (a.ordered ? "on" : "off") + " vs now " + (b.ordered ? "on" : "off") + ")");
  if (a.model != b.model) out.push_back("model (" + a.model + " vs now " + b.model + ")");
  if (a.config_sha256 != b.config_sha256) out.push_back("runtime config (its resolved YAML changed)");
  if (a.mtp != b.mtp) out.push_back("--mtp (" + std::to_string(a.mtp) + " vs now " + std::to_string(b.mtp) + ")");
  return out;
}

// ------------------------------------------------------------------------------------------------
// Frames and scanning
// ------------------------------------------------------------------------------------------------

std::string encode_frame(uint32_t kind, const std::string& payload) {
  CHECK_LE(payload.size(), size_t(kMaxPayloadBytes));
  std::string out;
  out.reserve(kFrameBytes + payload.size());
  put_u32(&out, kJournalMagic);
  put_u32(&out, kind);
  put_u32(&out, uint32_t(payload.size()));
  put_u32(&out, frame_crc(kind, uint32_t(payload.size()), reinterpret_cast<const uint8_t*>(payload.data())));
  out += payload;
  return out;
}

std::string encode_result_payload(const JournalRecord& record) {
  std::string p;
  const uint64_t idx = uint64_t(record.line_idx);
  for (int i = 0; i < 8; ++i) p.push_back(char((idx >> (8 * i)) & 0xFF));
  p += record.line;
  return p;
}

namespace {

// The path as the file system resolves it (symlinks, "..", relative to the working directory).
std::filesystem::path resolved(const std::string& path) {
  std::error_code ec;
  std::filesystem::path p = std::filesystem::weakly_canonical(path, ec);
  return ec ? std::filesystem::absolute(path).lexically_normal() : p;
}

}  // namespace

void check_job_paths(const std::string& input, const std::string& output, const std::string& journal) {
  const auto in = resolved(input), out = resolved(output), jr = resolved(journal);
  const auto out_tmp = resolved(output + ".tmp"), jr_tmp = resolved(journal + ".tmp");
  V4RT_REQUIRE(jr != out, "--journal " << journal << " is the --output file " << output
                                       << ": the output is rewritten from the journal, so they must differ");
  V4RT_REQUIRE(jr != out_tmp, "--journal " << journal << " is the temporary file of --output " << output
                                           << " (" << output << ".tmp); choose another journal path");
  V4RT_REQUIRE(out != jr_tmp, "--output " << output << " is the temporary file of --journal " << journal
                                          << " (" << journal << ".tmp); choose another output path");
  V4RT_REQUIRE(in != out && in != jr && in != out_tmp && in != jr_tmp,
               "--input " << input << " is also the output or the journal (or one of their temporary files)");
}

JournalScan scan_journal(const std::string& path) {
  std::error_code ec;
  V4RT_REQUIRE(!std::filesystem::is_directory(path, ec), path << ": is a directory, not a batch journal");
  std::ifstream in(path, std::ios::binary);
  V4RT_REQUIRE(in, path << ": cannot open the journal");
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  V4RT_REQUIRE(!in.bad(), path << ": read error");
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  JournalScan scan;
  scan.file_bytes = bytes.size();
  size_t off = 0;
  bool have_header = false;
  std::set<int64_t> seen;
  while (off + kFrameBytes <= bytes.size()) {
    const uint32_t magic = get_u32(p + off), kind = get_u32(p + off + 4), len = get_u32(p + off + 8),
                   crc = get_u32(p + off + 12);
    if (magic != kJournalMagic || len > kMaxPayloadBytes || off + kFrameBytes + len > bytes.size()) break;
    const uint8_t* payload = p + off + kFrameBytes;
    if (frame_crc(kind, len, payload) != crc) break;
    if (!have_header) {
      V4RT_REQUIRE(kind == kRecordHeader, path << ": the journal does not start with a header record");
      scan.header = JournalHeader::from_json(std::string(reinterpret_cast<const char*>(payload), len), path);
      have_header = true;
    } else {
      if (kind != kRecordResult || len < 8) break;
      uint64_t idx = 0;
      for (int i = 0; i < 8; ++i) idx |= uint64_t(payload[i]) << (8 * i);
      if (seen.insert(int64_t(idx)).second) {
        scan.records.push_back({int64_t(idx), std::string(reinterpret_cast<const char*>(payload) + 8, len - 8)});
      } else {
        ++scan.duplicates;
      }
    }
    off += kFrameBytes + len;
    scan.valid_bytes = off;
  }
  V4RT_REQUIRE(have_header, path << ": not a batch journal (no intact header record); remove it to start over");
  return scan;
}

// ------------------------------------------------------------------------------------------------
// Writer
// ------------------------------------------------------------------------------------------------

std::unique_ptr<JournalWriter> JournalWriter::create(const std::string& path, const JournalHeader& header) {
  const std::string tmp = path + ".tmp";
  {
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    V4RT_REQUIRE(fd >= 0, tmp << ": cannot create: " << std::strerror(errno));
    const std::string frame = encode_frame(kRecordHeader, header.to_json());
    try {
      write_all(fd, frame.data(), frame.size(), tmp);
      V4RT_REQUIRE(::fsync(fd) == 0, tmp << ": fsync failed: " << std::strerror(errno));
    } catch (...) {
      ::close(fd);
      throw;
    }
    ::close(fd);
  }
  V4RT_REQUIRE(::rename(tmp.c_str(), path.c_str()) == 0, path << ": cannot rename " << tmp << ": " << std::strerror(errno));
  sync_dir_of(path);
  const int fd = open_locked(path, O_WRONLY | O_APPEND);
  return std::unique_ptr<JournalWriter>(new JournalWriter(path, fd));
}

std::unique_ptr<JournalWriter> JournalWriter::resume(const std::string& path, const JournalScan& scan) {
  const int fd = open_locked(path, O_WRONLY | O_APPEND);
  if (scan.file_bytes != scan.valid_bytes) {
    if (::ftruncate(fd, off_t(scan.valid_bytes)) != 0 || ::fsync(fd) != 0) {
      const int err = errno;
      ::close(fd);
      V4RT_FAIL(path << ": cannot cut the torn tail: " << std::strerror(err));
    }
  }
  return std::unique_ptr<JournalWriter>(new JournalWriter(path, fd));
}

JournalWriter::~JournalWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void JournalWriter::append(const JournalRecord& record) {
  const std::string frame = encode_frame(kRecordResult, encode_result_payload(record));
  if (pause_mid_record_ms_ > 0) {
    const size_t half = frame.size() / 2;
    write_all(fd_, frame.data(), half, path_);
    sync_fd(fd_, path_);
    std::this_thread::sleep_for(std::chrono::milliseconds(pause_mid_record_ms_));
    write_all(fd_, frame.data() + half, frame.size() - half, path_);
  } else {
    write_all(fd_, frame.data(), frame.size(), path_);
  }
  sync_fd(fd_, path_);
}

void write_file_atomic(const std::string& path, const std::string& content) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  V4RT_REQUIRE(fd >= 0, tmp << ": cannot create: " << std::strerror(errno));
  try {
    write_all(fd, content.data(), content.size(), tmp);
    V4RT_REQUIRE(::fsync(fd) == 0, tmp << ": fsync failed: " << std::strerror(errno));
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  V4RT_REQUIRE(::rename(tmp.c_str(), path.c_str()) == 0, path << ": cannot rename " << tmp << ": " << std::strerror(errno));
  sync_dir_of(path);
}

}  // namespace v4rt::launch::batch
