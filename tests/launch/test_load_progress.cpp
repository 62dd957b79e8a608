// SPDX-License-Identifier: MIT
// Weight-load progress: load_weights reports every unit (embed, head, each layer) with its shard
// files and growing bytes up to the whole load; a tensor that fails names itself and its shard;
// rank 0's line names the slowest rank; under mpirun rank 0 logs a line per unit.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "kernels/backend.h"
#include "launch/load_progress.h"
#include "model/checkpoint.h"
#include "model/presets.h"
#include "model/synthetic.h"
#include "model/weights.h"
#include "tests/model/test_util.h"
#include "tests/mpi_env.h"

namespace v4rt::launch {
namespace {

using model::testing::TempDir;

model::ModelConfig small_tiny() {
  model::ModelConfig c = model::preset_config("tiny");
  c.vocab_size = 1024;  // small files; every feature kept
  return c;
}

TEST(LoadProgress, EveryUnitReportedWithItsShardAndGrowingBytes) {
  const TempDir dir;
  model::SyntheticOptions so;
  so.num_shards = 0;  // the release placement: embed, one shard per layer, head
  model::write_synthetic_checkpoint(small_tiny(), dir.str(), so);
  auto ckpt = model::Checkpoint::open(dir.str());
  auto backend = kernels::make_cpu_backend();
  std::vector<model::LoadProgress> seen;
  const model::ModelWeights w =
      model::load_weights(*ckpt, *backend, model::Shard{}, [&](const model::LoadProgress& p) { seen.push_back(p); });
  const int layers = ckpt->config().num_hidden_layers;
  ASSERT_EQ(int(seen.size()), layers + 2);
  EXPECT_EQ(seen[0].unit, "embed");
  EXPECT_EQ(seen[0].shards, model::release_shard_name(ckpt->config(), "embed.weight"));
  EXPECT_EQ(seen[1].unit, "head");
  EXPECT_EQ(seen[1].shards, model::release_shard_name(ckpt->config(), "head.weight"));
  uint64_t sum = 0;
  for (int i = 0; i < int(seen.size()); ++i) {
    const model::LoadProgress& p = seen[size_t(i)];
    EXPECT_EQ(p.unit_index, i + 1);
    EXPECT_EQ(p.num_units, layers + 2);
    EXPECT_GT(p.unit_bytes, 0u) << p.unit;
    sum += p.unit_bytes;
    EXPECT_EQ(p.bytes, sum);
    if (i > 0) {
      EXPECT_GT(p.done_fraction, seen[size_t(i) - 1].done_fraction);
    }
    if (i >= 2) {
      const int l = i - 2;
      EXPECT_EQ(p.unit, "layers." + std::to_string(l));
      EXPECT_EQ(p.shards, model::release_shard_name(ckpt->config(), "layers." + std::to_string(l) + ".attn_norm.weight"));
    }
  }
  EXPECT_EQ(seen.back().bytes, w.bytes_loaded);
  EXPECT_DOUBLE_EQ(seen.back().done_fraction, 1.0);
  // A load without an observer still works (and reports nothing).
  EXPECT_EQ(model::load_weights(*ckpt, *backend, model::Shard{}).bytes_loaded, w.bytes_loaded);
}

// The CPU backend, except that uploading one named weight fails as a device out of memory would.
class FailingUpload final : public kernels::Backend {
 public:
  explicit FailingUpload(std::string victim) : victim_(std::move(victim)) {}
  std::string name() const override { return cpu_->name(); }
  Device device() const override { return cpu_->device(); }
  DType act_dtype() const override { return cpu_->act_dtype(); }
  bool supports(kernels::Op op) const override { return cpu_->supports(op); }
  kernels::WeightView upload_weight(const kernels::WeightSource& s) override {
    V4RT_REQUIRE(s.name != victim_, "weight " << s.name << ": out of device memory");
    return cpu_->upload_weight(s);
  }
  void copy_to_device(void* d, const void* s, size_t n) override { cpu_->copy_to_device(d, s, n); }
  void copy_to_host(void* d, const void* s, size_t n) override { cpu_->copy_to_host(d, s, n); }
  void copy_rows(const TensorView& d, const TensorView& s) override { cpu_->copy_rows(d, s); }
  void fill(const TensorView& d, float v) override { cpu_->fill(d, v); }
  void synchronize() override { cpu_->synchronize(); }
#define V4RT_DELEGATE(op, P) \
  void op(const kernels::P& p) override { cpu_->op(p); }
  V4RT_DELEGATE(rms_norm, RmsNormParams)
  V4RT_DELEGATE(rope, RopeParams)
  V4RT_DELEGATE(hc_pre, HcPreParams)
  V4RT_DELEGATE(hc_post, HcPostParams)
  V4RT_DELEGATE(hc_head, HcHeadParams)
  V4RT_DELEGATE(linear, LinearParams)
  V4RT_DELEGATE(grouped_linear, GroupedLinearParams)
  V4RT_DELEGATE(compressor_pool, CompressorPoolParams)
  V4RT_DELEGATE(hadamard, HadamardParams)
  V4RT_DELEGATE(indexer_scores, IndexerScoresParams)
  V4RT_DELEGATE(topk, TopkParams)
  V4RT_DELEGATE(sparse_attention, SparseAttentionParams)
  V4RT_DELEGATE(moe_gate, MoeGateParams)
  V4RT_DELEGATE(moe_experts, MoeExpertsParams)
  V4RT_DELEGATE(swiglu, SwigluParams)
  V4RT_DELEGATE(embedding, EmbeddingParams)
  V4RT_DELEGATE(add, AddParams)
  V4RT_DELEGATE(qdq, QdqParams)
#undef V4RT_DELEGATE

 private:
  std::unique_ptr<kernels::Backend> cpu_ = kernels::make_cpu_backend();
  std::string victim_;
};

TEST(LoadProgress, FailureNamesTheTensorAndItsShard) {
  const TempDir dir;
  model::write_synthetic_checkpoint(small_tiny(), dir.str(), {3, 2});
  const std::string victim = "layers.1.attn.wq_a.weight";
  const auto index = nlohmann::json::parse(model::testing::read_text(dir / "model.safetensors.index.json"));
  const std::string shard = index["weight_map"][victim].get<std::string>();
  auto ckpt = model::Checkpoint::open(dir.str());
  FailingUpload backend(victim);
  int units = 0;
  try {
    model::load_weights(*ckpt, backend, model::Shard{}, [&](const model::LoadProgress&) { ++units; });
    FAIL() << "the load must fail";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "loading tensor " + victim + " (shard " + shard + "): weight " + victim + ": out of device memory");
  }
  EXPECT_EQ(units, 3);  // embed, head, layers.0 were done
}

TEST(LoadProgress, LineNamesTheSlowestRankAndTheEta) {
  model::LoadProgress p;
  p.unit = "layers.9";
  p.shards = "model-00011-of-00046.safetensors";
  p.unit_index = 11;
  p.num_units = 45;
  p.unit_bytes = 1'000'000'000;
  p.bytes = 10'000'000'000;
  p.done_fraction = 0.25;
  p.elapsed_s = 5;
  const std::vector<RankLoad> ranks = {{5.0, 10e9, 1e9}, {8.0, 10e9, 1e9}, {6.0, 10e9, 1e9}};
  const std::string line = format_load_progress(p, ranks);
  EXPECT_EQ(line,
            "load [11/45] layers.9 (model-00011-of-00046.safetensors): 3.00 GB, 30.00 GB in 8.0 s = 3.75 GB/s, "
            "25% of the checkpoint, ETA 24 s; slowest rank 1 (1.25 GB/s, 3.0 s behind the fastest)");
  // One rank: its own figures, no slowest rank; the last unit has no ETA.
  p.unit_index = 45;
  p.done_fraction = 1.0;
  EXPECT_EQ(format_load_progress(p, {}),
            "load [45/45] layers.9 (model-00011-of-00046.safetensors): 1.00 GB, 10.00 GB in 5.0 s = 2.00 GB/s, "
            "100% of the checkpoint");
  // The reporter without a communicator hands every line to the sink.
  std::vector<std::string> lines;
  load_progress_reporter(nullptr, [&](const std::string& l) { lines.push_back(l); })(p);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0], format_load_progress(p, {}));
}

TEST(LoadProgress, RankZeroLogsEveryUnitUnderMpirun) {
  v4rt::testing::set_mpirun_env();
  const TempDir dir;
  model::write_synthetic_checkpoint(small_tiny(), dir.str(), {3, 2});
  model::testing::write_bytes(dir / "ids.txt", {'1', ' ', '2', '\n'});
  // A checkpoint this small logs its progress lines at verbosity 1 only (-x GLOG_v=1).
  const std::string cmd = "timeout 120 " V4RT_MPIEXEC " -np 2 -x GLOG_v=1 " V4RT_BINARY_DIR "/launch/v4rt generate --model " +
                          dir.str() + " --config " V4RT_SOURCE_DIR "/configs/tp2.yaml --ids " + (dir / "ids.txt") +
                          " --max-tokens 1";
  const model::testing::CmdResult r = model::testing::run_shell(cmd, dir, model::testing::Stderr::kMerged);
  ASSERT_EQ(r.code, 0) << r.out;
  const int units = small_tiny().num_hidden_layers + 2;
  for (int i = 1; i <= units; ++i)
    EXPECT_NE(r.out.find("load [" + std::to_string(i) + "/" + std::to_string(units) + "] "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("] layers.0 (model-0000"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("; slowest rank "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("100% of the checkpoint"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace v4rt::launch
