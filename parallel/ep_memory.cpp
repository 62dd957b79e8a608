// SPDX-License-Identifier: MIT
// EpMemory on host memory (see ep_memory.h): plain loops, the reference of the CUDA kernels.
#include "parallel/ep_memory.h"

#include <glog/logging.h>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace v4rt::parallel {
namespace {

float load(const uint8_t* p, DType dtype) {
  if (dtype == DType::kF32) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, p, 2);
  return bf16_to_f32(h);
}

void store(uint8_t* p, DType dtype, float v) {
  if (dtype == DType::kF32) {
    std::memcpy(p, &v, 4);
  } else {
    const uint16_t h = f32_to_bf16(v);
    std::memcpy(p, &h, 2);
  }
}

// The power-of-two act_quant scale of spec §2.2, bit for bit as kernels/cuda/device_math.cuh.
float pow2_scale(float amax) {
  const float v = std::max(amax, 1e-4f) * (1.0f / 448.0f);
  uint32_t u;
  std::memcpy(&u, &v, 4);
  const int e = int((u >> 23) & 0xff) - 127 + ((u & 0x7fffff) != 0 ? 1 : 0);
  const uint32_t bits = uint32_t(e + 127) << 23;
  float s;
  std::memcpy(&s, &bits, 4);
  return s;
}

void check_row_dtype(DType dtype) {
  CHECK(dtype == DType::kF32 || dtype == DType::kBF16) << "EP rows are F32 or BF16, not " << dtype_name(dtype);
}

class HostEpMemory final : public EpMemory {
 public:
  Device device() const override { return Device::kHost; }
  cluster::StreamHandle stream() const override { return nullptr; }
  Buffer alloc(size_t bytes) override { return Buffer(bytes, Device::kHost); }
  void upload(void* dst, const void* src, size_t bytes) override {
    if (bytes) std::memcpy(dst, src, bytes);
  }
  void download(void* dst, const void* src, size_t bytes) override {
    if (bytes) std::memcpy(dst, src, bytes);
  }
  void gather_rows(void* dst, int64_t dst_stride, const void* src, int64_t src_stride, const int64_t* idx,
                   int64_t n, int64_t bytes) override {
    auto* d = static_cast<uint8_t*>(dst);
    const auto* s = static_cast<const uint8_t*>(src);
    for (int64_t i = 0; i < n; ++i) {
      std::memcpy(d + i * dst_stride, s + (idx ? idx[i] : i) * src_stride, size_t(bytes));
    }
  }
  void sum_rows(float* out, const void* rows, DType dtype, const int64_t* pos, const float* scale,
                int64_t num_tokens, int topk, int64_t hidden) override {
    check_row_dtype(dtype);
    const auto* r = static_cast<const uint8_t*>(rows);
    const int64_t es = int64_t(dtype_size(dtype)), row_bytes = hidden * es;
    for (int64_t t = 0; t < num_tokens; ++t) {
      float* acc = out + t * hidden;
      std::fill(acc, acc + hidden, 0.f);
      for (int j = 0; j < topk; ++j) {
        const int64_t p = pos[t * topk + j];
        if (p < 0) continue;
        const uint8_t* row = r + p * row_bytes;
        if (scale) {
          const float w = scale[t * topk + j];
          for (int64_t c = 0; c < hidden; ++c) acc[c] += load(row + c * es, dtype) * w;
        } else {
          for (int64_t c = 0; c < hidden; ++c) acc[c] += load(row + c * es, dtype);
        }
      }
    }
  }
  void quant_fp8(void* dst, int64_t dst_stride, const void* x, DType x_dtype, int64_t n, int64_t hidden) override {
    check_row_dtype(x_dtype);
    CHECK_EQ(hidden % 128, 0) << "FP8 dispatch needs hidden % 128 == 0";
    const auto* xs = static_cast<const uint8_t*>(x);
    const int64_t es = int64_t(dtype_size(x_dtype));
    for (int64_t r = 0; r < n; ++r) {
      uint8_t* row = static_cast<uint8_t*>(dst) + r * dst_stride;
      for (int64_t b = 0; b < hidden / 128; ++b) {
        float v[128], amax = 0.f;
        for (int i = 0; i < 128; ++i) {
          v[i] = load(xs + (r * hidden + b * 128 + i) * es, x_dtype);
          amax = std::max(amax, std::fabs(v[i]));
        }
        const float s = pow2_scale(amax);
        for (int i = 0; i < 128; ++i) row[b * 128 + i] = f32_to_e4m3(std::clamp(v[i] / s, -448.f, 448.f));
        std::memcpy(row + hidden + b * 4, &s, 4);
      }
    }
  }
  void dequant_fp8(void* out, DType out_dtype, const void* src, int64_t src_stride, int64_t n,
                   int64_t hidden) override {
    check_row_dtype(out_dtype);
    const int64_t es = int64_t(dtype_size(out_dtype));
    for (int64_t r = 0; r < n; ++r) {
      const uint8_t* row = static_cast<const uint8_t*>(src) + r * src_stride;
      for (int64_t c = 0; c < hidden; ++c) {
        float s;
        std::memcpy(&s, row + hidden + (c / 128) * 4, 4);
        store(static_cast<uint8_t*>(out) + (r * hidden + c) * es, out_dtype, e4m3_to_f32(row[c]) * s);
      }
    }
  }
  void wait_compute() override {}
  void release_compute() override {}
  void synchronize() override {}
};

}  // namespace

std::unique_ptr<EpMemory> make_host_ep_memory() { return std::make_unique<HostEpMemory>(); }

}  // namespace v4rt::parallel
