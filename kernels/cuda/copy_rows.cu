// SPDX-License-Identifier: MIT
// Batched row copies (Backend::copy_rows_batch): many small strided copies (a decode step's window
// and compressor rows, one or a few rows per sequence) in one launch per group of kMaxCopies. The
// group's descriptors travel by value as the kernel's parameter (CUDA 12.1+ on sm_70+ takes up to
// 32,764 bytes), so a launch needs no host-to-device upload and can be captured in a CUDA graph.
#include <cstring>

#include "kernels/cuda/batch_params.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/launch_geometry.h"
#include "kernels/cuda/ops.h"

namespace v4rt::kernels::cuda {

namespace {

// One copy: `rows` rows of `row_bytes`, in units of 1 << unit_shift bytes (the widest of 16, 8, 4,
// 2, 1 that divides both pointers, both pitches and the row).
struct CopyDesc {
  char* dst;
  const char* src;
  int64_t dst_pitch;  // bytes between rows
  int64_t src_pitch;
  int32_t rows;
  int32_t row_units;  // row_bytes >> unit_shift
  int32_t unit_shift;
  int32_t pad;
};
static_assert(sizeof(CopyDesc) == 48, "descriptor layout");

// 640 descriptors: 30,720 bytes + the count, under the kernel parameter limit.
constexpr int kMaxCopies = 640;
struct CopyGroup {
  CopyDesc copies[kMaxCopies];
  int32_t num_copies;
};
static_assert(sizeof(CopyGroup) <= kMaxKernelParamBytes, "kernel parameter limit");

constexpr int kThreads = 256;
constexpr int64_t kUnitsPerBlock = 4 * kThreads;  // a block copies up to 4 units per thread per pass

template <typename Unit>
__device__ __forceinline__ void copy_units(const CopyDesc& d, int64_t begin, int64_t end) {
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const int64_t r = i / d.row_units, c = i - r * d.row_units;
    reinterpret_cast<Unit*>(d.dst + r * d.dst_pitch)[c] = reinterpret_cast<const Unit*>(d.src + r * d.src_pitch)[c];
  }
}

// Grid: x = copy of the group, y = chunks of kUnitsPerBlock units (grid-stride over the copy).
__global__ void __launch_bounds__(kThreads) copy_rows_batch_kernel(const __grid_constant__ CopyGroup g) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  const CopyDesc& d = g.copies[blockIdx.x];
  const int64_t total = int64_t(d.rows) * d.row_units;
  for (int64_t begin = int64_t(blockIdx.y) * kUnitsPerBlock; begin < total; begin += int64_t(gridDim.y) * kUnitsPerBlock) {
    const int64_t end = min(total, begin + kUnitsPerBlock);
    switch (d.unit_shift) {
      case 4: copy_units<uint4>(d, begin, end); break;
      case 3: copy_units<uint2>(d, begin, end); break;
      case 2: copy_units<uint32_t>(d, begin, end); break;
      case 1: copy_units<uint16_t>(d, begin, end); break;
      default: copy_units<uint8_t>(d, begin, end); break;
    }
  }
}

int unit_shift_of(const CopyDesc& d, int64_t row_bytes) {
  const uint64_t bits = uint64_t(reinterpret_cast<uintptr_t>(d.dst)) | uint64_t(reinterpret_cast<uintptr_t>(d.src)) |
                        uint64_t(d.dst_pitch) | uint64_t(d.src_pitch) | uint64_t(row_bytes);
  int shift = 0;
  while (shift < 4 && (bits >> shift & 1) == 0) ++shift;
  return shift;
}

void launch_group(const CopyGroup& g, int64_t max_units, cudaStream_t s) {
  const dim3 grid(unsigned(g.num_copies), grid_yz((max_units + kUnitsPerBlock - 1) / kUnitsPerBlock));
  launch(copy_rows_batch_kernel, grid, kThreads, 0, s)(g);
  launch_check("copy_rows_batch", s);
}

}  // namespace

void launch_copy_rows_batch(const RowCopy* copies, size_t num_copies, cudaStream_t s) {
  CopyGroup g;
  if (LaunchLog::active_for(s)) std::memset(&g, 0, sizeof(g));  // logged parameters compare bytewise
  g.num_copies = 0;
  int64_t max_units = 0;
  for (size_t i = 0; i < num_copies; ++i) {
    const TensorView& dst = copies[i].dst;
    const TensorView& src = copies[i].src;
    CHECK(dst.dtype == src.dtype) << "copy_rows_batch dtype mismatch (copy " << i << ")";
    CHECK_EQ(dst.shape[0], src.shape[0]) << "copy_rows_batch rows (copy " << i << ")";
    const int64_t w = act_row_width(dst);
    CHECK_EQ(w, act_row_width(src)) << "copy_rows_batch row width (copy " << i << ")";
    const int64_t rows = dst.shape[0], row_bytes = w * int64_t(dtype_size(dst.dtype));
    if (rows == 0 || row_bytes == 0) continue;
    CHECK(dst.device == Device::kCuda && src.device == Device::kCuda)
        << "copy_rows_batch: device views only (copy " << i << "); host rows go through copy_rows";
    CopyDesc& d = g.copies[g.num_copies];
    d.dst = static_cast<char*>(dst.data);
    d.src = static_cast<const char*>(src.data);
    d.dst_pitch = (dst.ndim == 1 ? w : dst.stride[0]) * int64_t(dtype_size(dst.dtype));
    d.src_pitch = (src.ndim == 1 ? w : src.stride[0]) * int64_t(dtype_size(src.dtype));
    d.unit_shift = unit_shift_of(d, row_bytes);
    const int64_t row_units = row_bytes >> d.unit_shift;
    CHECK(rows <= INT32_MAX && row_units <= INT32_MAX) << "copy_rows_batch: copy " << i << " too large";
    d.rows = int32_t(rows);
    d.row_units = int32_t(row_units);
    d.pad = 0;
    max_units = std::max(max_units, rows * row_units);
    if (++g.num_copies == kMaxCopies) {
      launch_group(g, max_units, s);
      g.num_copies = 0;
      max_units = 0;
    }
  }
  if (g.num_copies > 0) launch_group(g, max_units, s);
}

}  // namespace v4rt::kernels::cuda
