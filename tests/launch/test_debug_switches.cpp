// SPDX-License-Identifier: MIT
// The `debug:` switches that act on backend ops (kernels/debug_backend.h), on the CPU backend:
// sync_each_op synchronizes after every op; check_finite stops at the first NaN/inf naming the
// layer (OpScope) and op, and lets contractual -inf through; dump_dir writes every op's outputs as
// .npy files named by layer and op. Then the same switches through the runtime YAML and
// make_backend, around the whole model (a synthetic tiny checkpoint), on the CPU backend and, in a
// CUDA build on a machine with a GPU, on the CUDA backend (skipped otherwise).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "common/check.h"
#include "common/op_scope.h"
#include "kernels/backend_factory.h"
#include "kernels/debug_backend.h"
#include "kernels/forwarding_backend.h"
#include "launch/runtime_config.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "model/presets.h"
#include "model/synthetic.h"
#include "tests/model/test_util.h"

namespace v4rt::model {
namespace {

using kernels::Backend;
using kernels::DebugOptions;
using kernels::ForwardingBackend;
using testing::TempDir;
using launch::backend_options;
using launch::debug_switches;
using launch::parse_runtime_config;
using launch::runtime_config_yaml;
using launch::RuntimeConfig;

// Counts the synchronizations that reach the wrapped backend.
class SyncCounter : public ForwardingBackend {
 public:
  SyncCounter(std::unique_ptr<Backend> inner, int* count) : ForwardingBackend(std::move(inner)), count_(count) {}
  void synchronize() override {
    ++*count_;
    ForwardingBackend::synchronize();
  }

 private:
  int* count_;
};

// Overwrites the output of the `target`-th sparse_attention call (0-based) with NaN.
class NanInjector : public ForwardingBackend {
 public:
  NanInjector(std::unique_ptr<Backend> inner, int target) : ForwardingBackend(std::move(inner)), target_(target) {}
  void sparse_attention(const kernels::SparseAttentionParams& p) override {
    ForwardingBackend::sparse_attention(p);
    if (calls_++ == target_) fill(kernels::view_reshape(p.out, {p.out.shape[0], p.out.shape[1] * p.out.shape[2]}), NAN);
  }

 private:
  int target_;
  int calls_ = 0;
};

TensorView host_view(std::vector<float>& v, std::initializer_list<int64_t> dims) {
  return TensorView(v.data(), DType::kF32, dims);
}

kernels::RmsNormParams rms_norm_of(std::vector<float>& x, std::vector<float>& y, int64_t rows, int64_t dim) {
  kernels::RmsNormParams p;
  p.x = host_view(x, {rows, dim});
  p.y = host_view(y, {rows, dim});
  return p;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// A .npy file written by the debug backend: its header dict and float32 payload.
struct Npy {
  std::string header;
  std::vector<float> values;
};
Npy read_npy(const std::string& path) {
  const std::vector<uint8_t> bytes = testing::read_bytes(path);
  Npy out;
  EXPECT_GE(bytes.size(), 10u) << path;
  if (bytes.size() < 10) return out;
  EXPECT_EQ(0, std::memcmp(bytes.data(), "\x93NUMPY\x01\x00", 8)) << path;
  const size_t len = size_t(bytes[8]) | size_t(bytes[9]) << 8;
  EXPECT_EQ((10 + len) % 64, 0u) << path << ": header not padded to 64 bytes";
  out.header.assign(reinterpret_cast<const char*>(bytes.data() + 10), len);
  out.values.resize((bytes.size() - 10 - len) / 4);
  std::memcpy(out.values.data(), bytes.data() + 10 + len, out.values.size() * 4);
  return out;
}

TEST(DebugBackend, SyncEachOpSynchronizesAfterEveryOp) {
  for (const bool on : {false, true}) {
    int syncs = 0;
    DebugOptions o;
    o.sync_each_op = on;
    auto be = kernels::make_debug_backend(std::make_unique<SyncCounter>(kernels::make_cpu_backend(), &syncs), o);
    std::vector<float> x = {1, 2, 3, 4, 5, 6}, y(6), z(6);
    be->rms_norm(rms_norm_of(x, y, 2, 3));
    kernels::AddParams ap;
    ap.a = host_view(x, {2, 3});
    ap.b = host_view(y, {2, 3});
    ap.out = host_view(z, {2, 3});
    be->add(ap);
    be->copy_rows(host_view(z, {2, 3}), host_view(x, {2, 3}));
    EXPECT_EQ(syncs, on ? 3 : 0) << "sync_each_op " << on;
    EXPECT_EQ(z, x);  // the ops still ran
  }
}

TEST(DebugBackend, CheckFiniteNamesScopeOpOutputAndElement) {
  DebugOptions o;
  o.check_finite = true;
  auto be = kernels::make_debug_backend(kernels::make_cpu_backend(), o);
  std::vector<float> x = {1, 2, 3, 4, 5, 6}, y(6);
  be->rms_norm(rms_norm_of(x, y, 2, 3));  // finite: passes
  x[4] = NAN;
  const std::string msg = error_of([&] {
    const OpScope layer("layer 7");
    const OpScope sub("attention");
    be->rms_norm(rms_norm_of(x, y, 2, 3));
  });
  EXPECT_NE(msg.find("layer 7/attention"), std::string::npos) << msg;
  EXPECT_NE(msg.find("op rms_norm"), std::string::npos) << msg;
  EXPECT_NE(msg.find("output 'y' [2, 3]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("at [1, 0]"), std::string::npos) << msg;  // row 1 is all NaN: first is [1, 0]
  EXPECT_NE(msg.find("3 non-finite of 6"), std::string::npos) << msg;
  EXPECT_TRUE(current_op_scope().empty()) << "scopes must close on the way out";
}

TEST(DebugBackend, CheckFiniteLetsMaskedIndexerScoresThrough) {
  DebugOptions o;
  o.check_finite = true;
  auto be = kernels::make_debug_backend(kernels::make_cpu_backend(), o);
  std::vector<float> q(4, 0.5f), keys(4 * 4, 0.25f), w(1, 1.0f), scores(4);
  kernels::IndexerScoresParams p;
  p.q = host_view(q, {1, 1, 4});
  p.keys = host_view(keys, {4, 4});
  p.w = host_view(w, {1, 1});
  p.scores = host_view(scores, {1, 4});
  p.pos_begin = 0;  // position 0 sees no compressed key: every score is -inf by contract
  p.ratio = 4;
  EXPECT_EQ(error_of([&] { be->indexer_scores(p); }), "");
  for (float s : scores) EXPECT_TRUE(std::isinf(s) && s < 0);
  scores.assign(4, 0.0f);
  // A NaN head weight is not masked away by the contract: it must still fail.
  w[0] = NAN;
  p.pos_begin = 8;  // keys 0 and 1 visible
  EXPECT_NE(error_of([&] { be->indexer_scores(p); }).find("op indexer_scores"), std::string::npos);
}

TEST(DebugBackend, DumpDirWritesEveryOutputAsNpyByScopeAndOp) {
  TempDir dir;
  DebugOptions o;
  o.dump_dir = dir / "dumps/nested";
  auto be = kernels::make_debug_backend(kernels::make_cpu_backend(), o);
  std::vector<float> x = {3, 4, 0, 1, 1, 1}, y(6);
  {
    const OpScope layer("layer 2");
    const OpScope sub("moe");
    be->rms_norm(rms_norm_of(x, y, 2, 3));
  }
  be->rms_norm(rms_norm_of(y, x, 2, 3));  // outside any scope
  const std::string first = o.dump_dir + "/000000_layer_2.moe_rms_norm_y.npy";
  ASSERT_TRUE(std::filesystem::exists(first)) << first;
  const Npy npy = read_npy(first);
  EXPECT_NE(npy.header.find("'descr': '<f4'"), std::string::npos) << npy.header;
  EXPECT_NE(npy.header.find("'shape': (2,3)"), std::string::npos) << npy.header;
  EXPECT_EQ(npy.values, y);
  EXPECT_TRUE(std::filesystem::exists(o.dump_dir + "/000001_none_rms_norm_y.npy"));
  std::ifstream index(o.dump_dir + "/index.tsv");
  std::string header, line;
  std::getline(index, header);
  std::getline(index, line);
  EXPECT_EQ(line, "000000_layer_2.moe_rms_norm_y.npy\tlayer 2/moe\trms_norm\ty\tfloat32\t[2, 3]");
}

TEST(DebugBackend, DumpDirThatCannotBeMadeIsNamed) {
  TempDir dir;
  std::ofstream(dir / "file") << "x";
  DebugOptions o;
  o.dump_dir = dir / "file/sub";
  const std::string msg = error_of([&] { kernels::make_debug_backend(kernels::make_cpu_backend(), o); });
  EXPECT_NE(msg.find("debug.dump_dir"), std::string::npos) << msg;
  EXPECT_NE(msg.find(o.dump_dir), std::string::npos) << msg;
}

TEST(DebugBackend, RuntimeYamlSwitchesReachTheBackendOptions) {
  const RuntimeConfig rc = parse_runtime_config(
      "debug: {sync_each_op: true, check_finite: true, dump_dir: /tmp/d, cuda_sync_alloc: true, "
      "cuda_attention_per_warp: true, cuda_attention_wgmma_min_tiles: 0}\n",
      "debug.yaml");
  const kernels::BackendOptions o = backend_options(rc, 3);
  EXPECT_EQ(o.device_index, 3);
  EXPECT_TRUE(o.debug.sync_each_op && o.debug.check_finite && o.cuda_sync_alloc && o.cuda_attention_per_warp);
  EXPECT_EQ(o.cuda_attention_wgmma_min_tiles, 0);
  EXPECT_EQ(backend_options(RuntimeConfig{}, 0).cuda_attention_wgmma_min_tiles, 32);
  EXPECT_EQ(o.debug.dump_dir, "/tmp/d");
  EXPECT_FALSE(backend_options(RuntimeConfig{}, 0).debug.any());
  // The switches round-trip through the emitted YAML and are listed for --help-debug.
  EXPECT_TRUE(parse_runtime_config(runtime_config_yaml(rc), "emitted").debug.cuda_attention_per_warp);
  EXPECT_EQ(parse_runtime_config(runtime_config_yaml(rc), "emitted").debug.cuda_attention_wgmma_min_tiles, 0);
  int listed = 0;
  for (const auto& [name, help] : debug_switches())
    listed += name == "sync_each_op" || name == "check_finite" || name == "dump_dir" || name == "cuda_sync_alloc" ||
              name == "cuda_attention_per_warp" || name == "cuda_attention_wgmma_min_tiles";
  EXPECT_EQ(listed, 6);
  // A negative list length names its key.
  const std::string msg = error_of(
      [&] { parse_runtime_config("debug: {cuda_attention_wgmma_min_tiles: -1}\n", "debug.yaml"); });
  EXPECT_NE(msg.find("cuda_attention_wgmma_min_tiles"), std::string::npos) << msg;
}

// --- around the whole model --------------------------------------------------------------------

class DebugModel : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "cuda") {
      if (!kernels::have_cuda_backend()) GTEST_SKIP() << "no CUDA backend in this build";
      try {
        kernels::make_backend("cuda");
      } catch (const Error& e) {
        GTEST_SKIP() << e.what();
      }
    }
    ModelConfig c = preset_config("tiny");
    c.vocab_size = 512;
    validate(c, "test config");
    SyntheticOptions so;
    so.seed = 11;
    write_synthetic_checkpoint(c, dir_ / "model", so);
    ckpt_ = Checkpoint::open(dir_ / "model");
  }

  // Prefill of 40 tokens then 2 decode steps; the logits of every step.
  std::vector<float> run(Backend& be) {
    auto m = Model::load(*ckpt_, ModelOptions{}, be);
    auto seq = m->new_sequence();
    std::vector<int32_t> ids(42);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t((i * 131 + 7) % 512);
    std::vector<float> all;
    for (int64_t pos = 0; pos < 42;) {
      const int64_t n = pos == 0 ? 40 : 1;
      StepChunk c;
      c.sequence = seq.get();
      c.tokens = std::span<const int32_t>(ids.data() + pos, size_t(n));
      std::vector<std::vector<float>> logits;
      m->step(std::span<const StepChunk>(&c, 1), &logits);
      all.insert(all.end(), logits[0].begin(), logits[0].end());
      pos += n;
    }
    return all;
  }

  TempDir dir_;
  std::unique_ptr<Checkpoint> ckpt_;
};

TEST_P(DebugModel, SwitchesLeaveTheLogitsUnchangedAndDumpByLayer) {
  auto plain = kernels::make_backend(GetParam());
  const std::vector<float> want = run(*plain);
  plain.reset();  // one backend at a time (the CUDA allocator is ordered on the first one's stream)
  const RuntimeConfig rc = parse_runtime_config(
      "debug: {sync_each_op: true, check_finite: true, dump_dir: '" + (dir_ / "dump") + "'}\n", "debug.yaml");
  auto debug = kernels::make_backend(GetParam(), backend_options(rc, 0));
  EXPECT_EQ(run(*debug), want);
  // Every part of the step is named: the embedding, each layer's sublayers, the head.
  int embed = 0, attention0 = 0, moe1 = 0, head = 0, files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir_ / "dump")) {
    const std::string f = e.path().filename().string();
    ++files;
    embed += f.find("_embed_embedding_out.npy") != std::string::npos;
    attention0 += f.find("_layer_0.attention.attend_sparse_attention_out.npy") != std::string::npos;
    moe1 += f.find("_layer_1.moe_moe_experts_out.npy") != std::string::npos;
    head += f.find("_head_linear_y.npy") != std::string::npos;
  }
  EXPECT_EQ(embed, 3);  // one per step
  EXPECT_EQ(attention0, 3);
  EXPECT_EQ(moe1, 3);
  EXPECT_EQ(head, 3);
  EXPECT_GT(files, 100);
}

TEST_P(DebugModel, CheckFiniteNamesTheLayerOfTheFirstNaN) {
  const std::string where = "layer 1/attention/attend";
  DebugOptions o;
  o.check_finite = true;
  // The second sparse_attention call of the prefill is layer 1's.
  auto be = kernels::make_debug_backend(std::make_unique<NanInjector>(kernels::make_backend(GetParam()), 1), o);
  const std::string msg = error_of([&] { run(*be); });
  EXPECT_NE(msg.find("debug.check_finite: first non-finite value at " + where + ", op sparse_attention: output 'out'"),
            std::string::npos)
      << msg;
}

INSTANTIATE_TEST_SUITE_P(Backends, DebugModel, ::testing::Values("cpu", "cuda"),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

}  // namespace
}  // namespace v4rt::model
