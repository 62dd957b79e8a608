// SPDX-License-Identifier: MIT
// Compact KV rows on the CUDA backend (label gpu; skips without a device): every kernel path that
// reads compressed entries or indexer keys (attention per-warp, decode multi-query, tensor-core
// prefill; indexer SIMT and tensor-core) gives bit for bit the output it gives on the same values
// in plain rows, and the device kv_pack writes the bytes the host codec writes.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "common/kv_format.h"
#include "kernels/backend.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/factory.h"

namespace v4rt::kernels {
namespace {

#define REQUIRE_GPU() \
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device on this machine"

std::vector<float> randn(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// Official-numerics rows of layout `l` (rounded by the CPU backend) at assorted magnitudes.
std::vector<float> official_rows(Backend& cpu, const KvRowLayout& l, int64_t rows, uint64_t seed) {
  std::vector<float> x = randn(size_t(rows * l.dim), seed);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < l.dim; ++i) x[size_t(r * l.dim + i)] *= std::ldexp(1.0f, int(r % 7) * 3 - 9);
  round_to_kv_layout(cpu, l, TensorView(x.data(), DType::kF32, {rows, l.dim}));
  return x;
}

std::vector<uint8_t> host_pack(const KvRowLayout& l, const std::vector<float>& x) {
  const int64_t rows = int64_t(x.size()) / l.dim;
  std::vector<uint8_t> out(size_t(rows * l.row_bytes));
  for (int64_t r = 0; r < rows; ++r) EXPECT_TRUE(kv_pack_row(l, x.data() + r * l.dim, out.data() + r * l.row_bytes));
  return out;
}

// A device tensor holding host values (F32 converted to `dtype`: BF16 / F32; or raw bytes).
struct Dev {
  Buffer buf;
  TensorView view;
};
Dev upload(Backend& be, const std::vector<float>& v, std::initializer_list<int64_t> dims, DType dtype) {
  Dev d;
  if (dtype == DType::kBF16) {
    std::vector<uint16_t> h(v.size());
    for (size_t i = 0; i < v.size(); ++i) h[i] = f32_to_bf16(v[i]);
    d.buf = be.alloc(h.size() * 2);
    be.copy_to_device(d.buf.data(), h.data(), h.size() * 2);
  } else {
    d.buf = be.alloc(v.size() * 4);
    be.copy_to_device(d.buf.data(), v.data(), v.size() * 4);
  }
  d.view = TensorView(d.buf.data(), dtype, dims, Device::kCuda);
  return d;
}
Dev upload_bytes(Backend& be, const std::vector<uint8_t>& v, int64_t rows, int64_t row_bytes) {
  Dev d;
  d.buf = be.alloc(v.size());
  be.copy_to_device(d.buf.data(), v.data(), v.size());
  d.view = TensorView(d.buf.data(), DType::kU8, {rows, row_bytes}, Device::kCuda);
  return d;
}
std::vector<uint8_t> download(Backend& be, const TensorView& v, size_t bytes) {
  std::vector<uint8_t> h(bytes);
  be.synchronize();
  be.copy_to_host(h.data(), v.data, bytes);
  return h;
}

struct AttnCase {
  const char* name;
  int64_t tokens, heads, dim;
  DType dtype;      // q, window and plain entries on the device
  bool per_warp;
};

// One sparse-attention call over plain and over compact entries; the outputs' bytes.
void check_attention(const AttnCase& c) {
  SCOPED_TRACE(c.name);
  cuda::CudaBackendOptions opt;
  opt.attention_per_warp = c.per_warp;
  auto gpu = cuda::make_cuda_backend(-1, opt);
  auto cpu = make_cpu_backend();
  const int64_t num_comp = 300, cand = 96, window = 128, pos0 = 1000;
  const int64_t num_win = window - 1 + c.tokens;
  const KvRowLayout l = fp8_rope_kv_layout(c.dim, 64);
  const std::vector<float> comp = official_rows(*cpu, l, num_comp, 3);
  std::vector<float> q = randn(size_t(c.tokens * c.heads * c.dim), 1), win = randn(size_t(num_win * c.dim), 2);
  for (float& v : q) v = round_bf16(v);
  for (float& v : win) v = round_bf16(v);
  std::vector<int32_t> idx(size_t(c.tokens * cand));
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = i % 11 == 5 ? -1 : int32_t((i * 37) % num_comp);
  Dev dq = upload(*gpu, q, {c.tokens, c.heads, c.dim}, c.dtype);
  Dev dwin = upload(*gpu, win, {num_win, c.dim}, c.dtype);
  Dev plain = upload(*gpu, comp, {num_comp, c.dim}, c.dtype);
  Dev packed = upload_bytes(*gpu, host_pack(l, comp), num_comp, l.row_bytes);
  Buffer didx = gpu->alloc(idx.size() * 4);
  gpu->copy_to_device(didx.data(), idx.data(), idx.size() * 4);
  WeightSource ws;
  ws.name = "sink";
  ws.cols = c.heads;
  const std::vector<float> sink = randn(size_t(c.heads), 4);
  ws.data = sink.data();
  const WeightView dsink = gpu->upload_weight(ws);
  for (bool list : {true, false}) {
    SCOPED_TRACE(list ? "candidate list" : "all visible entries");
    std::vector<std::vector<uint8_t>> outs;
    for (bool compact : {false, true}) {
      Dev out = upload(*gpu, std::vector<float>(q.size(), 0.0f), {c.tokens, c.heads, c.dim}, c.dtype);
      SparseAttentionParams p;
      p.q = dq.view;
      p.window_kv = dwin.view;
      p.window_pos0 = pos0 - (window - 1);
      p.pos_begin = pos0;
      p.window = int(window);
      p.comp_kv = compact ? packed.view : plain.view;
      if (compact) p.comp_layout = l;
      if (list) p.comp_idx = TensorView(didx.data(), DType::kI32, {c.tokens, cand}, Device::kCuda);
      else p.comp_ratio = 4;
      p.sink = dsink;
      p.softmax_scale = 0.04f;
      p.bf16_probs = p.out_bf16 = true;
      p.out = out.view;
      gpu->sparse_attention(p);
      outs.push_back(download(*gpu, out.view, q.size() * dtype_size(c.dtype)));
    }
    EXPECT_TRUE(outs[0] == outs[1]) << "compact entries change the attention output";
  }
}

TEST(CudaKvCache, AttentionPerWarpReadsCompactEntriesAsPlain) {
  REQUIRE_GPU();
  check_attention({"per-warp", 3, 16, 512, DType::kF32, true});
}

TEST(CudaKvCache, AttentionDecodeMqaReadsCompactEntriesAsPlain) {
  REQUIRE_GPU();
  check_attention({"decode multi-query", 1, 64, 512, DType::kF32, false});
}

TEST(CudaKvCache, AttentionTensorCoresReadCompactEntriesAsPlain) {
  REQUIRE_GPU();
  check_attention({"tensor cores", 40, 64, 512, DType::kBF16, false});  // 40 x 8 head groups fill the SMs
}

// Indexer scores over plain and compact keys: SIMT (few tokens) and tensor cores (>= 16 tokens).
TEST(CudaKvCache, IndexerReadsCompactKeysAsPlain) {
  REQUIRE_GPU();
  auto gpu = cuda::make_cuda_backend();
  auto cpu = make_cpu_backend();
  const int64_t heads = 64, dim = 128, keys = 700;
  const KvRowLayout l = fp4_kv_layout(dim);
  const std::vector<float> k = official_rows(*cpu, l, keys, 7);
  Dev packed = upload_bytes(*gpu, host_pack(l, k), keys, l.row_bytes);
  for (int64_t n : {int64_t(3), int64_t(40)}) {
    SCOPED_TRACE(n < 16 ? "SIMT" : "tensor cores");
    std::vector<float> q = randn(size_t(n * heads * dim), 5), w = randn(size_t(n * heads), 6);
    QdqParams qq;  // official queries: FP4 values, as the tensor-core kernel expects
    qq.x = TensorView(q.data(), DType::kF32, {n * heads, dim});
    qq.format = QdqFormat::kFp4E2M1;
    qq.block = 32;
    cpu->qdq(qq);
    for (DType plain_dtype : {DType::kF32, DType::kBF16}) {
      Dev dq = upload(*gpu, q, {n, heads, dim}, DType::kBF16), dw = upload(*gpu, w, {n, heads}, DType::kF32);
      Dev plain = upload(*gpu, k, {keys, dim}, plain_dtype);
      std::vector<std::vector<uint8_t>> outs;
      for (bool compact : {false, true}) {
        Dev scores = upload(*gpu, std::vector<float>(size_t(n * keys), 0.0f), {n, keys}, DType::kF32);
        IndexerScoresParams p;
        p.q = dq.view;
        p.keys = compact ? packed.view : plain.view;
        if (compact) p.key_layout = l;
        p.w = dw.view;
        p.scores = scores.view;
        p.weight_scale = 0.01f;
        p.pos_begin = 4 * keys - n / 2;  // the last keys become visible inside the chunk
        p.bf16_arith = true;
        gpu->indexer_scores(p);
        outs.push_back(download(*gpu, scores.view, size_t(n * keys) * 4));
      }
      EXPECT_TRUE(outs[0] == outs[1]) << "compact keys change the scores (plain " << dtype_name(plain_dtype) << ")";
    }
  }
}

// The device kv_pack writes the host codec's bytes (from F32 and from BF16 rows).
TEST(CudaKvCache, PackWritesTheHostCodecBytes) {
  REQUIRE_GPU();
  auto gpu = cuda::make_cuda_backend();
  auto cpu = make_cpu_backend();
  for (const KvRowLayout& l : {fp8_rope_kv_layout(512, 64), fp8_rope_kv_layout(128, 32), fp4_kv_layout(128),
                               fp4_kv_layout(64)}) {
    SCOPED_TRACE(std::string(kv_format_name(l.format)) + " dim " + std::to_string(l.dim));
    const int64_t rows = 37;
    const std::vector<float> x = official_rows(*cpu, l, rows, 9 + uint64_t(l.dim));
    const std::vector<uint8_t> want = host_pack(l, x);
    for (DType dt : {DType::kF32, DType::kBF16}) {
      Dev dx = upload(*gpu, x, {rows, l.dim}, dt);
      Dev out = upload_bytes(*gpu, std::vector<uint8_t>(want.size(), 0xAB), rows, l.row_bytes);
      KvPackParams p;
      p.x = dx.view;
      p.out = out.view;
      p.layout = l;
      gpu->kv_pack(p);
      EXPECT_TRUE(download(*gpu, out.view, want.size()) == want) << dtype_name(dt) << " rows";
    }
  }
}

}  // namespace
}  // namespace v4rt::kernels
