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
//
// Keys decoded once per launch (CudaBackendOptions::indexer_predecode, on by default). A block of 4
// queries decoding every key tile it reads spent some 40% of its issued instructions on the decode
// (Nsight Compute, a 1M-prompt chunk: the kernel issue-bound, 64% of the issue slots busy), and each
// key was decoded once per query block: 2,048 times per 8K chunk. So decode_index_keys_kernel first
// writes the launch's visible keys as e4m3 tiles of 64 rows in the operand layout (and Sk per key)
// to scratch, the same bytes decode_keys makes, and the kernel copies each tile with 16-byte
// cp.async into a ring of three tile buffers: tile i + 2's copies fly under tile i's MMAs and
// epilogue, one block barrier per tile. Scores are bit for bit those of the in-block decode.
#include <algorithm>
#include <atomic>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
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
// In-block decode: two e4m3 tiles, two raw tiles, two Sk rows. Pre-decoded: a ring of three e4m3
// tiles and Sk rows (kRing), in the space of the former.
constexpr int kRing = 3;
constexpr size_t kKeySpace = 2 * kKeyBytes + 2 * kRawBytes + 2 * kKeys * 4;
static_assert(kRing * (kKeyBytes + kKeys * 4) <= kKeySpace, "the ring fits the in-block decode's buffers");
constexpr size_t kSmemBytes = size_t(kQBytes) + kKeySpace + kRows * 2;
static_assert(4 * kKeys == kThreads, "four threads per raw FP4 key row");
constexpr int kDecodeThreads = 256;

// The launch's keys [key_begin, key_begin + count) as e4m3 tiles of kKeys rows (tile t at t x kKeys
// x dim bytes, rows in the operand layout: core_offset) and their Sk, rows past count zero: what
// decode_keys writes into a block's tile, for every tile at once. One thread per (key, 32-block).
__global__ void __launch_bounds__(kDecodeThreads) decode_index_keys_kernel(KvRowsDev ck, int dim, int64_t key_begin,
                                                                           int64_t count, int64_t padded,
                                                                           uint8_t* tiles, float* sk) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  const int blocks = dim >> 5;
  const int64_t i = int64_t(blockIdx.x) * kDecodeThreads + threadIdx.x;
  if (i >= padded * blocks) return;
  const int64_t r = i / blocks;
  const int b = int(i - r * blocks);
  uint32_t out[8] = {0u, 0u, 0u, 0u, 0u, 0u, 0u, 0u};
  float s = 0.f;
  if (r < count) {
    const uint8_t* row = ck.row(key_begin + r);  // 4-byte aligned (plan_part checks)
    int emax = 0;
    for (int c = 0; c < blocks; ++c) emax = max(emax, int(row[ck.scale_offset + c]));
    s = pow2f(emax - 133);
    const uint32_t* codes = reinterpret_cast<const uint32_t*>(row + b * 16);
    fp4tc::decode_block(make_uint4(codes[0], codes[1], codes[2], codes[3]), emax - row[ck.scale_offset + b], out);
  }
  uint8_t* tile = tiles + (r / kKeys) * int64_t(kKeys) * dim;
  const int rr = int(r % kKeys);
  *reinterpret_cast<uint4*>(tile + core_offset(rr, 32 * b, dim)) = make_uint4(out[0], out[1], out[2], out[3]);
  *reinterpret_cast<uint4*>(tile + core_offset(rr, 32 * b + 16, dim)) = make_uint4(out[4], out[5], out[6], out[7]);
  if (b == 0) sk[r] = s;
}

// Pre-decoded keys of a launch (decode_index_keys_kernel's output); tiles null: the block decodes.
struct DecodedKeys {
  const uint8_t* tiles = nullptr;
  const float* sk = nullptr;
};

// key_tiles (indexer_fp8_common.cuh) over pre-decoded tiles: the block's tiles from `first` on, in
// a ring of kRing tile buffers (kbuf) and Sk rows (ks). Tiles 0 and 1 are copied around stage();
// per tile `it`: wait for its copies, fence them for the wgmma, block barrier (every thread's
// copies landed, every thread done with tile it - 1, whose buffers tile it + 2 takes), setup()
// at the first, copies of tile it + 2, mma(kt), the MMAs waited on, epilogue(j0, ks_tile).
template <typename Stage, typename Setup, typename Mma, typename Epilogue>
__device__ __forceinline__ void decoded_key_tiles(const DecodedKeys& dk, int dim, int64_t first, int64_t lo,
                                                  int64_t cend, uint8_t* kbuf, float* ks, Stage stage, Setup setup,
                                                  Mma mma, Epilogue epilogue) {
  const int64_t ntiles = (cend - lo + kKeys - 1) / kKeys;
  const int tile_bytes = kKeys * dim, tid = threadIdx.x;
  auto fetch = [&](int64_t it) {  // one commit group per call, empty past the last tile
    if (it < ntiles) {
      const uint8_t* src = dk.tiles + (first + it) * tile_bytes;
      uint8_t* dst = kbuf + (it % kRing) * kKeyBytes;
      for (int c = tid; c < tile_bytes / 16; c += kThreads) cp_async16(dst + 16 * c, src + 16 * c, true);
      if (tid < kKeys / 4)
        cp_async16(ks + (it % kRing) * kKeys + 4 * tid, dk.sk + (first + it) * kKeys + 4 * tid, true);
    }
    cp_async_commit();
  };
  fetch(0);
  fetch(1);
  stage();
  for (int64_t it = 0; it < ntiles; ++it) {
    cp_async_wait<1>();  // tile it landed (tile it + 1 may be in flight)
    fence_async_smem();
    __syncthreads();
    if (it == 0) setup();
    fetch(it + 2);
    mma(kbuf + (it % kRing) * kKeyBytes);
    wgmma_wait0();
    epilogue(lo + it * kKeys, ks + (it % kRing) * kKeys);
  }
  cp_async_wait_all();  // the empty groups past the last tile
}

// kDim: the head dim (64 or 128), a constant so that the wgmma of a tile are one unrolled,
// non-divergent sequence (ptxas serializes them otherwise). kPredecoded: the key tiles come from
// dk (decoded_key_tiles), else the block decodes them (key_tiles); one loop per instance keeps the
// registers of either within the two blocks per SM. kMmaSum: the head terms summed on the tensor
// cores (head_sums_mma), else by fp32 adds and quad shuffles (head_sums).
template <int kDim, bool kPredecoded, bool kMmaSum>
__global__ void __launch_bounds__(kThreads, 2)
    indexer_scores_fp8_kernel(const __grid_constant__ IdxArgs a, DecodedKeys dk) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  const IdxPart& p = a.parts[0];
  const int64_t n = a.n;
  constexpr int dim = kDim;
  extern __shared__ __align__(128) uint8_t smem[];
  uint8_t* const qs = smem;                                 // B: [kRows] x dim, core-matrix layout
  uint8_t* const kbuf = qs + kQBytes;                       // A: [2][kKeys] x dim (pre-decoded: [kRing])
  uint8_t* const raw = kbuf + 2 * kKeyBytes;                // [2][kKeys][kRawLd]
  float* const ks = reinterpret_cast<float*>(raw + 2 * kRawBytes);  // [2][kKeys] Sk
  float* const ring_ks = reinterpret_cast<float*>(kbuf + kRing * kKeyBytes);  // pre-decoded: [kRing][kKeys] Sk
  uint16_t* const ws = reinterpret_cast<uint16_t*>(qs + kQBytes + kKeySpace);  // [kRows] w' (bf16)
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wg = warp >> 2, wi = warp & 3, gid = lane >> 2, tig = lane & 3;
  const int64_t t0 = (int64_t(gridDim.x) - 1 - blockIdx.x) * kQueries;
  KeySpan span;
  if (!block_key_span<kQueries>(a, p, t0, &span)) return;
  const int64_t key_begin = p.key_begin, lo = span.lo, cend = span.cend;  // computed keys: [lo, cend)
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
  const auto stage = [&] { stage_q<kThreads, kRows>(a, p, t0, n, qs, ws); };
  const auto setup = [&] {
#pragma unroll
    for (int i = 0; i < 16; ++i) wp[i] = *reinterpret_cast<const uint32_t*>(ws + wg * 128 + 8 * i + 2 * tig);
  };
  const auto mma = [&](const uint8_t* kt) {
    fence_acc(d);
    wgmma_fence();
#pragma unroll
    for (int s = 0; s < ksteps; ++s)
      wgmma_m64n128k32(d, smem_desc(kt + 256 * s, dim), smem_desc(bq + 256 * s, dim), s);
    wgmma_commit();
  };
  const auto epilogue = [&](int64_t j0, const float* kst) {
    fence_acc(d);
    // sums[half][q]: key row 16 wi + gid + 8 half, query 2 wg + q.
    float sums[2][2];
    if constexpr (kMmaSum) {
      head_sums_mma<2>(d, wp, sums);
    } else {
      head_sums<2>(d, wp, sums);
    }
    const float sum =
        (tig >> 1) ? ((tig & 1) ? sums[1][1] : sums[1][0]) : ((tig & 1) ? sums[0][1] : sums[0][0]);
    const int64_t j = j0 + my_row;
    if (ts < n && j < cend) {
      const int64_t out = ts * score_stride + (j - key_begin);
      if (j >= visible) mask_score(a, p, out);
      else store_score(a, p, out, round_bf16(sum * kst[my_row]));
    }
  };
  if constexpr (kPredecoded) {
    decoded_key_tiles(dk, dim, (lo - key_begin) / kKeys, lo, cend, kbuf, ring_ks, stage, setup, mma, epilogue);
  } else {
    key_tiles<kThreads>(p.ckeys, dim, lo, cend, raw, kbuf, ks, stage, setup, mma, epilogue);
  }
}

}  // namespace

bool indexer_fp8_serves(const IdxArgs& a) {
  return a.num_parts == 1 && a.n >= 16 && operands_ok(a, a.parts[0]);
}

void launch_indexer_fp8(IdxArgs& a, int64_t max_keys, cudaStream_t s, bool predecode, bool head_sum_mma) {
  const dim3 grid = indexer_tc_grid(a, max_keys, kQueries, kKeys, "indexer_scores (fp8 wgmma)");
  // The keys some query of the launch sees: [key_begin, key_begin + count).
  const IdxPart& p = a.parts[0];
  const int64_t seen_end = std::min(p.key_end, (p.pos_begin + a.n) / a.ratio);
  const int64_t count = std::clamp<int64_t>(seen_end - p.key_begin, 0, max_keys);
  DecodedKeys dk;
  void* scratch = nullptr;
  if (predecode && count > 0) {
    const int64_t padded = ceil_div(count, int64_t(kKeys)) * kKeys;  // whole tiles
    const size_t tile_bytes = size_t(padded) * size_t(a.dim);
    scratch = stream_alloc(tile_bytes + size_t(padded) * 4, s);
    auto* tiles = static_cast<uint8_t*>(scratch);
    auto* sk = reinterpret_cast<float*>(tiles + tile_bytes);  // 16-byte aligned: dim x 64 bytes a tile
    const int64_t items = padded * (a.dim / 32);
    launch(decode_index_keys_kernel, grid_x_for(items, kDecodeThreads, "indexer key decode"), kDecodeThreads, 0, s)(
        p.ckeys, a.dim, p.key_begin, count, padded, tiles, sk);
    launch_check("indexer key decode", s);
    dk.tiles = tiles;
    dk.sk = sk;
  }
  using Kernel = void (*)(IdxArgs, DecodedKeys);
  const Kernel kernels[2][2][2] = {
      {{indexer_scores_fp8_kernel<64, false, false>, indexer_scores_fp8_kernel<64, false, true>},
       {indexer_scores_fp8_kernel<64, true, false>, indexer_scores_fp8_kernel<64, true, true>}},
      {{indexer_scores_fp8_kernel<128, false, false>, indexer_scores_fp8_kernel<128, false, true>},
       {indexer_scores_fp8_kernel<128, true, false>, indexer_scores_fp8_kernel<128, true, true>}}};
  const int d = a.dim == 64 ? 0 : 1, pre = dk.tiles ? 1 : 0, m = head_sum_mma ? 1 : 0;
  static std::atomic<uint64_t> attr[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // per kernel: the devices set
  fp4tc::set_smem_once(kernels[d][pre][m], kSmemBytes, false, &attr[4 * d + 2 * pre + m]);
  launch(kernels[d][pre][m], grid, kThreads, kSmemBytes, s)(a, dk);
  launch_check("indexer_scores (fp8 wgmma)", s);
  if (scratch) stream_free(scratch, s);
}

}  // namespace v4rt::kernels::cuda
