// SPDX-License-Identifier: MIT
// Compact KV rows on the CUDA backend (label gpu; skips without a device): every kernel path that
// reads compressed entries or indexer keys (attention per-warp, decode multi-query, tensor-core
// prefill; indexer SIMT and tensor-core) gives bit for bit the output it gives on the same values
// in plain rows, and the device kv_pack writes the bytes the host codec writes. Rows paged into
// pool blocks (KvBlocks) give bit for bit what the same rows give contiguous, on every path and in
// batches of many parts (several launches), and the CPU op's output within the tolerances of
// tests/cuda/test_cuda_ops.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common/kv_format.h"
#include "kernels/backend.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/factory.h"
#include "tests/cuda/cuda_test_util.h"

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

// --- paged rows ----------------------------------------------------------------------------------

using cuda_test::compare;
using cuda_test::Tolerance;
const Tolerance kAttnTol{1e-2, 1e-2, 1e-4};   // test_cuda_ops: attention output (one bf16 rounding)
const Tolerance kLseTol{1e-5, 1e-5, 1e-9};    // test_cuda_ops: attention log-sum-exp
const Tolerance kIdxBf16Tol{2e-2, 2e-2, 1e-4};  // test_cuda_ops: indexer, official numerics
const Tolerance kIdxF32Tol{1e-4, 1e-4, 1e-8};   // test_cuda_ops: indexer, fp32

// Packed rows copied to the device in blocks of 2^block_shift rows, block b in slot 2 perm[b] + 1
// of one pool of 256-byte aligned slots whose other slots (and the unused tail of the last block)
// hold 0xA5 bytes, so a row read from the wrong place decodes to other values; the block table is
// uploaded beside it.
struct DevPaged {
  Buffer pool, table;
  KvBlocks blocks;
  const uint8_t* first = nullptr;  // the first block (a paged view's data)
  TensorView view(int64_t rows, const KvRowLayout& l) const {
    return TensorView(const_cast<uint8_t*>(first), DType::kU8, {rows, l.row_bytes}, Device::kCuda);
  }
};
DevPaged upload_paged(Backend& be, const std::vector<uint8_t>& packed, const KvRowLayout& l, int block_shift,
                      uint64_t seed) {
  const int64_t rows = int64_t(packed.size()) / l.row_bytes, block_rows = int64_t(1) << block_shift;
  const int64_t num_blocks = (rows + block_rows - 1) / block_rows, block_bytes = block_rows * l.row_bytes;
  const int64_t slot_bytes = (block_bytes + 255) / 256 * 256;
  std::vector<int64_t> perm(static_cast<size_t>(num_blocks));
  std::iota(perm.begin(), perm.end(), int64_t(0));
  std::shuffle(perm.begin(), perm.end(), std::mt19937_64(seed));
  std::vector<uint8_t> image(size_t((2 * num_blocks + 1) * slot_bytes), 0xA5);
  DevPaged d;
  d.pool = be.alloc(image.size());
  std::vector<const uint8_t*> table;
  for (int64_t b = 0; b < num_blocks; ++b) {
    const int64_t offset = (2 * perm[size_t(b)] + 1) * slot_bytes, n = std::min(block_rows, rows - b * block_rows);
    std::copy_n(packed.data() + b * block_bytes, size_t(n * l.row_bytes), image.data() + offset);
    table.push_back(static_cast<const uint8_t*>(d.pool.data()) + offset);
  }
  be.copy_to_device(d.pool.data(), image.data(), image.size());
  d.table = be.alloc(table.size() * sizeof(table[0]));
  be.copy_to_device(d.table.data(), table.data(), table.size() * sizeof(table[0]));
  d.blocks.blocks = static_cast<const uint8_t* const*>(d.table.data());
  d.blocks.block_shift = block_shift;
  d.first = table[0];
  return d;
}

constexpr int kBlockShifts[] = {0, 1, 2};  // 1, 2 and 4 rows per block

// Device output bytes as floats (F32 or BF16 storage).
std::vector<float> as_floats(const std::vector<uint8_t>& bytes, DType dtype) {
  std::vector<float> v(bytes.size() / dtype_size(dtype));
  for (size_t i = 0; i < v.size(); ++i) {
    if (dtype == DType::kBF16) {
      uint16_t h;
      std::memcpy(&h, bytes.data() + 2 * i, 2);
      v[i] = bf16_to_f32(h);
    } else {
      std::memcpy(&v[i], bytes.data() + 4 * i, 4);
    }
  }
  return v;
}

struct PagedAttnCase {
  const char* name;
  int64_t tokens, heads, dim;
  DType dtype;  // q, window and output on the device
  bool per_warp;
};

// One sparse-attention call over contiguous compact entries and over the same entries paged with
// blocks of 1, 2 and 4 rows (301 entries: the last block part empty), official and fp32 numerics,
// with a candidate list and with every visible entry; against the CPU op on the host rows.
void check_paged_attention(const PagedAttnCase& c) {
  SCOPED_TRACE(c.name);
  cuda::CudaBackendOptions opt;
  opt.attention_per_warp = c.per_warp;
  auto gpu = cuda::make_cuda_backend(-1, opt);
  auto cpu = make_cpu_backend();
  const int64_t num_comp = 301, cand = 96, window = 128, pos0 = 1000;
  const int64_t num_win = window - 1 + c.tokens;
  const KvRowLayout l = fp8_rope_kv_layout(c.dim, 64);
  const std::vector<float> comp = official_rows(*cpu, l, num_comp, 13);
  std::vector<uint8_t> host_rows = host_pack(l, comp);
  std::vector<float> q = randn(size_t(c.tokens * c.heads * c.dim), 11), win = randn(size_t(num_win * c.dim), 12);
  for (float& v : q) v = round_bf16(v);
  for (float& v : win) v = round_bf16(v);
  std::vector<int32_t> idx(size_t(c.tokens * cand));
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = i % 11 == 5 ? -1 : int32_t((i * 37 + 300) % num_comp);
  const std::vector<float> sink = randn(size_t(c.heads), 14);
  Dev dq = upload(*gpu, q, {c.tokens, c.heads, c.dim}, c.dtype);
  Dev dwin = upload(*gpu, win, {num_win, c.dim}, c.dtype);
  Dev packed = upload_bytes(*gpu, host_rows, num_comp, l.row_bytes);
  std::vector<DevPaged> paged;
  for (int shift : kBlockShifts) paged.push_back(upload_paged(*gpu, host_rows, l, shift, 70 + uint64_t(shift)));
  Buffer didx = gpu->alloc(idx.size() * 4);
  gpu->copy_to_device(didx.data(), idx.data(), idx.size() * 4);
  WeightSource ws;
  ws.name = "sink";
  ws.cols = c.heads;
  ws.data = sink.data();
  const WeightView dsink = gpu->upload_weight(ws), hsink = cpu->upload_weight(ws);
  const size_t out_size = q.size(), lse_size = size_t(c.tokens * c.heads);
  for (bool official : {true, false}) {
    for (bool list : {true, false}) {
      SCOPED_TRACE(std::string(official ? "official" : "fp32") + (list ? ", candidate list" : ", all visible entries"));
      auto params = [&](bool on_gpu) {
        SparseAttentionParams p;
        p.window_pos0 = pos0 - (window - 1);
        p.pos_begin = pos0;
        p.window = int(window);
        p.comp_layout = l;
        if (!list) p.comp_ratio = 4;
        p.softmax_scale = 0.04f;
        p.bf16_probs = p.out_bf16 = official;
        if (on_gpu) {
          p.q = dq.view;
          p.window_kv = dwin.view;
          if (list) p.comp_idx = TensorView(didx.data(), DType::kI32, {c.tokens, cand}, Device::kCuda);
          p.sink = dsink;
        } else {
          p.q = TensorView(q.data(), DType::kF32, {c.tokens, c.heads, c.dim});
          p.window_kv = TensorView(win.data(), DType::kF32, {num_win, c.dim});
          p.comp_kv = TensorView(host_rows.data(), DType::kU8, {num_comp, l.row_bytes});
          if (list) p.comp_idx = TensorView(idx.data(), DType::kI32, {c.tokens, cand});
          p.sink = hsink;
        }
        return p;
      };
      std::vector<float> want(out_size), want_lse(lse_size);
      SparseAttentionParams hp = params(false);
      hp.out = TensorView(want.data(), DType::kF32, {c.tokens, c.heads, c.dim});
      hp.lse = TensorView(want_lse.data(), DType::kF32, {c.tokens, c.heads});
      cpu->sparse_attention(hp);
      std::vector<std::vector<uint8_t>> outs, lses;
      for (size_t v = 0; v <= paged.size(); ++v) {  // v = 0: contiguous; then each paging
        Dev out = upload(*gpu, std::vector<float>(out_size, 0.0f), {c.tokens, c.heads, c.dim}, c.dtype);
        Dev lse = upload(*gpu, std::vector<float>(lse_size, 0.0f), {c.tokens, c.heads}, DType::kF32);
        SparseAttentionParams p = params(true);
        p.comp_kv = v == 0 ? packed.view : paged[v - 1].view(num_comp, l);
        if (v > 0) p.comp_blocks = paged[v - 1].blocks;
        p.out = out.view;
        p.lse = lse.view;
        gpu->sparse_attention(p);
        outs.push_back(download(*gpu, out.view, out_size * dtype_size(c.dtype)));
        lses.push_back(download(*gpu, lse.view, lse_size * 4));
      }
      for (size_t v = 1; v < outs.size(); ++v) {
        EXPECT_TRUE(outs[v] == outs[0]) << "blocks of " << (1 << kBlockShifts[v - 1]) << " rows change the output";
        EXPECT_TRUE(lses[v] == lses[0]) << "blocks of " << (1 << kBlockShifts[v - 1]) << " rows change the lse";
      }
      EXPECT_TRUE(compare(std::string("paged attention ") + c.name, as_floats(outs[0], c.dtype), want, kAttnTol));
      EXPECT_TRUE(compare(std::string("paged attention lse ") + c.name, as_floats(lses[0], DType::kF32), want_lse, kLseTol));
    }
  }
}

TEST(CudaKvCache, AttentionPerWarpReadsPagedEntriesAsContiguous) {
  REQUIRE_GPU();
  check_paged_attention({"per-warp", 3, 16, 512, DType::kF32, true});
}

TEST(CudaKvCache, AttentionDecodeMqaReadsPagedEntriesAsContiguous) {
  REQUIRE_GPU();
  check_paged_attention({"decode multi-query", 1, 64, 512, DType::kF32, false});
}

// 40 tokens x 8 head groups fill the SMs: the tensor-core kernel under the official numerics.
TEST(CudaKvCache, AttentionTensorCoresReadPagedEntriesAsContiguous) {
  REQUIRE_GPU();
  check_paged_attention({"tensor cores", 40, 64, 512, DType::kBF16, false});
}

// Indexer scores over contiguous and paged keys (701 keys: the last block part empty): SIMT (3
// tokens; 40 tokens in fp32) and tensor cores (40 tokens, official), keys from 0 and from 37.
TEST(CudaKvCache, IndexerReadsPagedKeysAsContiguous) {
  REQUIRE_GPU();
  auto gpu = cuda::make_cuda_backend();
  auto cpu = make_cpu_backend();
  const int64_t heads = 64, dim = 128, keys = 701;
  const KvRowLayout l = fp4_kv_layout(dim);
  const std::vector<float> k = official_rows(*cpu, l, keys, 17);
  std::vector<uint8_t> host_keys = host_pack(l, k);
  Dev packed = upload_bytes(*gpu, host_keys, keys, l.row_bytes);
  std::vector<DevPaged> paged;
  for (int shift : kBlockShifts) paged.push_back(upload_paged(*gpu, host_keys, l, shift, 80 + uint64_t(shift)));
  for (int64_t n : {int64_t(3), int64_t(40)}) {
    std::vector<float> q = randn(size_t(n * heads * dim), 15), w = randn(size_t(n * heads), 16);
    QdqParams qq;  // official queries: FP4 values, as the tensor-core kernel expects
    qq.x = TensorView(q.data(), DType::kF32, {n * heads, dim});
    qq.format = QdqFormat::kFp4E2M1;
    qq.block = 32;
    cpu->qdq(qq);
    Dev dq = upload(*gpu, q, {n, heads, dim}, DType::kBF16), dw = upload(*gpu, w, {n, heads}, DType::kF32);
    for (bool official : {true, false}) {
      for (int64_t key_begin : {int64_t(0), int64_t(37)}) {
        SCOPED_TRACE(std::to_string(n) + " tokens, " + (official ? "official" : "fp32") + ", keys from " +
                     std::to_string(key_begin));
        const int64_t cols = keys - key_begin;
        auto params = [&](bool on_gpu, std::vector<float>* host_scores) {
          IndexerScoresParams p;
          p.key_layout = l;
          p.key_begin = key_begin;
          p.weight_scale = 0.01f;
          p.pos_begin = 4 * keys - n / 2;  // the last keys become visible inside the chunk
          p.bf16_arith = official;
          if (on_gpu) {
            p.q = dq.view;
            p.w = dw.view;
          } else {
            p.q = TensorView(q.data(), DType::kF32, {n, heads, dim});
            p.w = TensorView(w.data(), DType::kF32, {n, heads});
            p.keys = TensorView(host_keys.data(), DType::kU8, {keys, l.row_bytes});
            p.scores = TensorView(host_scores->data(), DType::kF32, {n, cols});
          }
          return p;
        };
        std::vector<float> want(size_t(n * cols));
        cpu->indexer_scores(params(false, &want));
        std::vector<std::vector<uint8_t>> outs;
        for (size_t v = 0; v <= paged.size(); ++v) {
          Dev scores = upload(*gpu, std::vector<float>(size_t(n * cols), 0.0f), {n, cols}, DType::kF32);
          IndexerScoresParams p = params(true, nullptr);
          p.keys = v == 0 ? packed.view : paged[v - 1].view(keys, l);
          if (v > 0) p.key_blocks = paged[v - 1].blocks;
          p.scores = scores.view;
          gpu->indexer_scores(p);
          outs.push_back(download(*gpu, scores.view, size_t(n * cols) * 4));
        }
        for (size_t v = 1; v < outs.size(); ++v)
          EXPECT_TRUE(outs[v] == outs[0]) << "blocks of " << (1 << kBlockShifts[v - 1]) << " rows change the scores";
        EXPECT_TRUE(compare("paged indexer n" + std::to_string(n), as_floats(outs[0], DType::kF32), want,
                            official ? kIdxBf16Tol : kIdxF32Tol));
      }
    }
  }
}

// Batches of 3 and 300 sequences (300: three launches of attention parts, two of indexer parts)
// whose entries / keys are prefixes of one table, contiguous or paged with the sequence's own block
// size (1, 2, 4 rows in turn): the paged batch gives the contiguous batch's bytes, which match the
// CPU op per sequence. Attention: 3 sequences (7 tokens) take the decode multi-query kernel; 300
// take the tensor-core kernel (official) or the per-warp kernel (fp32). Indexer: the SIMT kernel.
TEST(CudaKvCache, BatchesReadPagedRowsAsContiguous) {
  REQUIRE_GPU();
  auto gpu = cuda::make_cuda_backend();
  auto cpu = make_cpu_backend();
  const int64_t heads = 64, dim = 512, num_comp = 301, window = 32, cand = 64;
  const int64_t idx_dim = 128, num_keys = 701;
  const KvRowLayout fp8 = fp8_rope_kv_layout(dim, 64), fp4 = fp4_kv_layout(idx_dim);
  const std::vector<float> comp = official_rows(*cpu, fp8, num_comp, 21), key_values = official_rows(*cpu, fp4, num_keys, 22);
  std::vector<uint8_t> host_comp = host_pack(fp8, comp), host_keys = host_pack(fp4, key_values);
  Dev comp_rows = upload_bytes(*gpu, host_comp, num_comp, fp8.row_bytes);
  Dev key_rows = upload_bytes(*gpu, host_keys, num_keys, fp4.row_bytes);
  std::vector<DevPaged> paged_comp, paged_keys;
  for (int shift : kBlockShifts) {
    paged_comp.push_back(upload_paged(*gpu, host_comp, fp8, shift, 90 + uint64_t(shift)));
    paged_keys.push_back(upload_paged(*gpu, host_keys, fp4, shift, 95 + uint64_t(shift)));
  }
  const std::vector<float> sink = randn(size_t(heads), 23);
  WeightSource ws;
  ws.name = "sink";
  ws.cols = heads;
  ws.data = sink.data();
  const WeightView dsink = gpu->upload_weight(ws), hsink = cpu->upload_weight(ws);
  for (int num_parts : {3, 300}) {
    std::vector<int64_t> rows(static_cast<size_t>(num_parts)), row0(rows.size());
    int64_t total = 0;
    for (int i = 0; i < num_parts; ++i) {
      rows[size_t(i)] = num_parts == 3 && i == 1 ? 5 : 1 + (i % 7 == 3);
      row0[size_t(i)] = total;
      total += rows[size_t(i)];
    }
    // Sequence i: entries / keys [0, its count) of the tables, positions after them.
    auto comp_count = [&](int i) { return int64_t(40 + (i * 53) % (num_comp - 40)); };
    auto key_count = [&](int i) { return int64_t(1 + (i * 337 + 90) % num_keys); };
    std::vector<float> q = randn(size_t(total * heads * dim), 24), win = randn(size_t((window + 8) * dim), 25);
    for (float& v : q) v = round_bf16(v * 0.3f);
    for (float& v : win) v = round_bf16(v);
    std::vector<float> iq = randn(size_t(total * heads * idx_dim), 26), iw = randn(size_t(total * heads), 27);
    for (float& v : iq) v = round_bf16(v);
    std::vector<int32_t> lists(size_t(total * cand));
    for (int i = 0; i < num_parts; ++i)
      for (int64_t r = row0[size_t(i)]; r < row0[size_t(i)] + rows[size_t(i)]; ++r)
        for (int64_t c = 0; c < cand; ++c)
          lists[size_t(r * cand + c)] = (r + c) % 9 == 4 ? -1 : int32_t((r * 31 + c * 7) % comp_count(i));
    Dev dq = upload(*gpu, q, {total, heads, dim}, DType::kBF16), dwin = upload(*gpu, win, {window + 8, dim}, DType::kBF16);
    Dev diq = upload(*gpu, iq, {total, heads, idx_dim}, DType::kBF16), diw = upload(*gpu, iw, {total, heads}, DType::kF32);
    Buffer didx = gpu->alloc(lists.size() * 4);
    gpu->copy_to_device(didx.data(), lists.data(), lists.size() * 4);
    const TensorView hq(q.data(), DType::kF32, {total, heads, dim}), hwin(win.data(), DType::kF32, {window + 8, dim});
    const TensorView hiq(iq.data(), DType::kF32, {total, heads, idx_dim}), hiw(iw.data(), DType::kF32, {total, heads});
    const TensorView hidx(lists.data(), DType::kI32, {total, cand});
    const TensorView gidx(didx.data(), DType::kI32, {total, cand}, Device::kCuda);
    for (bool official : {true, false}) {
      SCOPED_TRACE(std::to_string(num_parts) + " sequences, " + (official ? "official" : "fp32"));
      auto attn_part = [&](int i, bool on_gpu, const TensorView& out, const TensorView& lse) {
        const int64_t r0 = row0[size_t(i)], r1 = r0 + rows[size_t(i)];
        SparseAttentionParams p;
        p.pos_begin = 4 * comp_count(i) + 3 + i % 5;
        p.window = int(window);
        p.window_pos0 = p.pos_begin - (window - 1);
        p.window_kv = view_rows(on_gpu ? dwin.view : hwin, 0, window - 1 + rows[size_t(i)]);
        p.q = view_rows(on_gpu ? dq.view : hq, r0, r1);
        p.comp_layout = fp8;
        if (!on_gpu) p.comp_kv = TensorView(host_comp.data(), DType::kU8, {comp_count(i), fp8.row_bytes});
        if (i % 2 == 0) p.comp_idx = view_rows(on_gpu ? gidx : hidx, r0, r1);
        else p.comp_ratio = 4;
        p.sink = on_gpu ? dsink : hsink;
        p.softmax_scale = 1.0f / std::sqrt(float(dim));
        p.bf16_probs = p.out_bf16 = official;
        p.out = view_rows(out, r0, r1);
        p.lse = view_rows(lse, r0, r1);
        return p;
      };
      auto idx_part = [&](int i, bool on_gpu, const TensorView& scores) {
        const int64_t r0 = row0[size_t(i)], r1 = r0 + rows[size_t(i)];
        IndexerScoresParams p;
        p.q = view_rows(on_gpu ? diq.view : hiq, r0, r1);
        p.w = view_rows(on_gpu ? diw.view : hiw, r0, r1);
        p.key_layout = fp4;
        if (!on_gpu) p.keys = TensorView(host_keys.data(), DType::kU8, {key_count(i), fp4.row_bytes});
        p.scores = view_cols(view_rows(scores, r0, r1), 0, key_count(i));
        p.weight_scale = 0.01f;
        p.pos_begin = std::max<int64_t>(0, 4 * key_count(i) - 1 - (i % 4) * 9);  // some keys not yet visible
        p.bf16_arith = official;
        return p;
      };
      std::vector<float> want(size_t(total * heads * dim)), want_lse(size_t(total * heads));
      std::vector<float> want_scores(size_t(total * num_keys), -INFINITY);
      const TensorView hout(want.data(), DType::kF32, {total, heads, dim}), hlse(want_lse.data(), DType::kF32, {total, heads});
      const TensorView hscores(want_scores.data(), DType::kF32, {total, num_keys});
      for (int i = 0; i < num_parts; ++i) {
        cpu->sparse_attention(attn_part(i, false, hout, hlse));
        cpu->indexer_scores(idx_part(i, false, hscores));
      }
      std::vector<std::vector<uint8_t>> outs, lses, scores;
      for (bool paged : {false, true}) {
        Dev out = upload(*gpu, std::vector<float>(want.size(), 0.0f), {total, heads, dim}, DType::kBF16);
        Dev lse = upload(*gpu, std::vector<float>(want_lse.size(), 0.0f), {total, heads}, DType::kF32);
        Dev sc = upload(*gpu, std::vector<float>(want_scores.size(), -INFINITY), {total, num_keys}, DType::kF32);
        std::vector<SparseAttentionParams> attn;
        std::vector<IndexerScoresParams> idx;
        for (int i = 0; i < num_parts; ++i) {
          const DevPaged& pc = paged_comp[size_t(i % 3)];
          const DevPaged& pk = paged_keys[size_t(i % 3)];
          attn.push_back(attn_part(i, true, out.view, lse.view));
          attn.back().comp_kv = paged ? pc.view(comp_count(i), fp8) : view_rows(comp_rows.view, 0, comp_count(i));
          if (paged) attn.back().comp_blocks = pc.blocks;
          idx.push_back(idx_part(i, true, sc.view));
          idx.back().keys = paged ? pk.view(key_count(i), fp4) : view_rows(key_rows.view, 0, key_count(i));
          if (paged) idx.back().key_blocks = pk.blocks;
        }
        gpu->sparse_attention_batch({attn.data(), int64_t(attn.size())});
        gpu->indexer_scores_batch({idx.data(), int64_t(idx.size())});
        outs.push_back(download(*gpu, out.view, want.size() * 2));
        lses.push_back(download(*gpu, lse.view, want_lse.size() * 4));
        scores.push_back(download(*gpu, sc.view, want_scores.size() * 4));
      }
      EXPECT_TRUE(outs[1] == outs[0]) << "paged entries change the attention batch output";
      EXPECT_TRUE(lses[1] == lses[0]) << "paged entries change the attention batch lse";
      EXPECT_TRUE(scores[1] == scores[0]) << "paged keys change the indexer batch scores";
      const std::string name = std::to_string(num_parts) + (official ? " official" : " fp32");
      EXPECT_TRUE(compare("paged attention batch " + name, as_floats(outs[0], DType::kBF16), want, kAttnTol));
      EXPECT_TRUE(compare("paged attention batch lse " + name, as_floats(lses[0], DType::kF32), want_lse, kLseTol));
      EXPECT_TRUE(compare("paged indexer batch " + name, as_floats(scores[0], DType::kF32), want_scores,
                          official ? kIdxBf16Tol : kIdxF32Tol));
    }
  }
}

}  // namespace
}  // namespace v4rt::kernels
