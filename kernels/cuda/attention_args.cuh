// SPDX-License-Identifier: MIT
// What the sparse attention kernels share (attention.cu, attention_tc.cu, attention_ws.cu,
// attention_wgmma.cu, attention_bf16_view.cu): the launch's kernel parameters (AttnArgs: shared
// fields and the parts of a batch by value), a token's part, its candidate list (window rows, then
// compressed entries), the bf16 row loads of the tensor-core kernels, and the copy forms' producer
// and q staging. Included only by those files.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/batch_params.cuh"
#include "kernels/cuda/cp_async.cuh"
#include "kernels/cuda/kv_decode.cuh"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/warp_specialize.cuh"

namespace v4rt::kernels::cuda::attn {

constexpr int kTile = 64;  // candidates per tile: the reference's softmax blocks

// One part of a launch (a sequence of a batch, or the whole call): its views and positions. The
// parts of a launch are passed by value in its kernel parameters (no copy to the device, capturable
// in a CUDA graph); its tokens are numbered across the parts, part i holding [row0, row0 + rows).
struct AttnPart {
  Act q, win, comp, out;
  KvRowsDev ckv;  // compact compressed entries (ckv.data set): read instead of comp
  const int32_t* comp_idx;
  int64_t idx_stride, num_list;
  float* lse;
  int64_t lse_stride;
  int64_t num_window_rows, num_comp, pos_begin, window_pos0;
  int64_t row0;
  int window, comp_ratio;
  bool has_list;
  // comp holds the entries in tiles of kTile rows in the wgmma kernels' shared-memory layout
  // (tiled_elem; attention_bf16_view.cu), zeros past num_comp up to a whole tile
  bool comp_tiled;
};

// The parts that fit in the kernel parameters beside the shared fields (< 128 bytes): 135 parts
// of 240 bytes (145 before a compact table could be paged: KvRowsDev's block table and shift).
constexpr int kMaxAttnParts = int((kMaxKernelParamBytes - 128) / sizeof(AttnPart));

struct AttnArgs {
  const float* sink;
  int h_begin, h_end, dim;
  float scale;
  bool include_sink, bf16_probs, out_round;
  // Split-candidate mode (num_splits > 1): block z covers tiles [z * tiles_per_split, ...) and
  // writes its partial state instead of the output.
  int num_splits, tiles_per_split;
  float* part_acc;  // [n, nh, num_splits, dim] unnormalized output (n: the launch's tokens)
  float* part_ml;   // [n, nh, num_splits, 2] running max, denominator
  int raw_ld;       // tensor-core kernel: bytes per staged compact row (0: read from global memory)
  int num_parts;
  int64_t num_tokens;  // wgmma kernel: the launch's tokens (its grid may round them up to clusters)
  AttnPart parts[kMaxAttnParts];
};
static_assert(sizeof(AttnArgs) <= kMaxKernelParamBytes, "attention kernel parameters");
static_assert(offsetof(AttnArgs, parts) <= 128, "attention shared fields: kMaxAttnParts assumes < 128 bytes");

// A token of the launch resolved at block start: its part and its row inside the part.
struct TokArgs {
  const AttnPart& p;
  int64_t t;
};

// The index of the part holding launch token tg (binary search over the parts' first tokens; the
// same for the whole block, so the parameter reads are uniform).
__device__ __forceinline__ int part_index(const AttnArgs& a, int64_t tg) {
  return part_holding(a.num_parts, tg, [&](int k) { return a.parts[k].row0; });
}
__device__ __forceinline__ TokArgs token_args(const AttnArgs& a, int64_t tg) {
  const AttnPart& p = a.parts[part_index(a, tg)];
  return TokArgs{p, tg - p.row0};
}

// Candidates of query token t of part p (absolute position pos_begin + t): the window rows
// [first, pos], then the compressed entries (the selected list, or every entry complete at pos),
// of which split `split` takes the whole tiles [split * tiles_per_split, ...) as [cand0, ncand).
struct CandRange {
  int64_t first, nwin, cand0, ncand;
};

__device__ __forceinline__ CandRange candidate_range(const AttnArgs& a, const AttnPart& p, int64_t t, int64_t split) {
  CandRange r;
  const int64_t pos = p.pos_begin + t;
  r.first = pos - p.window + 1 > 0 ? pos - p.window + 1 : 0;
  r.nwin = pos - r.first + 1;
  int64_t ncomp = 0;
  if (p.has_list) ncomp = p.num_list;
  else if (p.comp_ratio > 0) ncomp = min(p.num_comp, (pos + 1) / p.comp_ratio);
  r.cand0 = split * a.tiles_per_split * kTile;
  r.ncand = min(r.nwin + ncomp, r.cand0 + int64_t(a.tiles_per_split) * kTile);
  return r;
}

// Where candidate c of token t lives: >= 0 a window row, <= -2 compressed entry -code-2, -1 none;
// `listed`: the list's entry for c when c is a listed candidate (past the window, p.has_list).
__device__ __forceinline__ int64_t candidate_code_of(const AttnPart& p, const CandRange& r, int64_t c, int64_t listed) {
  if (c < r.nwin) {
    const int64_t row = r.first + c - p.window_pos0;
    return (row >= 0 && row < p.num_window_rows) ? row : -1;
  }
  const int64_t j = p.has_list ? listed : c - r.nwin;
  return (j >= 0 && j < p.num_comp) ? -(j + 2) : -1;
}
__device__ __forceinline__ int64_t candidate_code(const AttnPart& p, const CandRange& r, int64_t t, int64_t c) {
  const bool listed = p.has_list && c >= r.nwin;
  return candidate_code_of(p, r, c, listed ? int64_t(p.comp_idx[t * p.idx_stride + (c - r.nwin)]) : 0);
}

// The softmax denominator of head h with its sink, when the launch includes it: den + exp(sink - m).
__device__ __forceinline__ float den_with_sink(const AttnArgs& a, int h, float m, float den) {
  if (a.include_sink) den += expf(a.sink[h] - m);
  return den;
}

// Where candidate c of tile `it` of the block's range lives (candidate_code), -1 past the range.
__device__ __forceinline__ int64_t tile_code(const AttnPart& p, const CandRange& r, int64_t t, int it, int c) {
  const int64_t cand = r.cand0 + int64_t(it) * kTile + c;
  return cand < r.ncand ? candidate_code(p, r, t, cand) : int64_t(-1);
}

// Eight F32 values (a, then b) as bf16 pairs, RNE.
__device__ __forceinline__ uint4 f32x8_to_bf16(const float4& a, const float4& b) {
  const auto pack = [](float lo, float hi) { return uint32_t(f32_to_bf16(lo)) | (uint32_t(f32_to_bf16(hi)) << 16); };
  return make_uint4(pack(a.x, a.y), pack(a.z, a.w), pack(b.x, b.y), pack(b.z, b.w));
}

// Eight elements (r, c .. c + 7) of a bf16 or F32 row as bf16 bits, RNE (exact for bf16 rows and
// for F32 rows of bf16 values, which the official numerics' q and window rows hold). Rows 16-byte
// aligned with a stride of a multiple of 8 elements (tc_rows_ok).
__device__ __forceinline__ uint4 ld8_as_bf16(const Act& x, int64_t r, int64_t c) {
  if (x.bf16) return *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(x.data) + r * x.stride + c);
  const float* p = static_cast<const float*>(x.data) + r * x.stride + c;
  return f32x8_to_bf16(*reinterpret_cast<const float4*>(p), *reinterpret_cast<const float4*>(p + 4));
}

// Element (r, c) of a tile of kTile rows of `stride` bf16 elements in the wgmma kernels' no-swizzle
// K-major layout (wgmma.cuh core_offset: 8 x 16-byte core matrices, 8 rows of them contiguous), c
// a multiple of 8; entry e of tiled entries is row e % kTile of tile e / kTile.
__device__ __forceinline__ int64_t tiled_elem(int64_t e, int64_t c, int64_t stride) {
  const int64_t r = e % kTile;
  return (e / kTile) * kTile * stride + (r >> 3) * 8 * stride + (c >> 3) * 64 + (r & 7) * 8;
}

// The copy forms of the tensor-core kernels (every row bf16, parts_bf16): where candidate `code`'s
// row (>= 0 a window row, <= -2 an entry) has column c; an absent one (-1) points at the window,
// which its zero-filling copy does not read.
__device__ __forceinline__ const uint16_t* bf16_row_at(const AttnPart& part, int code, int c) {
  const uint16_t* comp = static_cast<const uint16_t*>(part.comp.data);
  if (code <= -2 && part.comp_tiled) return comp + tiled_elem(-code - 2, c, part.comp.stride);
  if (code <= -2) return comp + int64_t(-code - 2) * part.comp.stride + c;
  return static_cast<const uint16_t*>(part.win.data) + (code >= 0 ? int64_t(code) * part.win.stride + c : 0);
}

// A warp-specialized kernel's producer thread p (of 128) in the copy form: columns (p % 64) * 8 of
// rows p / 64 + 2 k of tile `codes` ([kTile] rows of 64 chunks), 16-byte cp.async to dst(row, c),
// absent candidates as zeros.
template <class Dst>
__device__ __forceinline__ void copy_tile_chunks(const AttnPart& part, const int32_t* codes, int p, Dst dst) {
  const int c = (p & 63) * 8, r0 = p >> 6;
#pragma unroll 8
  for (int k = 0; k < kTile / 2; ++k) {
    const int row = r0 + 2 * k, code = codes[row];
    cp_async16(dst(row, c), bf16_row_at(part, code, c), code != -1);
  }
}

// produce_tiles_bf16 by default: every tile copied row by row, none whole.
struct NoWholeTiles {
  __device__ __forceinline__ bool operator()(int, int, int) const { return false; }
};

// The producer warpgroup of the warp-specialized kernels (attention_ws.cu, attention_wgmma.cu),
// thread p of 128 (named barrier 2 among them), over the block's ntiles tiles: for tile it it
// waits until the consumers released buffer it % 2 (empty, the tile two back), writes the tile's
// candidate codes to codes[it % 2] (thread p < 64 candidate p, read while the tile before was
// copied), copies the rows (copy_tile_chunks) to dst(it % 2, row, c) and arrives on full[it % 2]
// once its copies land (.noinc: full counts 128 of these) and, a warp at a time, for the codes
// (release: 4 more). whole(it, b, p) true: the tile came whole another way, and thread p has made
// its one arrival on full[b] for it (the copy's expect_tx, or a plain arrival). Returns when no
// copy of its own is outstanding.
template <class Dst, class Whole = NoWholeTiles>
__device__ __forceinline__ void produce_tiles_bf16(const AttnPart& part, const CandRange& r, int64_t t, int ntiles,
                                                   int p, int32_t (*codes)[kTile], uint64_t* full, uint64_t* empty,
                                                   Dst dst, Whole whole = {}) {
  int32_t next_code = p < kTile ? int32_t(tile_code(part, r, t, 0, p)) : -1;
  for (int it = 0; it < ntiles; ++it) {
    const int b = it & 1;
    if (it >= 2) mbar_wait(&empty[b], uint32_t(((it - 2) >> 1) & 1));
    if (p < kTile) codes[b][p] = next_code;
    named_sync<2, 128>();  // the codes written
    if (p < kTile) next_code = int32_t(tile_code(part, r, t, it + 1, p));
    if (!whole(it, b, p)) {
      copy_tile_chunks(part, codes[b], p, [&](int row, int c) { return dst(b, row, c); });
      mbar_arrive_cp_async(&full[b]);
    }
    __syncwarp();
    if ((threadIdx.x & 31) == 0) mbar_arrive(&full[b]);
  }
  cp_async_wait_all();
}

// q of a block's 64 heads [hb0, +64) of token t as bf16 into dst(head, c), head_dim kDim, by all
// kThreads threads, every load issued before the first store; heads past a.h_end are zeros.
template <int kThreads, int kDim, class Dst>
__device__ __forceinline__ void stage_q_heads(const AttnArgs& a, const AttnPart& part, int64_t t, int hb0, Dst dst) {
  constexpr int kAll = 64 * (kDim / 8), kChunks = (kAll + kThreads - 1) / kThreads;
  uint4 v[kChunks];
#pragma unroll
  for (int k = 0; k < kChunks; ++k) {
    const int i = threadIdx.x + k * kThreads, hl = i / (kDim / 8), c = (i % (kDim / 8)) * 8, h = hb0 + hl;
    v[k] = make_uint4(0, 0, 0, 0);
    if (i < kAll && h < a.h_end) v[k] = ld8_as_bf16(part.q, t, int64_t(h) * kDim + c);
  }
#pragma unroll
  for (int k = 0; k < kChunks; ++k) {
    const int i = threadIdx.x + k * kThreads;
    if (i < kAll) *reinterpret_cast<uint4*>(dst(i / (kDim / 8), (i % (kDim / 8)) * 8)) = v[k];
  }
}

// bf16 views (attention_bf16_view.cu) for the prefill launches of the tensor-core kernels: converts
// the parts' F32 window rows and compact (or F32) compressed entries, exactly, into bf16 rows of
// a.dim elements in stream-ordered scratch and points the parts at them, so parts_bf16(a) holds and
// the kernels copy their tiles by cp.async with nothing to decode. `tiled` (a launch of the wgmma
// kernel in clusters): the entries of every part without lists, bf16 ones too, in tiles of the
// kernel's shared-memory layout (AttnPart::comp_tiled), which a cluster copies whole.
// `candidate_reads` (the launch's tokens x candidates, an upper bound) decides whether that pays:
// only when the rows are read four times over or more (not a decode batch), and at most 320 MiB of
// views. Returns the scratch to
// stream_free after the launch, or nullptr (the parts unchanged).
void* make_bf16_views(AttnArgs& a, int64_t candidate_reads, bool tiled, cudaStream_t s);
// Whether every row the parts of `a` hold is bf16 (window rows and plain entries, no compact ones).
bool parts_bf16(const AttnArgs& a);

// The mma.sync tensor-core kernel (attention_tc.cu) over the n tokens of the parts in `a`: blocks
// of kTcHeads heads of a token, a.num_splits splits of a.tiles_per_split tiles each (partial
// states to a.part_acc / a.part_ml when more than one), head_dim % 128 == 0 and <= kTcMaxDim, rows
// the tensor-core kernels can load (PartPlan::tc). Sets a.raw_ld.
constexpr int kTcHeads = 64;
constexpr int kTcMaxDim = 512;
void launch_sparse_attention_tc(AttnArgs& a, int64_t n, cudaStream_t s);

// The warp-specialized mma.sync kernel (attention_ws.cu) over the n tokens of the parts in `a`:
// one split, kTcHeads heads per block, head_dim kWgmmaDim (512), every row bf16 (parts_bf16); the
// outputs of launch_sparse_attention_tc bit for bit.
void launch_sparse_attention_ws(AttnArgs& a, int64_t n, cudaStream_t s);

// The warp-specialized bf16 wgmma kernel (attention_wgmma.cu) over the n tokens of the parts in
// `a`: one split, 64 heads per block, head_dim 512, every row bf16 (parts_bf16); the outputs of
// launch_sparse_attention_tc bit for bit. `cluster`: blocks in pairs of adjacent tokens, which
// read the compressed tiles they share (tiled entries, make_bf16_views) once for both.
constexpr int kWgmmaDim = 512;
void launch_sparse_attention_wgmma(AttnArgs& a, int64_t n, bool cluster, cudaStream_t s);

// One head row's share of a 64-candidate tile's online softmax on the tensor-core prefill kernels:
// 8 threads per row (lanes 8k..8k+7 of a warp, all calling), each 8 candidates from c0; S of the
// row (scaled) at srow, absent candidates (code -1) excluded. Returns the 8 probabilities as bf16
// (packed, candidate c0 + i in half i of the words), p from the tile's running max mb = max(old
// max, tile max); the first of the 8 then sets the row's rescale of the old state exp(old - mb)
// (0 when the old max is -inf), its max and its denominator (from the unrounded p), as
// sparse_attention_kernel does per tile. A row with no candidate yet keeps its state (p = 0).
template <typename Code>
__device__ __forceinline__ uint4 online_softmax_row8(const Code* codes, const float* srow, int c0, int row,
                                                     float* m_s, float* den_s, float* resc_s) {
  float z[8], tmax = -INFINITY;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    z[i] = codes[c0 + i] == -1 ? -INFINITY : srow[c0 + i];
    tmax = fmaxf(tmax, z[i]);
  }
#pragma unroll
  for (int o8 = 1; o8 < 8; o8 <<= 1) tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, o8));
  const float m_old = m_s[row];
  const float mb = fmaxf(m_old, tmax);
  float resc = 1.f, sum = 0.f;
  float p[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  if (mb != -INFINITY) {  // else a tile of absent candidates before any valid one: nothing changes
    resc = m_old == -INFINITY ? 0.f : expf(m_old - mb);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      p[i] = z[i] == -INFINITY ? 0.f : expf(z[i] - mb);
      sum += p[i];
    }
  }
#pragma unroll
  for (int o8 = 1; o8 < 8; o8 <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o8);
  __syncwarp();  // every thread of the row read m_s[row]
  if ((threadIdx.x & 7) == 0) {
    den_s[row] = den_s[row] * resc + sum;
    m_s[row] = mb;
    resc_s[row] = resc;
  }
  return make_uint4(bf16x2_rn(p[0], p[1]), bf16x2_rn(p[2], p[3]), bf16x2_rn(p[4], p[5]), bf16x2_rn(p[6], p[7]));
}

}  // namespace v4rt::kernels::cuda::attn
