// SPDX-License-Identifier: MIT
// The tensor-core sparse attention (sparse_attention_tc_kernel) against the CUDA-core kernels
// (CudaBackendOptions::attention_tensor_cores off) and the CPU op, on prefill-sized calls and on
// decode-sized ones (split over the candidates, DecodeSplitsAgainstCudaCoreAndCpu). Prefill:
// 300 query tokens whose candidate counts differ (the window cut by the sequence start, a chunk
// whose window rows start 127 before it, lists with -1 entries inside and a -1 tail, entries
// complete at the position),
// counts not multiples of 64, F32 and bf16 q / window rows, plain (bf16, F32) and compact FP8
// compressed entries, contiguous and paged, head dims 128, 384 and 512, a head sub-range. Prefill
// launches read bf16 views of their rows by default (attention_bf16_view.cu); every case also runs
// without them (CudaBackendOptions::attention_bf16_view off: the rows staged as stored), bit for bit
// the same. The head_dim 512 cases run on the warp-specialized kernels too (attention_wgmma: the
// consumers on bf16 wgmma, at every list length; attention_ws: on mma.sync, with and without the
// views, the latter falling back to the mma.sync kernel when rows are to be decoded), against the
// CPU op with the same tolerances and bit for bit against the mma.sync kernel; the wgmma kernel with
// and without its clusters of two tokens' blocks (the HCA cases' compressed tiles copied once for
// both).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/kv_format.h"
#include "kernels/cuda/factory.h"
#include "tests/cuda/cuda_test_util.h"

namespace v4rt::kernels::cuda_test {
namespace {

const Tolerance kBf16Tol{1e-2, 1e-2, 1e-4};  // one bf16 rounding of the output
const Tolerance kLseTol{1e-5, 1e-5, 1e-9};

enum class Comp { kNone, kBf16, kF32, kFp8, kFp8Paged };

struct TcCase {
  const char* name;
  int n, heads, dim;
  int64_t pos0;      // position of query 0
  int64_t win_pos0;  // position of window row 0: pos0 - 127, or 0 at the sequence start (the op needs every row)
  int num_comp;
  int list_len;      // > 0: candidate lists; 0: every entry complete at the position (comp_ratio)
  int comp_ratio;
  DType rows;        // q and window rows on the device
  Comp comp;
  int h0, h1;
};

// Compressed entries on both backends: values the layout holds exactly, as plain rows (`plain`,
// CPU F32 / device bf16 or F32) and packed kFp8Rope rows (host bytes for the CPU op, a device copy
// contiguous and one paged into 16-row blocks in reverse order in a pool of 0xA5 bytes).
struct CompRows {
  Dual plain;
  KvRowLayout layout;
  std::vector<uint8_t> bytes;
  Buffer dev;
  TensorView cpu_view, dev_view;
  PagedRows paged;
};

CompRows make_comp_rows(const TcCase& c, Rng& rng) {
  CompRows r;
  const int64_t rows = std::max(c.num_comp, 1);
  if (c.comp != Comp::kFp8 && c.comp != Comp::kFp8Paged) {
    r.plain = make_dual({rows, c.dim}, rng.normals(rows * c.dim), c.comp == Comp::kF32 ? DType::kF32 : DType::kBF16);
    return r;
  }
  r.layout = fp8_rope_kv_layout(c.dim, 64);
  const KvRowLayout& l = r.layout;
  std::vector<float> x = rng.normals(rows * l.dim, 1.f, false);
  for (int64_t i = 0; i < rows; ++i)  // assorted magnitudes: different scales per row
    for (int64_t d = 0; d < l.dim; ++d) x[size_t(i * l.dim + d)] *= std::ldexp(1.0f, int(i % 5) * 2 - 4);
  round_to_kv_layout(cpu_backend(), l, TensorView(x.data(), DType::kF32, {rows, l.dim}));
  r.bytes.resize(size_t(rows * l.row_bytes));
  for (int64_t i = 0; i < rows; ++i) EXPECT_TRUE(kv_pack_row(l, &x[size_t(i * l.dim)], &r.bytes[size_t(i * l.row_bytes)]));
  r.cpu_view = TensorView(r.bytes.data(), DType::kU8, {rows, l.row_bytes});
  r.dev = gpu_backend().alloc(r.bytes.size());
  gpu_backend().copy_to_device(r.dev.data(), r.bytes.data(), r.bytes.size());
  r.dev_view = TensorView(r.dev.data(), DType::kU8, {rows, l.row_bytes}, Device::kCuda);
  if (c.comp == Comp::kFp8Paged) r.paged = page_rows_reversed(r.bytes, rows, l.row_bytes);
  return r;
}

// Candidate lists: query i keeps `valid` entries (fewer for some queries: a -1 tail), about one in
// eight of them -1 too.
std::vector<int32_t> make_lists(const TcCase& c, Rng& rng) {
  const int len = std::max(c.list_len, 1);
  std::vector<int32_t> list(size_t(c.n) * size_t(len), -1);
  for (int i = 0; i < c.n; ++i) {
    const int valid = i % 3 == 1 ? len - int((int64_t(i) * 37) % (len / 2 + 1)) : len;
    for (int k = 0; k < valid; ++k)
      list[size_t(i) * size_t(len) + size_t(k)] =
          rng.integer(0, 7) == 0 ? -1 : int32_t(rng.integer(0, std::max(c.num_comp, 1) - 1));
  }
  return list;
}

// The head_dim 512 prefill cases on another kernel of the same arithmetic (`name`: the wgmma or the
// warp-specialized kernel): its outputs bit for bit the mma.sync kernel's `tc`, and against the CPU.
template <class Params>
void expect_same_bits(const char* name, const TcCase& c, Backend& backend, const Params& params,
                      const std::vector<float>& tc, const Dual& cpu_out, const Dual& cpu_lse, const Tolerance& cpu_tol) {
  const std::vector<float> zeros(size_t(c.n) * c.heads * c.dim, 0.f), zeros_lse(size_t(c.n) * c.heads, 0.f);
  Dual out = make_dual({c.n, c.heads, c.dim}, zeros);
  Dual lse = make_dual({c.n, c.heads}, zeros_lse, DType::kF32);
  backend.sparse_attention(params(true, out, lse));
  backend.synchronize();
  const std::vector<float> got = out.gpu_values();
  int64_t differ = 0;
  for (size_t i = 0; i < got.size(); ++i) differ += std::memcmp(&got[i], &tc[i], 4) != 0;
  std::printf("[compare] attention %s %s: %lld of %zu outputs differ in bits from the mma.sync kernel\n", name, c.name,
              static_cast<long long>(differ), got.size());
  EXPECT_EQ(differ, 0) << "the " << name << " kernel does the mma.sync kernel's arithmetic in its order";
  const std::string wname = std::string("attention ") + name + " " + c.name;
  EXPECT_TRUE(compare(wname + " vs cpu", got, cpu_out.cpu_values(), cpu_tol));
  EXPECT_TRUE(compare(wname + " lse vs cpu", lse.gpu_values(), cpu_lse.cpu_values(), kLseTol));
}

// The kernels a case runs on beside the mma.sync one (tc).
struct TcBackends {
  std::unique_ptr<Backend> tc, tc_no_view, cuda_core, wgmma, wgmma_single, ws, ws_no_view;
};

void run_tc_case(const TcCase& c, Rng& rng, const TcBackends& b, const Tolerance& cpu_tol) {
  Backend& tc_backend = *b.tc;
  Backend& cuda_core = *b.cuda_core;
  SCOPED_TRACE(c.name);
  const int64_t win_rows = c.pos0 + c.n - c.win_pos0;
  Dual q = make_dual({c.n, c.heads, c.dim}, rng.normals(int64_t(c.n) * c.heads * c.dim, 0.3f), c.rows);
  Dual win = make_dual({win_rows, c.dim}, rng.normals(win_rows * c.dim), c.rows);
  const CompRows comp = c.comp == Comp::kNone ? CompRows{} : make_comp_rows(c, rng);
  Dual idx = make_dual_i32({c.n, std::max(c.list_len, 1)}, make_lists(c, rng));
  DualWeight sink = upload_f32(rng.normals(c.heads, 1.f, false), 1, c.heads);
  const std::vector<float> zeros(size_t(c.n) * c.heads * c.dim, 0.f), zeros_lse(size_t(c.n) * c.heads, 0.f);
  Dual out_tc = make_dual({c.n, c.heads, c.dim}, zeros), out_cc = make_dual({c.n, c.heads, c.dim}, zeros);
  Dual lse_tc = make_dual({c.n, c.heads}, zeros_lse, DType::kF32), lse_cc = make_dual({c.n, c.heads}, zeros_lse, DType::kF32);
  const bool compact = c.comp == Comp::kFp8 || c.comp == Comp::kFp8Paged;
  auto params = [&](bool gpu, const Dual& out, const Dual& lse) {
    SparseAttentionParams p;
    p.pos_begin = c.pos0;
    p.window_pos0 = c.win_pos0;
    p.window = 128;
    p.comp_ratio = c.comp_ratio;
    p.softmax_scale = 1.0f / std::sqrt(512.f);
    p.bf16_probs = true;
    p.h_begin = c.h0;
    p.h_end = c.h1;
    p.q = gpu ? q.gpu : q.cpu;
    p.window_kv = gpu ? win.gpu : win.cpu;
    if (compact) {
      p.comp_layout = comp.layout;
      p.comp_kv = !gpu ? comp.cpu_view : (c.comp == Comp::kFp8Paged ? comp.paged.view : comp.dev_view);
      if (gpu && c.comp == Comp::kFp8Paged) p.comp_blocks = comp.paged.blocks;
    } else if (c.comp != Comp::kNone) {
      p.comp_kv = gpu ? comp.plain.gpu : comp.plain.cpu;
    }
    if (c.list_len) p.comp_idx = gpu ? idx.gpu : idx.cpu;
    p.sink = gpu ? sink.gpu : sink.cpu;
    p.out = gpu ? out.gpu : out.cpu;
    p.lse = gpu ? lse.gpu : lse.cpu;
    return p;
  };
  cpu_backend().sparse_attention(params(false, out_tc, lse_tc));
  tc_backend.sparse_attention(params(true, out_tc, lse_tc));
  tc_backend.synchronize();
  cuda_core.sparse_attention(params(true, out_cc, lse_cc));
  cuda_core.synchronize();
  const std::vector<float> tc = out_tc.gpu_values(), cc = out_cc.gpu_values();
  int64_t differ = 0;
  for (size_t i = 0; i < tc.size(); ++i) differ += std::memcmp(&tc[i], &cc[i], 4) != 0;
  std::printf("[compare] attention tc %s: %lld of %zu outputs differ in bits from the CUDA-core kernel\n", c.name,
              static_cast<long long>(differ), tc.size());
  const std::string name = std::string("attention tc ") + c.name;
  EXPECT_TRUE(compare(name + " vs cpu", tc, out_tc.cpu_values(), cpu_tol));
  EXPECT_TRUE(compare(name + " vs cuda-core", tc, cc, kBf16Tol));
  EXPECT_TRUE(compare(name + " lse vs cpu", lse_tc.gpu_values(), lse_tc.cpu_values(), kLseTol));
  EXPECT_TRUE(compare(name + " lse vs cuda-core", lse_tc.gpu_values(), lse_cc.gpu_values(), kLseTol));
  expect_same_bits("mma.sync without bf16 views", c, *b.tc_no_view, params, tc, out_tc, lse_tc, cpu_tol);
  if (c.dim != 512) return;  // the wgmma and warp-specialized kernels serve head_dim 512 only
  expect_same_bits("wgmma", c, *b.wgmma, params, tc, out_tc, lse_tc, cpu_tol);
  expect_same_bits("wgmma without clusters", c, *b.wgmma_single, params, tc, out_tc, lse_tc, cpu_tol);
  expect_same_bits("ws", c, *b.ws, params, tc, out_tc, lse_tc, cpu_tol);
  expect_same_bits("ws without bf16 views", c, *b.ws_no_view, params, tc, out_tc, lse_tc, cpu_tol);
}

// Every case on the tensor-core kernel (decode shapes too: decode_tensor_cores on) against the
// CPU op, the CUDA-core kernels (attention_tensor_cores off) and, at head_dim 512, the wgmma kernel
// (attention_wgmma on), from one seed.
template <size_t N>
void run_tc_cases(const TcCase (&cases)[N], uint64_t seed, const Tolerance& cpu_tol = kBf16Tol) {
  Rng rng(seed);
  const auto make = [](bool tensor_cores, bool wgmma, bool ws, bool view, bool cluster = true) {
    cuda::CudaBackendOptions o;
    o.attention_wgmma_cluster = cluster;
    o.attention_tensor_cores = tensor_cores;
    o.decode_tensor_cores = tensor_cores;
    o.attention_wgmma = wgmma;
    o.attention_wgmma_min_tiles = 0;  // every list length on the wgmma kernel where it is on
    o.attention_ws = ws;
    o.attention_bf16_view = view;
    return cuda::make_cuda_backend(0, o);
  };
  TcBackends b;
  b.tc = make(true, false, false, true);
  b.tc_no_view = make(true, false, false, false);
  b.cuda_core = make(false, false, false, true);
  b.wgmma = make(true, true, false, true);
  b.wgmma_single = make(true, true, false, true, false);
  b.ws = make(true, false, true, true);
  b.ws_no_view = make(true, false, true, false);
  for (const TcCase& c : cases) run_tc_case(c, rng, b, cpu_tol);
}

// Prefill-sized calls (enough query blocks to take the tensor-core kernel) of every row storage the
// kernel stages, with candidate counts from 11 to ~460 per query across tiles and tile tails.
TEST(CudaAttentionTc, PrefillAgainstCudaCoreAndCpu) {
  V4RT_REQUIRE_GPU();
  const TcCase cases[] = {
      {"csa sequence start, bf16 rows, fp8 entries", 300, 64, 512, 0, 0, 700, 200, 0, DType::kBF16, Comp::kFp8, 0, -1},
      {"csa chunk cut, f32 rows, fp8 entries paged", 300, 64, 512, 5000, 5000 - 127, 1000, 333, 0, DType::kF32,
       Comp::kFp8Paged, 0, -1},
      {"hca f32 rows, f32 entries", 300, 64, 512, 3000, 3000 - 127, 30, 0, 128, DType::kF32, Comp::kF32, 0, -1},
      {"csa past 65536, bf16 entries, heads [3,45)", 300, 64, 512, 100000, 100000 - 127, 500, 64, 0, DType::kBF16,
       Comp::kBf16, 3, 45},
      {"window only d128 16 heads", 300, 16, 128, 10, 0, 0, 0, 0, DType::kF32, Comp::kNone, 0, -1},
      {"csa d384 f32 rows, fp8 entries", 300, 64, 384, 40, 0, 300, 150, 0, DType::kF32, Comp::kFp8, 0, -1},
      // From 1 candidate (query 0, no entry yet: queries 0-2 see none) up, fewer than a tile for the
      // first queries; every fp8 entry complete at the position.
      {"sequence start, fp8 entries by ratio 4", 300, 64, 512, 0, 0, 80, 0, 4, DType::kBF16, Comp::kFp8, 0, -1},
      // The wgmma kernel's clusters: pairs of queries sharing 8 or 9 compressed tiles (queries 276
      // and 277 of one pair differ: entry 513 completes at 277), an odd token count (the last block
      // stands in for the last token), 128 heads (two blocks per token, paired per head group).
      {"hca across 65536, 301 tokens, fp8 entries paged", 301, 64, 512, 65386, 65386 - 127, 600, 0, 128,
       DType::kBF16, Comp::kFp8Paged, 0, -1},
      {"hca 128 heads, bf16 entries", 150, 128, 512, 40000, 40000 - 127, 400, 0, 128, DType::kF32, Comp::kBf16, 0, -1},
  };
  run_tc_cases(cases, 31);
}

// Decode-sized calls (too few tokens to fill the SMs): the tensor-core kernel split over the
// candidates (tc_splits: 1 token of 640 candidates takes 10 splits) and merged by the combine
// kernel, against the CPU op and the split multi-query kernel the CUDA-core backend takes: the
// Flash CSA step (512-entry list + 128 window rows, F32 q and window rows as the model holds
// them, paged FP8 entries), its HCA step (every entry complete at the position), a list shorter
// than one split's tiles, a head sub-range, 128 heads, and two to five tokens.
TEST(CudaAttentionTc, DecodeSplitsAgainstCudaCoreAndCpu) {
  V4RT_REQUIRE_GPU();
  const TcCase cases[] = {
      {"decode csa step, f32 rows, fp8 entries paged", 1, 64, 512, 8192, 8192 - 127, 2048, 512, 0, DType::kF32,
       Comp::kFp8Paged, 0, -1},
      {"decode hca step past 65536, f32 rows", 1, 64, 512, 70000, 70000 - 127, 546, 0, 128, DType::kF32, Comp::kFp8,
       0, -1},
      {"decode short list, bf16 rows", 1, 64, 512, 40, 0, 30, 20, 0, DType::kBF16, Comp::kFp8, 0, -1},
      {"decode heads [16,48), bf16 entries", 1, 64, 512, 3000, 3000 - 127, 900, 300, 0, DType::kBF16, Comp::kBf16, 16,
       48},
      {"decode 128 heads, 2 tokens", 2, 128, 512, 9000, 9000 - 127, 2500, 512, 0, DType::kF32, Comp::kFp8, 0, -1},
      {"decode 5 tokens d128", 5, 16, 128, 600, 600 - 127, 150, 100, 0, DType::kF32, Comp::kF32, 0, -1},
  };
  run_tc_cases(cases, 37, kSplitTol);
}

}  // namespace
}  // namespace v4rt::kernels::cuda_test
