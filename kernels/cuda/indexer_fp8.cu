// SPDX-License-Identifier: MIT
// Lightning-indexer scores of a prefill chunk on FP8 tensor cores (wgmma), for compact FP4 keys
// under the official numerics (spec §5.5); indexer.cu keeps the bf16 mma.sync kernel, which gives
// the reference's scores bit for bit, and dispatches here unless debug.cuda_indexer_fp8 is off.
// The staging of q and of the keys and the head sums are shared with the decode-batch kernel
// (indexer_fp8_common.cuh; indexer_fp8_decode.cu).
//
// Operands. q and the keys hold FP4-quantized values (e2m1 codes times a power of two per block of
// 32). Each (query, head) row of q and each key row is re-expressed as e4m3 bytes times one power of
// two per row: q / Sq with Sq = 2^(E - 7), E the exponent of the row's largest magnitude, and key
// codes times 2^(6 - (emax - e_b)) with Sk = 2^(emax - 133), emax the largest of the row's ue8m0
// block exponents. Both are exact while the row's block exponents span at most 13 (q) or 14 (keys)
// binades: an e2m1 code needs one mantissa bit and e4m3 keeps three down to its subnormal 2^-9.
// After the Hadamard rotation the blocks of a row have like magnitudes; a wider span rounds the
// small block's codes (relative to the row's largest value: below 2^-13).
//
// Arithmetic. dot = Sq Sk acc with acc the e4m3 product on the tensor cores. Powers of two commute
// with every bf16 rounding and with relu, so the reference's term bf16(relu(bf16(dot)) * w) is
// Sk * bf16(relu(bf16(acc)) * w'), with w' = bf16(w * scale) * Sq (a bf16, exact), and the score
// bf16(sum over heads) is bf16(Sk * sum over heads of bf16(relu(bf16(acc)) * w')). Per pair of
// heads: one cvt to bf16x2, a bf16x2 max with zero, a bf16x2 multiply (a correctly rounded product
// of two bf16, as the reference's fp32 product rounded to bf16), two fp32 adds. Two differences
// from the reference, both at the last bit of a bf16 score: acc comes from the tensor cores' FP8
// accumulation (exact for the small integer multiples these operands make unless a dot needs
// more bits than it keeps), and the heads are summed in fp32 per thread in head order over its 16
// heads, then across its 4-lane quad (the reference adds heads 0..63 in order).
//
// Layout. Block = 4 query tokens (heaviest last tokens first) x a span of keys (x, y as the bf16
// kernel), two warpgroups; warpgroup g owns queries 2g, 2g + 1: B = their 2 x 64 (query, head)
// rows of q as e4m3 (N = 128), staged once. Keys stream in tiles of 64 (A, M = 64): raw FP4 rows
// of tile i + 2 by 4-byte cp.async while tile i + 1 is decoded to e4m3 under tile i's wgmma
// (m64n128k32, dim / 32 of them, fp32 accumulators: 64 registers per thread). Shared memory
// operands in the no-swizzle K-major core-matrix layout: 8 rows x 16 bytes contiguous (128 B);
// along K the next core matrix at +128 B (leading byte offset), the next 8 rows at +8 dim B
// (stride byte offset). Accumulator (wgmma m64nN): thread (warp w of the warpgroup, lane l) holds
// rows 16 w + l / 4 and + 8, columns 8 i + 2 (l % 4) + {0, 1}, i < 16: key rows, (query, head)
// columns: query i / 8, head 8 (i % 8) + 2 (l % 4) + {0, 1}.
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/indexer_args.cuh"
#include "kernels/cuda/indexer_fp8_common.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/launch_geometry.h"
#include "kernels/cuda/wgmma.cuh"

namespace v4rt::kernels::cuda {

namespace {

using namespace idxfp8;

constexpr int kQueries = 4;                 // query tokens per block
constexpr int kRows = kQueries * kHeads;    // B rows of the block
constexpr int kThreads = 256;               // two warpgroups
constexpr int kQBytes = kRows * kMaxDim;                  // 32,768
constexpr size_t kSmemBytes = size_t(kQBytes) + 2 * kKeyBytes + 2 * kRawBytes + 2 * kKeys * 4 + kRows * 2;
static_assert(4 * kKeys == kThreads, "four threads per raw FP4 key row");

// kDim: the head dim (64 or 128), a constant so that the wgmma of a tile are one unrolled,
// non-divergent sequence (ptxas serializes them otherwise).
template <int kDim>
__global__ void __launch_bounds__(kThreads, 2) indexer_scores_fp8_kernel(const __grid_constant__ IdxArgs a) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  const IdxPart& p = a.parts[0];
  const int64_t n = a.n;
  constexpr int dim = kDim;
  extern __shared__ __align__(128) uint8_t smem[];
  uint8_t* const qs = smem;                                 // B: [kRows] x dim, core-matrix layout
  uint8_t* const kbuf = qs + kQBytes;                       // A: [2][kKeys] x dim
  uint8_t* const raw = kbuf + 2 * kKeyBytes;                // [2][kKeys][kRawLd]
  float* const ks = reinterpret_cast<float*>(raw + 2 * kRawBytes);  // [2][kKeys] Sk
  uint16_t* const ws = reinterpret_cast<uint16_t*>(ks + 2 * kKeys);  // [kRows] w' (bf16)
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wg = warp >> 2, wi = warp & 3, gid = lane >> 2, tig = lane & 3;
  const int64_t t0 = (int64_t(gridDim.x) - 1 - blockIdx.x) * kQueries;
  KeySpan span;
  if (!block_key_span<kQueries>(a, p, t0, &span)) return;
  const int64_t key_begin = p.key_begin, lo = span.lo, cend = span.cend;  // computed keys: [lo, cend)
  float* const scores = p.scores;
  const int64_t score_stride = p.score_stride;

  constexpr int ksteps = dim >> 5;
  const uint8_t* const bq = qs + wg * 128 * dim;
  // This thread's w' pairs: columns 8 i + 2 tig + {0, 1} of warpgroup wg's B rows.
  uint32_t wp[16];
  // The (key row, query) this lane stores after the quad reduction, and its query's visible keys.
  const int my_row = 16 * wi + gid + 8 * (tig >> 1), my_q = 2 * wg + (tig & 1);
  const int64_t ts = t0 + my_q;
  const int64_t visible = (p.pos_begin + ts + 1) / a.ratio;
  float d[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) d[i] = 0.f;
  key_tiles<kThreads>(
      p.ckeys, dim, lo, cend, raw, kbuf, ks, [&] { stage_q<kThreads, kRows>(a, p, t0, n, qs, ws); },
      [&] {
#pragma unroll
        for (int i = 0; i < 16; ++i) wp[i] = *reinterpret_cast<const uint32_t*>(ws + wg * 128 + 8 * i + 2 * tig);
      },
      [&](const uint8_t* kt) {
        fence_acc(d);
        wgmma_fence();
#pragma unroll
        for (int s = 0; s < ksteps; ++s)
          wgmma_m64n128k32(d, smem_desc(kt + 256 * s, dim), smem_desc(bq + 256 * s, dim), s);
        wgmma_commit();
      },
      [&](int64_t j0, const float* kst) {
        fence_acc(d);
        // sums[half][q]: key row 16 wi + gid + 8 half, query 2 wg + q.
        float sums[2][2];
        head_sums<2>(d, wp, sums);
        const float sum =
            (tig >> 1) ? ((tig & 1) ? sums[1][1] : sums[1][0]) : ((tig & 1) ? sums[0][1] : sums[0][0]);
        const int64_t j = j0 + my_row;
        if (ts < n && j < cend) {
          float* out = scores + ts * score_stride + (j - key_begin);
          const float v = round_bf16(sum * kst[my_row]);
          *out = j >= visible ? -INFINITY : (a.accumulate ? *out + v : v);
        }
      });
}

}  // namespace

bool indexer_fp8_serves(const IdxArgs& a) {
  return a.num_parts == 1 && a.n >= 16 && operands_ok(a, a.parts[0]);
}

void launch_indexer_fp8(IdxArgs& a, int64_t max_keys, cudaStream_t s) {
  static bool attr_set = false;
  if (!attr_set) {
    CUDA_CHECK(cudaFuncSetAttribute(indexer_scores_fp8_kernel<64>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    int(kSmemBytes)));
    CUDA_CHECK(cudaFuncSetAttribute(indexer_scores_fp8_kernel<128>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    int(kSmemBytes)));
    attr_set = true;
  }
  const dim3 grid = indexer_tc_grid(a, max_keys, kQueries, kKeys, "indexer_scores (fp8 wgmma)");
  if (a.dim == 64)
    launch(indexer_scores_fp8_kernel<64>, grid, kThreads, kSmemBytes, s)(a);
  else
    launch(indexer_scores_fp8_kernel<128>, grid, kThreads, kSmemBytes, s)(a);
  launch_check("indexer_scores (fp8 wgmma)", s);
}

}  // namespace v4rt::kernels::cuda
