// SPDX-License-Identifier: MIT
// bf16 views of a prefill attention launch's rows (attention_args.cuh, make_bf16_views): the
// window rows (F32 in the model, bf16 values) and the compressed entries (compact FP8 + bf16 RoPE
// rows, or F32) converted once per launch into bf16 rows of head_dim elements, so the tensor-core
// kernels copy every candidate tile straight into shared memory (cp.async, no decode) instead of
// decoding it once per query. For the wgmma kernel in clusters the entries are written in tiles of
// its shared-memory layout instead (tiled_elem), so that a tile is one contiguous block which a
// cluster copies once for all its blocks. Both conversions are exact: an e4m3 code times a power
// of two has at most 4 significant bits, the F32 rows hold bf16 values (ld8_as_bf16 rounds them
// the same way).
#include <algorithm>

#include "kernels/cuda/attention_args.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/launch_geometry.h"

namespace v4rt::kernels::cuda::attn {

namespace {

constexpr int kViewThreads = 256;
// The most view bytes a launch converts: a Flash or Pro CSA layer at 1M tokens (262,144 entries of
// 1 KB) plus a chunk's window rows. Larger launches keep their rows as they are.
constexpr size_t kMaxViewBytes = size_t(320) << 20;

// One part's conversion: rows [0, win_rows) of `win` then [0, comp_rows) of the compressed entries,
// 8-element chunks, into dst_win / dst_comp ([rows][dim] bf16; `tiled`: the entries as tiles,
// zeros from comp_rows up to comp_alloc, a whole number of tiles).
struct ViewJob {
  Act win;
  KvRowsDev ckv;
  Act comp;
  uint16_t* dst_win;
  uint16_t* dst_comp;
  int64_t win_rows, comp_rows, comp_alloc;
  int dim;
  bool tiled;
};

__global__ void __launch_bounds__(kViewThreads) bf16_view_kernel(const __grid_constant__ ViewJob j) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  const int d8 = j.dim / 8;
  const int64_t i = int64_t(blockIdx.x) * kViewThreads + threadIdx.x;
  const int64_t r = i / d8, c = (i % d8) * 8;
  if (r < j.win_rows) {
    *reinterpret_cast<uint4*>(j.dst_win + r * j.dim + c) = ld8_as_bf16(j.win, r, c);
    return;
  }
  const int64_t e = r - j.win_rows;
  if (e >= j.comp_alloc) return;
  uint4 v = make_uint4(0, 0, 0, 0);
  if (e < j.comp_rows) v = j.ckv.data ? j.ckv.fp8_ld8_bf16(j.ckv.row(e), int(c)) : ld8_as_bf16(j.comp, e, c);
  *reinterpret_cast<uint4*>(j.dst_comp + (j.tiled ? tiled_elem(e, c, j.dim) : e * j.dim + c)) = v;
}

// The rows of part d that the view converts: F32 window rows, and compact or F32 entries (`tiled`:
// every part's entries but listed ones).
int64_t view_win_rows(const AttnPart& d) { return d.win.bf16 ? 0 : d.num_window_rows; }
bool tiles_comp(const AttnPart& d, bool tiled) { return tiled && !d.has_list && d.num_comp > 0; }
int64_t view_comp_rows(const AttnPart& d, bool tiled) {
  return d.ckv.data || (d.num_comp > 0 && !d.comp.bf16) || tiles_comp(d, tiled) ? d.num_comp : 0;
}
int64_t view_comp_alloc(const AttnPart& d, bool tiled) {
  return tiles_comp(d, tiled) ? ceil_div(d.num_comp, int64_t(kTile)) * kTile : view_comp_rows(d, tiled);
}

}  // namespace

void* make_bf16_views(AttnArgs& a, int64_t candidate_reads, bool tiled, cudaStream_t s) {
  int64_t rows = 0;
  for (int i = 0; i < a.num_parts; ++i) rows += view_win_rows(a.parts[i]) + view_comp_alloc(a.parts[i], tiled);
  const size_t bytes = size_t(rows) * size_t(a.dim) * 2;
  // Worth it when the launch reads its rows several times over (prefill: every query of a chunk
  // reads the window and the entries), not for a decode batch (each row read by one query).
  if (rows == 0 || bytes > kMaxViewBytes || candidate_reads < 4 * rows) return nullptr;
  uint16_t* base = static_cast<uint16_t*>(stream_alloc(bytes, s));
  uint16_t* dst = base;
  for (int i = 0; i < a.num_parts; ++i) {
    AttnPart& d = a.parts[i];
    ViewJob j{};
    j.win = d.win;
    j.ckv = d.ckv;
    j.comp = d.comp;
    j.dim = a.dim;
    j.win_rows = view_win_rows(d);
    j.comp_rows = view_comp_rows(d, tiled);
    j.comp_alloc = view_comp_alloc(d, tiled);
    j.tiled = tiles_comp(d, tiled);
    if (j.win_rows + j.comp_alloc == 0) continue;
    j.dst_win = dst;
    j.dst_comp = dst + j.win_rows * a.dim;
    dst += (j.win_rows + j.comp_alloc) * a.dim;
    const int64_t chunks = (j.win_rows + j.comp_alloc) * (a.dim / 8);
    launch(bf16_view_kernel, grid_x(ceil_div(chunks, kViewThreads), "attention bf16 view"), kViewThreads, 0, s)(j);
    launch_check("attention bf16 view", s);
    if (j.win_rows > 0) d.win = Act{j.dst_win, a.dim, true};
    if (j.comp_rows > 0) {
      d.comp = Act{j.dst_comp, a.dim, true};
      d.ckv = KvRowsDev{};
      d.comp_tiled = j.tiled;
    }
  }
  return base;
}

bool parts_bf16(const AttnArgs& a) {
  for (int i = 0; i < a.num_parts; ++i) {
    const AttnPart& d = a.parts[i];
    const bool comp_ok = d.num_comp == 0 || (!d.ckv.data && d.comp.bf16);
    if (!d.win.bf16 || !comp_ok) return false;
  }
  return a.num_parts > 0;
}

}  // namespace v4rt::kernels::cuda::attn
