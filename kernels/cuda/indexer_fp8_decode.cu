// SPDX-License-Identifier: MIT
// Lightning-indexer scores of a decode batch on FP8 tensor cores (wgmma), for compact FP4 keys
// under the official numerics (spec §5.5): many parts (sequences) of one or a few query rows, each
// with its own keys (contiguous or paged, KvRowsDev::row), in one launch. indexer.cu dispatches
// here when every part's keys are compact FP4 rows and the launch is not a prefill chunk of
// indexer_fp8.cu, under CudaBackendOptions::decode_tensor_cores (debug.cuda_decode_tc, on by
// default; H100, batch 256: 0.65 -> 0.16 ms per two-layer step); otherwise, or with
// debug.cuda_indexer_fp8 off, the CUDA-core kernel serves.
//
// Operands and arithmetic are those of indexer_fp8.cu (see its header): q rows as e4m3 times Sq,
// key rows as e4m3 times Sk, the score bf16(Sk * sum over heads of bf16(relu(bf16(acc)) * w'))
// with w' = bf16(w * scale) * Sq, the heads summed in fp32 per thread over its 16 heads in head
// order, then across its 4-lane quad. The staging, the key decode and the head sums are shared
// (indexer_fp8_common.cuh), so both kernels give the same score for the same (query, key).
//
// Layout. Block (x: one query token of the launch, its part found from the parts' first rows; y:
// a span of key_span keys, split so that a batch of one fills the GPU too) = one warpgroup. B =
// the token's 64 head rows of q as e4m3 (N = 64, heads past nh zero), staged once. Keys stream in
// tiles of 64 (A, M = 64): the raw FP4 rows of tile i + 2 by 4-byte cp.async while tile i + 1 is
// decoded to e4m3 under tile i's wgmma (m64n64k32, dim / 32 of them, 32 fp32 accumulators per
// thread). Shared memory (wgmma.cuh's no-swizzle K-major layout): q 8,192 B + two e4m3 key tiles
// 16,384 B + two raw tiles 8,704 B + Sk and w' 640 B = 33,920 B; with at most 80 registers six
// blocks share an SM, one's key decode running under another's MMAs. Accumulator: thread (warp w,
// lane l) holds key rows 16 w + l / 4 and + 8, heads 8 i + 2 (l % 4) + {0, 1}, i < 8; after the
// quad sum lanes l % 4 = 0 and 1 store the scores of the two rows. Keys past the token's visible
// ones ((pos_begin + row + 1) / ratio, as the CUDA-core kernel) are not computed: -inf
// (block_key_span).
#include <atomic>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/fp4_tc_common.cuh"
#include "kernels/cuda/indexer_args.cuh"
#include "kernels/cuda/indexer_fp8_common.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/launch_geometry.h"
#include "kernels/cuda/wgmma.cuh"

namespace v4rt::kernels::cuda {

namespace {

using namespace idxfp8;

constexpr int kThreads = 128;            // one warpgroup
constexpr int kQBytes = kHeads * kMaxDim;  // 8,192
constexpr size_t kSmemBytes = size_t(kQBytes) + 2 * kKeyBytes + 2 * kRawBytes + 2 * kKeys * 4 + kHeads * 2;
static_assert(kSmemBytes <= 48 * 1024, "no opt-in to more dynamic shared memory");

// kDim: the head dim (64 or 128), a constant so that the wgmma of a tile are one unrolled,
// non-divergent sequence.
// kMmaSum: the head terms summed on the tensor cores (head_sums_mma), else head_sums.
template <int kDim, bool kMmaSum>
__global__ void __launch_bounds__(kThreads, 6) indexer_scores_fp8_decode_kernel(const __grid_constant__ IdxArgs a) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  constexpr int dim = kDim;
  const IdxPart& p = idx_part_of(a, blockIdx.x);
  const int64_t t = int64_t(blockIdx.x) - p.row0;  // the block's query: row t of part p
  extern __shared__ __align__(128) uint8_t smem[];
  uint8_t* const qs = smem;                                          // B: [kHeads] x dim, core-matrix layout
  uint8_t* const kbuf = qs + kQBytes;                                // A: [2][kKeys] x dim
  uint8_t* const raw = kbuf + 2 * kKeyBytes;                         // [2][kKeys][kRawLd]
  float* const ks = reinterpret_cast<float*>(raw + 2 * kRawBytes);   // [2][kKeys] Sk
  uint16_t* const ws = reinterpret_cast<uint16_t*>(ks + 2 * kKeys);  // [kHeads] w' (bf16)
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gid = lane >> 2, tig = lane & 3;
  KeySpan span;
  if (!block_key_span<1, kThreads>(a, p, t, &span)) return;
  const int64_t lo = span.lo, cend = span.cend;  // computed keys: [lo, cend), all visible to the query

  constexpr int ksteps = dim >> 5;
  // This thread's w' pairs: heads 8 i + 2 tig + {0, 1}.
  uint32_t wp[8];
  // The key row whose score this lane stores (lanes tig < 2), and the query's score row.
  const int my_row = 16 * warp + gid + 8 * (tig & 1);
  const int64_t out_row = t * p.score_stride;  // key j's score: element out_row + j - key_begin
  float d[32];
#pragma unroll
  for (int i = 0; i < 32; ++i) d[i] = 0.f;
  key_tiles<kThreads>(
      p.ckeys, dim, lo, cend, raw, kbuf, ks, [&] { stage_q<kThreads, kHeads, 4>(a, p, t, t + 1, qs, ws); },
      [&] {
#pragma unroll
        for (int i = 0; i < 8; ++i) wp[i] = *reinterpret_cast<const uint32_t*>(ws + 8 * i + 2 * tig);
      },
      [&](const uint8_t* kt) {
        fence_acc(d);
        wgmma_fence();
#pragma unroll
        for (int s = 0; s < ksteps; ++s)
          wgmma_m64n64k32(d, smem_desc(kt + 256 * s, dim), smem_desc(qs + 256 * s, dim), s);
        wgmma_commit();
      },
      [&](int64_t j0, const float* kst) {
        fence_acc(d);
        float sums[2][1];  // key rows 16 warp + gid + 8 half
        if constexpr (kMmaSum) {
          head_sums_mma<1>(d, wp, sums);
        } else {
          head_sums<1>(d, wp, sums);
        }
        const int64_t j = j0 + my_row;
        if (tig < 2 && j < cend) {
          store_score(a, p, out_row + (j - p.key_begin), round_bf16((tig ? sums[1][0] : sums[0][0]) * kst[my_row]));
        }
      });
}

}  // namespace

bool indexer_fp8_decode_serves(const IdxArgs& a) {
  for (int k = 0; k < a.num_parts; ++k)
    if (!operands_ok(a, a.parts[k])) return false;
  return a.num_parts >= 1;
}

void launch_indexer_fp8_decode(IdxArgs& a, int64_t max_keys, cudaStream_t s, bool head_sum_mma) {
  const char* what = "indexer_scores (fp8 wgmma, decode)";
  // Six blocks per SM (80 registers, 33,920 B each) need the whole carveout as shared memory.
  static std::atomic<uint64_t> attr[4] = {0, 0, 0, 0};
  using Kernel = void (*)(IdxArgs);
  const Kernel kernels[2][2] = {
      {indexer_scores_fp8_decode_kernel<64, false>, indexer_scores_fp8_decode_kernel<64, true>},
      {indexer_scores_fp8_decode_kernel<128, false>, indexer_scores_fp8_decode_kernel<128, true>}};
  const int d = a.dim == 64 ? 0 : 1, m = head_sum_mma ? 1 : 0;
  fp4tc::set_smem_once(kernels[d][m], kSmemBytes, true, &attr[2 * d + m]);
  const dim3 grid = indexer_tc_grid(a, max_keys, 1, kKeys, what);
  launch(kernels[d][m], grid, kThreads, kSmemBytes, s)(a);
  launch_check(what, s);
}

}  // namespace v4rt::kernels::cuda
