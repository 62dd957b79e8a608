// SPDX-License-Identifier: MIT
// Corrupt checkpoints, built in a temp dir from a small synthetic one: each kind of damage gives a
// v4rt::Error that names the file and the tensor at fault; validation lists every problem.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <future>
#include <thread>
#include <nlohmann/json.hpp>

#include "model/checkpoint.h"
#include "model/presets.h"
#include "model/synthetic.h"
#include "test_util.h"

namespace v4rt::model {
namespace {

namespace fs = std::filesystem;
using testing::edit_shard_header;
using testing::expect_error_naming;
using testing::TempDir;

const char* kShard1 = "model-00001-of-00002.safetensors";
const char* kShard2 = "model-00002-of-00002.safetensors";

class Corrupt : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    base_ = new TempDir();
    ModelConfig c = preset_config("tiny");
    c.vocab_size = 1024;  // small files; every feature kept
    write_synthetic_checkpoint(c, base_->str(), {3, 2});
  }
  static void TearDownTestSuite() { delete base_; }
  void SetUp() override {
    dir_ = tmp_ / "ck";
    testing::copy_dir(base_->str(), dir_);
  }
  std::string path(const std::string& file) const { return dir_ + "/" + file; }
  // Names (in header order) of the tensors in a shard of this copy.
  std::vector<std::string> names_in(const std::string& shard) const {
    std::vector<std::string> out;
    const auto raw = testing::read_shard(path(shard));
    for (auto it = raw.header.begin(); it != raw.header.end(); ++it)
      if (it.key() != "__metadata__") out.push_back(it.key());
    return out;
  }
  void drop_from_index(const std::string& name) const {
    auto index = nlohmann::ordered_json::parse(testing::read_text(path("model.safetensors.index.json")));
    index["weight_map"].erase(name);
    const std::string text = index.dump();
    testing::write_bytes(path("model.safetensors.index.json"), std::vector<uint8_t>(text.begin(), text.end()));
  }
  void open() const { Checkpoint::open(dir_); }

  static TempDir* base_;
  TempDir tmp_;
  std::string dir_;
};
TempDir* Corrupt::base_ = nullptr;

// A FIFO in place of a shard made `inspect` wait for a writer forever.
TEST_F(Corrupt, ShardThatIsAFifoIsRefused) {
  fs::remove(path(kShard2));
  ASSERT_EQ(::mkfifo(path(kShard2).c_str(), 0600), 0);
  std::packaged_task<std::string()> task([this] {
    try {
      open();
    } catch (const v4rt::Error& e) {
      return std::string(e.what());
    }
    return std::string("opened");
  });
  std::future<std::string> result = task.get_future();
  std::thread t(std::move(task));
  if (result.wait_for(std::chrono::seconds(20)) != std::future_status::ready) {
    const int unblock = ::open(path(kShard2).c_str(), O_WRONLY | O_NONBLOCK);  // lets a blocked open return
    t.join();
    if (unblock >= 0) ::close(unblock);
    FAIL() << "Checkpoint::open blocked on a FIFO shard";
  }
  t.join();
  const std::string what = result.get();
  EXPECT_NE(what.find(kShard2), std::string::npos) << what;
  EXPECT_NE(what.find("not a regular file"), std::string::npos) << what;
}

// An expert count the shards cannot hold fails naming the key before the expected tensor list
// (an entry per expert weight of every block) is built.
TEST_F(Corrupt, ExpertCountBeyondTheShardsNamesTheKey) {
  auto config = nlohmann::ordered_json::parse(testing::read_text(path("config.json")));
  config["n_routed_experts"] = 3000;
  const std::string text = config.dump();
  testing::write_bytes(path("config.json"), std::vector<uint8_t>(text.begin(), text.end()));
  expect_error_naming([&] { open(); }, {"config.json: field 'n_routed_experts' 3000", "tensors in all"});
}

TEST_F(Corrupt, IntactCopyOpens) {
  auto ck = Checkpoint::open(dir_);
  EXPECT_NO_THROW(ck->validate_tensors());
}

TEST_F(Corrupt, TruncatedShard) {
  // The tensor stored last in the data area is the one the truncation cuts.
  const auto raw = testing::read_shard(path(kShard2));
  std::string last;
  uint64_t last_end = 0;
  for (auto it = raw.header.begin(); it != raw.header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const uint64_t e = it.value()["data_offsets"][1].get<uint64_t>();
    if (e > last_end) last_end = e, last = it.key();
  }
  fs::resize_file(path(kShard2), fs::file_size(path(kShard2)) - 1);
  expect_error_naming([&] { open(); }, {path(kShard2), "'" + last + "'", "past"});
}

TEST_F(Corrupt, HeaderOffsetsOutOfRange) {
  const std::string victim = names_in(kShard1).at(3);
  edit_shard_header(path(kShard1), [&](nlohmann::ordered_json& h) {
    auto& off = h[victim]["data_offsets"];
    const uint64_t n = off[1].get<uint64_t>() - off[0].get<uint64_t>();
    off = {uint64_t(1) << 40, (uint64_t(1) << 40) + n};
  });
  expect_error_naming([&] { open(); }, {path(kShard1), "'" + victim + "'", "data_offsets"});
}

TEST_F(Corrupt, OverlappingRanges) {
  const auto raw = testing::read_shard(path(kShard1));
  // Two different tensors of the same byte size: give the second the first one's range.
  std::map<uint64_t, std::string> by_size;
  std::string a, b;
  for (auto it = raw.header.begin(); it != raw.header.end() && b.empty(); ++it) {
    if (it.key() == "__metadata__") continue;
    const uint64_t n = it.value()["data_offsets"][1].get<uint64_t>() - it.value()["data_offsets"][0].get<uint64_t>();
    if (by_size.count(n)) a = by_size[n], b = it.key();
    by_size[n] = it.key();
  }
  ASSERT_FALSE(b.empty());
  edit_shard_header(path(kShard1), [&](nlohmann::ordered_json& h) { h[b]["data_offsets"] = h[a]["data_offsets"]; });
  expect_error_naming([&] { open(); }, {path(kShard1), "'" + a + "'", "'" + b + "'", "overlap"});
}

TEST_F(Corrupt, MissingTensor) {
  const std::string victim = "layers.1.attn.kv_norm.weight";
  const std::string shard = testing::shard_of(dir_, victim);
  edit_shard_header(path(shard), [&](nlohmann::ordered_json& h) { h.erase(victim); });
  drop_from_index(victim);
  expect_error_naming([&] { open(); }, {dir_, "missing tensor '" + victim + "'"});
}

TEST_F(Corrupt, WrongShape) {
  const std::string victim = "layers.2.attn.q_norm.weight";  // BF16 [128]
  const std::string shard = testing::shard_of(dir_, victim);
  edit_shard_header(path(shard), [&](nlohmann::ordered_json& h) { h[victim]["shape"] = {64, 2}; });
  expect_error_naming([&] { open(); }, {path(shard), "'" + victim + "'", "[64, 2]", "expected BF16 [128]"});
}

TEST_F(Corrupt, WrongDtype) {
  const std::string victim = "layers.0.attn_norm.weight";  // BF16 [256]
  const std::string shard = testing::shard_of(dir_, victim);
  edit_shard_header(path(shard), [&](nlohmann::ordered_json& h) { h[victim]["dtype"] = "F16"; });
  expect_error_naming([&] { open(); }, {path(shard), "'" + victim + "'", "F16", "expected BF16"});
}

TEST_F(Corrupt, UnknownDtype) {
  const std::string victim = names_in(kShard2).at(0);
  edit_shard_header(path(kShard2), [&](nlohmann::ordered_json& h) { h[victim]["dtype"] = "Q3_K"; });
  expect_error_naming([&] { open(); }, {path(kShard2), "'" + victim + "'", "unknown dtype 'Q3_K'"});
}

TEST_F(Corrupt, ShapeDisagreesWithByteRange) {
  const std::string victim = names_in(kShard2).at(1);
  edit_shard_header(path(kShard2), [&](nlohmann::ordered_json& h) { h[victim]["shape"].push_back(3); });
  expect_error_naming([&] { open(); }, {path(kShard2), "'" + victim + "'", "data_offsets span"});
}

TEST_F(Corrupt, MalformedJson) {
  // Syntax error: only the file can be named (and the byte position, in the parser's message).
  const auto raw = testing::read_shard(path(kShard1));
  std::string text = raw.header.dump();
  text[text.size() / 2] = '}';
  text[text.size() / 2 + 1] = '"';
  testing::write_shard_raw(path(kShard1), text, raw.data);
  expect_error_naming([&] { open(); }, {path(kShard1), "not valid JSON"});
}

TEST_F(Corrupt, MalformedEntry) {
  const std::string victim = names_in(kShard1).at(2);
  edit_shard_header(path(kShard1), [&](nlohmann::ordered_json& h) { h[victim]["data_offsets"] = "0-16"; });
  expect_error_naming([&] { open(); }, {path(kShard1), "'" + victim + "'", "data_offsets"});
}

TEST_F(Corrupt, HeaderLengthImplausible) {
  std::vector<uint8_t> bytes = testing::read_bytes(path(kShard2));
  for (int i = 0; i < 8; ++i) bytes[size_t(i)] = 0x7f;
  testing::write_bytes(path(kShard2), bytes);
  expect_error_naming([&] { open(); }, {path(kShard2), "header length"});
}

TEST_F(Corrupt, MissingShardFile) {
  const std::string some = names_in(kShard2).at(0);
  fs::remove(path(kShard2));
  expect_error_naming([&] { open(); }, {path(kShard2), "missing", "'" + some + "'"});
}

TEST_F(Corrupt, IndexNamesTensorAbsentFromShard) {
  auto index = nlohmann::ordered_json::parse(testing::read_text(path("model.safetensors.index.json")));
  index["weight_map"]["layers.0.attn.bogus"] = kShard1;
  const std::string text = index.dump();
  testing::write_bytes(path("model.safetensors.index.json"), std::vector<uint8_t>(text.begin(), text.end()));
  expect_error_naming([&] { open(); }, {path(kShard1), "'layers.0.attn.bogus'", "does not contain"});
}

TEST_F(Corrupt, ShardTensorMissingFromIndex) {
  const std::string victim = names_in(kShard1).at(5);
  drop_from_index(victim);
  expect_error_naming([&] { open(); }, {path(kShard1), "'" + victim + "'", "index"});
}

TEST_F(Corrupt, EveryProblemReported) {
  const std::string gone1 = "layers.3.attn.attn_sink", gone2 = "layers.4.ffn.experts.7.w2.scale";
  const std::string bent = "layers.5.attn.indexer.weights_proj.weight";  // BF16 [16, 256]
  for (const std::string& n : {gone1, gone2}) {
    edit_shard_header(path(testing::shard_of(dir_, n)), [&](nlohmann::ordered_json& h) { h.erase(n); });
    drop_from_index(n);
  }
  edit_shard_header(path(testing::shard_of(dir_, bent)), [&](nlohmann::ordered_json& h) { h[bent]["shape"] = {256, 16}; });
  expect_error_naming([&] { open(); }, {"3 tensor problem(s)", "'" + gone1 + "'", "'" + gone2 + "'", "'" + bent + "'"});
}

}  // namespace
}  // namespace v4rt::model
