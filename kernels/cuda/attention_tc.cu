// SPDX-License-Identifier: MIT
// Sparse attention on bf16 mma.sync under the official numerics (bf16 q / kv, bf16 P): prefill
// shapes, and decode shapes split over the candidates (attention.cu chooses). Block (token t, head
// block y, split z) stages q of 64 heads once and each 64-candidate tile of latent rows once for
// all of them (MQA: one latent row is K and V of every head). Per tile:
//   1. the tile's compact FP8 entries, fetched by cp.async into a raw buffer while the previous
//      tile was multiplied, are decoded into the bf16 tile (kv_decode.cuh: e4m3 pairs by the
//      conversion unit, exact); window rows and plain entries are loaded there directly;
//   2. the next tile's entries are fetched (cp.async, 8 bytes a copy) and the candidate codes of
//      the tile after it are read, both under this tile's MMAs;
//   3. S = Q K^T on m16n8k16 (fp32 accumulate; warp w: heads (w % 4) * 16, candidates (w / 4) * 16,
//      fragments by ldmatrix);
//   4. the online softmax of the tile per head in fp32, as sparse_attention_kernel (running max
//      per 64-candidate tile, the denominator from unrounded p, P rounded to bf16);
//   5. O += P V (warp w: heads (w % 2) * 32, dims (w / 2) * dim / 8; V fragments by
//      ldmatrix.trans).
// Launches whose rows are all bf16 (parts_bf16: the bf16 views a prefill launch makes, see
// attention_bf16_view.cu) take the copy form instead of steps 1-2: two KV tile buffers, the next
// tile's rows copied straight into the other one by 16-byte cp.async under this tile's MMAs, and
// nothing staged between the barriers. The sink is added at the end; with candidate splits each
// split writes its partial state for attention_combine_kernel instead. head_dim % 128 == 0, <= 512 (512 compiled on its own: constant
// offsets, no division); rows 16-byte aligned. Every S and O element is summed in one order that
// does not depend on the staging or the warp tiles, so the wgmma and warp-specialized kernels give
// these outputs bit for bit (CudaAttentionTc asserts it).
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/attention_args.cuh"
#include "kernels/cuda/attention_mma.cuh"
#include "kernels/cuda/cp_async.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/launch_geometry.h"
#include "kernels/cuda/mma_sync.cuh"

namespace v4rt::kernels::cuda::attn {

namespace {

constexpr int kTcThreads = 512;  // 16 warps: S (4 head tiles) x (4 candidate quarters), O (2 x 8)
constexpr int kOTiles = kTcMaxDim / 64;  // n8 tiles of O a warp keeps per m16 head tile (dim / 8 dims)
constexpr int kTcPad = 8;        // bf16 elements of row padding: 16 B, conflict-free ldmatrix rows
constexpr int kTcSPad = 4;
constexpr int kSld = kTile + kTcSPad, kPld = kTile + kTcPad;
constexpr int kMaxRawLd = 640;   // bytes per staged compact row (Flash / Pro: 584 -> 592)
constexpr int kStageGroup = 2;   // 8-element chunks a thread loads before it stores them
constexpr int kMaxChunks = kTile * (kTcMaxDim / 8) / kTcThreads;  // chunks per thread and tile

// kAsync: two KV tiles and no raw rows (the copy form).
size_t tc_smem_bytes(int dim, int raw_ld, bool async) {
  const size_t ld = size_t(dim + kTcPad);
  return (size_t(kTcHeads) + (async ? 2 : 1) * kTile) * ld * 2 +  // Q, KV tile(s) (bf16)
         size_t(kTcHeads) * kSld * 4 +                             // S (fp32)
         size_t(kTcHeads) * kPld * 2 +                             // P (bf16)
         (async ? 0 : size_t(kTile) * size_t(raw_ld));            // raw compact rows of the next tile
}

// The copy form: the bf16 rows of tile `codes` into kv ([kTile][ld]) by 16-byte cp.async, absent
// candidates as zeros (nothing read), and commits. Thread i copies chunks i, i + kTcThreads, ...
// (dim / 8 a row).
__device__ __forceinline__ void fetch_tile_bf16(const AttnPart& part, const int32_t* codes, uint16_t* kv, int dim) {
  const int d8 = dim / 8, ld = dim + kTcPad, chunks = kTile * d8;
  for (int i = threadIdx.x; i < chunks; i += kTcThreads) {
    const int row = i / d8, c = (i % d8) * 8;
    const int code = codes[row];
    cp_async16(kv + row * ld + c, bf16_row_at(part, code, c), code != -1);
  }
  cp_async_commit();
}


// Thread c (< kTile) fetches the list entry of candidate c of tile `it` into *dst by a 4-byte
// cp.async when the candidate is a listed one (tile_code_listed reads it once landed), and commits.
__device__ __forceinline__ void fetch_listed(const AttnPart& p, const CandRange& r, int64_t t, int it, int c,
                                             int32_t* dst) {
  const int64_t cand = r.cand0 + int64_t(it) * kTile + c;
  if (p.has_list && cand >= r.nwin && cand < r.ncand)
    cp_async4(dst, p.comp_idx + t * p.idx_stride + (cand - r.nwin));
  cp_async_commit();
}
__device__ __forceinline__ int64_t tile_code_listed(const AttnPart& p, const CandRange& r, int it, int c,
                                                    int32_t listed) {
  const int64_t cand = r.cand0 + int64_t(it) * kTile + c;
  return cand < r.ncand ? candidate_code_of(p, r, cand, listed) : int64_t(-1);
}

// The compact entries among a tile's candidates (`codes`), whole rows into raw ([kTile][raw_ld]
// bytes) by 8-byte cp.async: warp w copies rows w, w + 16, ..., lane l words l, l + 32, ...
__device__ __forceinline__ void fetch_raw(const KvRowsDev& ckv, const int32_t* codes, uint8_t* raw, int raw_ld) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int words = int(ckv.row_bytes >> 3);
  const uint32_t base = smem_u32(raw);
#pragma unroll
  for (int k = 0; k < kTile / (kTcThreads / 32); ++k) {
    const int row = warp + k * (kTcThreads / 32);
    const int code = codes[row];
    if (code > -2) continue;
    const uint8_t* src = ckv.row(-code - 2);
    for (int w = lane; w < words; w += 32) cp_async8(base + uint32_t(row * raw_ld + 8 * w), src + 8 * w);
  }
  cp_async_commit();
}

// The tile of candidates `codes` as bf16 rows of kv ([kTile][ld]): compact entries decoded from
// their raw copies (raw_ld > 0) or from global memory, window rows and plain entries loaded (F32
// rows rounded to bf16, exact for the official numerics' rows), absent candidates zero. Each
// thread loads kStageGroup 8-element chunks before it stores them, so their latencies overlap.
// When d8 divides kTcThreads (every head_dim but 384) a thread's column is the same on each of
// its rows, so its offsets in a compact row are resolved once.
template <int kDimT>
__device__ __forceinline__ void stage_tile(const AttnPart& part, const int32_t* codes, const uint8_t* raw, int raw_ld,
                                           uint16_t* kv, int dim) {
  const int d8 = dim / 8, ld = dim + kTcPad, chunks = kTile * d8 / kTcThreads;
  const bool fixed_col = kTcThreads % d8 == 0;
  const Fp8Chunk col = part.ckv.fp8_chunk(fixed_col ? int(threadIdx.x % d8) * 8 : 0);
#pragma unroll 1
  for (int g = 0; g < kMaxChunks; g += kStageGroup) {
    uint4 v[kStageGroup];
#pragma unroll
    for (int u = 0; u < kStageGroup; ++u) {
      const int i = threadIdx.x + (g + u) * kTcThreads, row = i / d8, c = (i % d8) * 8;
      v[u] = make_uint4(0, 0, 0, 0);
      if (g + u >= chunks) continue;
      const int code = codes[row];
      if (code >= 0) v[u] = ld8_as_bf16(part.win, code, c);
      else if (code <= -2 && part.ckv.data && raw_ld)
        v[u] = (fixed_col ? col : part.ckv.fp8_chunk(c)).ld8_bf16(raw + row * raw_ld);
      else if (code <= -2 && part.ckv.data) v[u] = part.ckv.fp8_ld8_bf16(part.ckv.row(-code - 2), c);
      else if (code <= -2) v[u] = ld8_as_bf16(part.comp, -code - 2, c);
    }
#pragma unroll
    for (int u = 0; u < kStageGroup; ++u) {
      const int i = threadIdx.x + (g + u) * kTcThreads, row = i / d8, c = (i % d8) * 8;
      if (g + u < chunks) *reinterpret_cast<uint4*>(kv + row * ld + c) = v[u];
    }
  }
}

// kDimT: the head_dim when compiled for one (512), else 0 (a.dim). kAsync: the copy form (every
// row bf16, two KV tiles).
template <int kDimT, bool kAsync>
__global__ void __launch_bounds__(kTcThreads) sparse_attention_tc_kernel(const __grid_constant__ AttnArgs a) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  extern __shared__ __align__(16) unsigned char tc_smem[];
  const int dim = kDimT ? kDimT : a.dim, ld = dim + kTcPad;
  uint16_t* qs = reinterpret_cast<uint16_t*>(tc_smem);                   // [kTcHeads][ld]
  uint16_t* kv = qs + kTcHeads * ld;                                     // [kAsync ? 2 : 1][kTile][ld]
  float* ss = reinterpret_cast<float*>(kv + (kAsync ? 2 : 1) * kTile * ld);  // [kTcHeads][kSld]
  uint16_t* ps = reinterpret_cast<uint16_t*>(ss + kTcHeads * kSld);      // [kTcHeads][kPld]
  uint8_t* raw = reinterpret_cast<uint8_t*>(ps + kTcHeads * kPld);       // [kTile][a.raw_ld]
  // Tile it's candidate codes (candidate_code) in codes[it & 1], as int32: window rows and entries
  // of a sequence number fewer than 2^31.
  __shared__ int32_t codes[2][kTile];
  __shared__ float m_s[kTcHeads], den_s[kTcHeads], resc_s[kTcHeads];
  __shared__ int32_t listed_s[kTile];  // the list entries of tile it + 2, fetched under tile it
  __shared__ CandRange range_s;  // the block's candidate range, read in the tile loop (fewer live registers)
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int gid = lane >> 2, tig = lane & 3;
  const TokArgs ta = token_args(a, blockIdx.x);
  const AttnPart& part = ta.p;
  const int64_t t = ta.t;
  const int hb0 = a.h_begin + int(blockIdx.y) * kTcHeads;
  const CandRange r = candidate_range(a, part, t, blockIdx.z);
  const int ntiles = r.ncand > r.cand0 ? int((r.ncand - r.cand0 + kTile - 1) / kTile) : 0;
  const int raw_ld = !kAsync && part.ckv.data ? a.raw_ld : 0;  // 0: compact entries read from global memory
  if (tid < kTcHeads) {
    m_s[tid] = -INFINITY;
    den_s[tid] = 0.f;
  }
  if (tid == 0) range_s = r;
  if (tid < kTile) {
    codes[0][tid] = int32_t(tile_code(part, r, t, 0, tid));
    codes[1][tid] = int32_t(tile_code(part, r, t, 1, tid));
  }
  __syncthreads();
  if (kAsync && ntiles > 0) fetch_tile_bf16(part, codes[0], kv, dim);
  if (raw_ld && ntiles > 0) fetch_raw(part.ckv, codes[0], raw, raw_ld);
  {  // q of the block's heads, under the first tile's fetch: every load issued before the stores
    const int d8 = dim / 8, chunks = kTcHeads * d8 / kTcThreads;
    uint4 v[kMaxChunks];
#pragma unroll
    for (int k = 0; k < kMaxChunks; ++k) {
      const int i = tid + k * kTcThreads, hl = i / d8, c = (i % d8) * 8, h = hb0 + hl;
      v[k] = make_uint4(0, 0, 0, 0);
      if (k < chunks && h < a.h_end) v[k] = ld8_as_bf16(part.q, t, int64_t(h) * dim + c);
    }
#pragma unroll
    for (int k = 0; k < kMaxChunks; ++k) {
      const int i = tid + k * kTcThreads, hl = i / d8, c = (i % d8) * 8;
      if (k < chunks) *reinterpret_cast<uint4*>(qs + hl * ld + c) = v[k];
    }
  }
  const int mt = (warp & 3) * 16;  // S: heads [mt, +16) x candidates [quarter * 16, +16)
  const int quarter = warp >> 2;
  // O: heads [(w % 2) * 32, +32) x dims [(w / 2) * dim / 8, +dim / 8) (dim / 64 n8 tiles): per 16
  // candidates a warp reads 1 KB of P and 2 KB of V fragments for 16 MMAs.
  OAcc<kOTiles> o((warp & 1) * 32, (warp >> 1) * (dim / 8), dim / 64);

  for (int it = 0; it < ntiles; ++it) {
    const int32_t* tcodes = codes[it & 1];
    uint16_t* tkv = kAsync ? kv + (it & 1) * kTile * ld : kv;  // this tile's KV rows
    if constexpr (kAsync) {
      cp_async_wait_all();
      // This tile's rows landed (everyone's copies), the tile before is no longer read (its KV
      // buffer takes the next tile), and the next tile's codes are written.
      __syncthreads();
      if (tid < kTile) fetch_listed(part, range_s, t, it + 2, tid, &listed_s[tid]);  // its own commit group
      if (it + 1 < ntiles) fetch_tile_bf16(part, codes[(it + 1) & 1], kv + ((it + 1) & 1) * kTile * ld, dim);
      else cp_async_commit();  // an empty group: the same group count on every tile
    } else {
      if (raw_ld) cp_async_wait_all();
      __syncthreads();  // this tile's raw rows landed; the previous tile's KV and P are no longer read
      stage_tile<kDimT>(part, tcodes, raw, raw_ld, kv, dim);
      __syncthreads();  // KV staged; raw free
      if (tid < kTile) fetch_listed(part, range_s, t, it + 2, tid, &listed_s[tid]);  // its own commit group
      if (raw_ld && it + 1 < ntiles) fetch_raw(part.ckv, codes[(it + 1) & 1], raw, raw_ld);
    }
    {  // S = Q K^T * scale: heads [mt, mt + 16) x candidates [quarter * 16, +16)
      float sacc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
      const uint32_t qa = smem_u32(frag_a_row(qs + mt * ld, ld, lane));  // this lane's ldmatrix rows at k = 0
      const uint32_t kb = smem_u32(frag_b_rows(tkv + quarter * 16 * ld, ld, lane));
#pragma unroll 8
      for (int k0 = 0; k0 < dim; k0 += 16) {
        uint32_t af[4], bf[4];
        ldmatrix_x4(af, qa + 2 * k0);
        ldmatrix_x4(bf, kb + 2 * k0);
        mma_bf16_16816(sacc[0], af, bf[0], bf[1]);
        mma_bf16_16816(sacc[1], af, bf[2], bf[3]);
      }
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        const int c = quarter * 16 + nt * 8 + tig * 2;
        ss[(mt + gid) * kSld + c] = sacc[nt][0] * a.scale;
        ss[(mt + gid) * kSld + c + 1] = sacc[nt][1] * a.scale;
        ss[(mt + gid + 8) * kSld + c] = sacc[nt][2] * a.scale;
        ss[(mt + gid + 8) * kSld + c + 1] = sacc[nt][3] * a.scale;
      }
    }
    __syncthreads();
    {  // online softmax: 8 threads per head row, 8 candidates each
      const int row = tid >> 3, c0 = (tid & 7) * 8;
      *reinterpret_cast<uint4*>(ps + row * kPld + c0) =
          online_softmax_row8(tcodes, ss + row * kSld, c0, row, m_s, den_s, resc_s);
    }
    __syncthreads();
    if (tid < kTile) {  // tile it + 2's codes (read after the next tile's first barrier)
      if (kAsync || (raw_ld && it + 1 < ntiles)) cp_async_wait<1>();  // this thread's list entry landed (not its rows)
      else cp_async_wait_all();
      codes[it & 1][tid] = int32_t(tile_code_listed(part, range_s, it + 2, tid, listed_s[tid]));
    }
    o.add_pv(resc_s, ps, kPld, tkv, ld);  // O = O * resc + P V
  }
  __syncthreads();
  if (a.num_splits > 1) o.store_split(a, hb0, dim, m_s, den_s);  // for attention_combine_kernel
  else o.store(a, part, t, hb0, dim, m_s, den_s);
}

}  // namespace

void launch_sparse_attention_tc(AttnArgs& a, int64_t n, cudaStream_t s) {
  // Staged compact rows: the widest of the parts', if the shared memory holds them.
  int raw_ld = 0;
  for (int i = 0; i < a.num_parts; ++i)
    if (a.parts[i].ckv.data) raw_ld = std::max(raw_ld, int((a.parts[i].ckv.row_bytes + 15) / 16 * 16));
  a.raw_ld = raw_ld <= kMaxRawLd ? raw_ld : 0;
  const bool async = parts_bf16(a);
  {
    const size_t most = std::max(tc_smem_bytes(kTcMaxDim, kMaxRawLd, false), tc_smem_bytes(kTcMaxDim, 0, true));
    static std::atomic<uint64_t> attr_set[4];
    set_smem_once(sparse_attention_tc_kernel<kTcMaxDim, false>, most, false, &attr_set[0]);
    set_smem_once(sparse_attention_tc_kernel<0, false>, most, false, &attr_set[1]);
    set_smem_once(sparse_attention_tc_kernel<kTcMaxDim, true>, most, false, &attr_set[2]);
    set_smem_once(sparse_attention_tc_kernel<0, true>, most, false, &attr_set[3]);
  }
  const dim3 grid{grid_x(n, "sparse_attention (tensor cores)"), unsigned(ceil_div(a.h_end - a.h_begin, kTcHeads)),
                  unsigned(a.num_splits)};
  const size_t smem = tc_smem_bytes(a.dim, a.raw_ld, async);
  if (a.dim == kTcMaxDim && async) launch(sparse_attention_tc_kernel<kTcMaxDim, true>, grid, kTcThreads, smem, s)(a);
  else if (a.dim == kTcMaxDim) launch(sparse_attention_tc_kernel<kTcMaxDim, false>, grid, kTcThreads, smem, s)(a);
  else if (async) launch(sparse_attention_tc_kernel<0, true>, grid, kTcThreads, smem, s)(a);
  else launch(sparse_attention_tc_kernel<0, false>, grid, kTcThreads, smem, s)(a);
  launch_check("sparse_attention (tensor cores)", s);
}

}  // namespace v4rt::kernels::cuda::attn
