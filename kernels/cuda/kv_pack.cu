// SPDX-License-Identifier: MIT
// kv_pack (KvPackParams): rows of official-numerics values into the compact KV row formats of
// common/kv_format.h, as the host codec kv_pack_row writes them. One block per row; warp w packs
// the scale blocks w, w + 8, ... (a lane two elements: one e4m3 byte each, or one byte of two e2m1
// codes), then the block writes the bf16 RoPE dims and zeroes the padding. Each scale is the
// smallest power of two of the official rule (spec §2.3) that holds the block's largest value, so
// the codes times the scale are the input values exactly.
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/launch_geometry.h"
#include "kernels/cuda/ops.h"

namespace v4rt::kernels::cuda {

namespace {

constexpr int kPackThreads = 256;

// 2^ceil(log2(max(amax, floor) / qmax)), the division correctly rounded (as the host codec).
__device__ __forceinline__ float pack_scale(float amax, float floor, float qmax) {
  const uint32_t u = __float_as_uint(fmaxf(amax, floor) / qmax);
  const int e = int((u >> 23) & 0xff) - 127 + ((u & 0x7fffff) != 0 ? 1 : 0);
  return ldexpf(1.0f, e);
}

// e2m1 code of v (|v| <= 6) rounded to nearest, ties to the even code; the sign bit follows v.
__device__ __forceinline__ uint32_t f32_to_fp4_code(float v) {
  const float a = fabsf(v);
  uint32_t c;
  if (a <= 0.25f) c = 0;
  else if (a < 0.75f) c = 1;
  else if (a <= 1.25f) c = 2;
  else if (a < 1.75f) c = 3;
  else if (a <= 2.5f) c = 4;
  else if (a < 3.5f) c = 5;
  else if (a <= 5.f) c = 6;
  else c = 7;
  return c | (signbit(v) ? 8u : 0u);
}

struct PackArgs {
  Act x;
  uint8_t* out;
  int64_t out_stride, rows;
  int dim, quant_dim, block, rope_offset, scale_offset, row_bytes;
  bool fp8;
};

__global__ void __launch_bounds__(kPackThreads) kv_pack_kernel(PackArgs a) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  const int64_t r = blockIdx.x;
  uint8_t* row = a.out + r * a.out_stride;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int num_blocks = (a.quant_dim + a.block - 1) / a.block;
  const float qmax = a.fp8 ? 448.f : 6.f;
  const float floor = a.fp8 ? 1e-4f : 6.0f * 1.17549435e-38f;
  for (int b = warp; b < num_blocks; b += kPackThreads / 32) {
    const int e0 = b * a.block + 2 * lane, end = min(a.quant_dim, (b + 1) * a.block);
    const bool have0 = 2 * lane < a.block && e0 < end, have1 = 2 * lane + 1 < a.block && e0 + 1 < end;
    const float v0 = have0 ? a.x.ld(r, e0) : 0.f, v1 = have1 ? a.x.ld(r, e0 + 1) : 0.f;
    const float s = pack_scale(warp_max(fmaxf(fabsf(v0), fabsf(v1))), floor, qmax);
    if (lane == 0) row[a.scale_offset + b] = uint8_t(__float_as_uint(s) >> 23);
    const float q0 = fminf(fmaxf(v0 / s, -qmax), qmax), q1 = fminf(fmaxf(v1 / s, -qmax), qmax);
    if (a.fp8) {
      if (have0) row[e0] = f32_to_e4m3(q0);
      if (have1) row[e0 + 1] = f32_to_e4m3(q1);
    } else if (have0) {  // the block is a multiple of 2 elements (kFp4 dims are multiples of 32)
      row[e0 / 2] = uint8_t(f32_to_fp4_code(q0) | (f32_to_fp4_code(q1) << 4));
    }
  }
  for (int i = a.quant_dim + threadIdx.x; i < a.dim; i += blockDim.x) {  // kFp8Rope: bf16 RoPE dims
    const bf16_t h = f32_to_bf16(a.x.ld(r, i));
    row[a.rope_offset + 2 * (i - a.quant_dim)] = uint8_t(h);
    row[a.rope_offset + 2 * (i - a.quant_dim) + 1] = uint8_t(h >> 8);
  }
  for (int i = a.scale_offset + num_blocks + threadIdx.x; i < a.row_bytes; i += blockDim.x) row[i] = 0;
}

}  // namespace

void launch_kv_pack(const KvPackParams& p, cudaStream_t s) {
  const KvRowLayout& l = p.layout;
  CHECK(l.compact()) << "kv_pack into the plain format";
  CHECK(l.block <= 64) << "kv_pack: scale blocks of at most 64 elements, got " << l.block;
  const int64_t n = p.x.shape[0];
  CHECK_EQ(act_row_width(p.x), l.dim) << "kv_pack x " << p.x.shape_str();
  CHECK(p.out.dtype == DType::kU8 && p.out.device == Device::kCuda && p.out.shape[0] == n &&
        act_row_width(p.out) == l.row_bytes)
      << "kv_pack out " << p.out.shape_str() << ": U8 device rows of " << l.row_bytes << " bytes";
  if (n == 0) return;
  PackArgs a{};
  a.x = make_act(p.x, "kv_pack x");
  a.out = static_cast<uint8_t*>(p.out.data);
  a.out_stride = p.out.stride[0];
  a.rows = n;
  a.dim = int(l.dim);
  a.quant_dim = int(l.quant_dim);
  a.block = l.block;
  a.rope_offset = int(l.rope_offset);
  a.scale_offset = int(l.scale_offset);
  a.row_bytes = int(l.row_bytes);
  a.fp8 = l.format == KvFormat::kFp8Rope;
  launch(kv_pack_kernel, grid_x(n, "kv_pack"), kPackThreads, 0, s)(a);
  launch_check("kv_pack", s);
}

}  // namespace v4rt::kernels::cuda
