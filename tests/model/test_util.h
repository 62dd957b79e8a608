// SPDX-License-Identifier: MIT
// Helpers shared by the model tests (and the plan command's tests): temporary directories,
// whole-file I/O, running a command with its stdout and stderr captured apart or merged, and an
// independent safetensors header reader/rewriter (nlohmann::json directly, not
// model/safetensors) used to inspect golden files and to build corrupt checkpoints.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "common/check.h"

namespace v4rt::model::testing {

namespace fs = std::filesystem;

// A fresh directory under the system temp dir, removed when the object dies.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = fs::temp_directory_path() / ("v4rt_test_" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string str() const { return path_.string(); }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

inline std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << path;
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

inline void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

inline std::string read_text(const std::string& path) {
  const std::vector<uint8_t> b = read_bytes(path);
  return std::string(b.begin(), b.end());
}

// A shell command's exit code (-1 after a signal) and its stdout / stderr.
struct CmdResult {
  int code = -1;
  std::string out, err;
};

// Where run_shell puts the command's stderr: apart (CmdResult::err), or into CmdResult::out
// interleaved with stdout in the order written (CmdResult::err then stays empty).
enum class Stderr { kSeparate, kMerged };

// Runs `cmd` through the shell, stdout and stderr captured in files under `tmp`.
inline CmdResult run_shell(const std::string& cmd, const TempDir& tmp, Stderr stderr_to = Stderr::kSeparate) {
  const std::string out = tmp / "stdout.txt", err = tmp / "stderr.txt";
  const std::string redirect = stderr_to == Stderr::kMerged ? " >" + out + " 2>&1" : " >" + out + " 2>" + err;
  const int status = std::system((cmd + redirect).c_str());
  CmdResult r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = read_text(out);
  if (stderr_to == Stderr::kSeparate) r.err = read_text(err);
  return r;
}

// A shard split into its parsed header and its data area.
struct RawShard {
  nlohmann::ordered_json header;
  std::vector<uint8_t> data;
};

inline RawShard read_shard(const std::string& path) {
  const std::vector<uint8_t> bytes = read_bytes(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[size_t(i)];
  RawShard s;
  s.header = nlohmann::ordered_json::parse(bytes.begin() + 8, bytes.begin() + 8 + int64_t(n));
  s.data.assign(bytes.begin() + 8 + int64_t(n), bytes.end());
  return s;
}

inline void write_shard_raw(const std::string& path, const std::string& header_text, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> out(8);
  for (int i = 0; i < 8; ++i) out[size_t(i)] = uint8_t(uint64_t(header_text.size()) >> (8 * i));
  out.insert(out.end(), header_text.begin(), header_text.end());
  out.insert(out.end(), data.begin(), data.end());
  write_bytes(path, out);
}

// Rewrites a shard's header through `edit`, keeping the data area.
inline void edit_shard_header(const std::string& path, const std::function<void(nlohmann::ordered_json&)>& edit) {
  RawShard s = read_shard(path);
  edit(s.header);
  write_shard_raw(path, s.header.dump(), s.data);
}

inline void copy_dir(const std::string& from, const std::string& to) {
  fs::create_directories(to);
  fs::copy(from, to, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
}

// The shard file (name only) the index maps `tensor` to.
inline std::string shard_of(const std::string& dir, const std::string& tensor) {
  const auto index = nlohmann::json::parse(read_text(dir + "/model.safetensors.index.json"));
  return index["weight_map"][tensor].get<std::string>();
}

// Expects `fn` to throw v4rt::Error whose message contains every string in `needles`.
template <typename Fn>
void expect_error_naming(Fn&& fn, const std::vector<std::string>& needles) {
  try {
    fn();
    ADD_FAILURE() << "expected a v4rt::Error";
  } catch (const v4rt::Error& e) {
    const std::string msg = e.what();
    for (const std::string& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  }
}

}  // namespace v4rt::model::testing
