// SPDX-License-Identifier: MIT
// CpuBackend: weight upload (dequantization to F32, spec §2.1), memory movement, and the small
// numeric helpers the op files share (dot, FP8/FP4 block scales, quantize-dequantize).
#include "kernels/cpu/cpu_backend.h"

#include <algorithm>
#include <cstring>

namespace v4rt::kernels {

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<cpu::CpuBackend>(); }

namespace cpu {

bool CpuBackend::supports(Op op) const {
  (void)op;
  return true;  // every op has a reference implementation
}

WeightView CpuBackend::upload_weight(const WeightSource& s) {
  const int64_t row_end = s.row_end < 0 ? s.rows : s.row_end;
  V4RT_REQUIRE(s.row_begin >= 0 && s.row_begin <= row_end && row_end <= s.rows,
               "weight " << s.name << ": row range [" << s.row_begin << ", " << row_end << ") outside " << s.rows);
  V4RT_REQUIRE(s.data != nullptr, "weight " << s.name << ": no data");
  const int64_t rows = row_end - s.row_begin;
  const int64_t cols = s.cols;
  WeightView w;
  w.rows = rows;
  w.cols = cols;
  w.device = Device::kHost;
  if (s.dtype == DType::kI64 || s.dtype == DType::kI32) {
    // Integer tables (tid2eid) are kept as I32.
    Buffer b(size_t(std::max<int64_t>(rows * cols, 1)) * 4);
    int32_t* out = static_cast<int32_t*>(b.data());
    // NOTE: safetensors packs tensors back to back, so a mapped tensor is not aligned to its
    // element size in general: elements are read with memcpy.
    const uint8_t* in = static_cast<const uint8_t*>(s.data);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const int64_t i = (s.row_begin + r) * cols + c;
        if (s.dtype == DType::kI64) {
          int64_t v = 0;
          std::memcpy(&v, in + i * 8, 8);
          out[r * cols + c] = int32_t(v);
        } else {
          std::memcpy(&out[r * cols + c], in + i * 4, 4);
        }
      }
    w.dtype = DType::kI32;
    w.data = b.data();
    weights_.push_back(std::move(b));
    return w;
  }
  Buffer b(size_t(std::max<int64_t>(rows * cols, 1)) * 4);
  float* out = static_cast<float*>(b.data());
  switch (s.dtype) {
    case DType::kF32:
      std::memcpy(out, static_cast<const float*>(s.data) + s.row_begin * cols, size_t(rows * cols) * 4);
      break;
    case DType::kBF16: {
      const uint8_t* in = static_cast<const uint8_t*>(s.data) + s.row_begin * cols * 2;
      for (int64_t i = 0; i < rows * cols; ++i) {
        uint16_t v = 0;  // possibly unaligned, see the NOTE above
        std::memcpy(&v, in + i * 2, 2);
        out[i] = bf16_to_f32(v);
      }
      break;
    }
    case DType::kF8E4M3: {
      V4RT_REQUIRE(s.scale != nullptr, "weight " << s.name << ": FP8 without scale");
      const uint8_t* in = static_cast<const uint8_t*>(s.data);
      const int64_t scale_cols = (cols + 127) / 128;
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t gr = s.row_begin + r;
        for (int64_t c = 0; c < cols; ++c)
          out[r * cols + c] = e4m3_to_f32(in[gr * cols + c]) * e8m0_to_f32(s.scale[(gr / 128) * scale_cols + c / 128]);
      }
      break;
    }
    case DType::kFP4: {
      V4RT_REQUIRE(s.scale != nullptr, "weight " << s.name << ": FP4 without scale");
      V4RT_REQUIRE(cols % 32 == 0, "weight " << s.name << ": FP4 columns " << cols << " not a multiple of 32");
      const uint8_t* in = static_cast<const uint8_t*>(s.data);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t gr = s.row_begin + r;
        const uint8_t* packed = in + gr * (cols / 2);
        for (int64_t c = 0; c < cols; ++c)
          out[r * cols + c] = fp4_to_f32(fp4_unpack(packed, c)) * e8m0_to_f32(s.scale[gr * (cols / 32) + c / 32]);
      }
      break;
    }
    default:
      V4RT_FAIL("weight " << s.name << ": dtype " << dtype_name(s.dtype) << " not supported by the cpu backend");
  }
  w.dtype = DType::kF32;
  w.data = b.data();
  weights_.push_back(std::move(b));
  return w;
}

void CpuBackend::copy_to_device(void* dst, const void* src_host, size_t bytes) { std::memcpy(dst, src_host, bytes); }
void CpuBackend::copy_to_host(void* dst_host, const void* src, size_t bytes) { std::memcpy(dst_host, src, bytes); }

void CpuBackend::copy_rows(const TensorView& dst, const TensorView& src) {
  CHECK(dst.dtype == src.dtype) << "copy_rows dtype mismatch";
  CHECK_EQ(dst.shape[0], src.shape[0]);
  const int64_t w = row_width(dst);
  CHECK_EQ(w, row_width(src));
  const size_t es = dtype_size(dst.dtype);
  for (int64_t r = 0; r < dst.shape[0]; ++r)
    std::memmove(static_cast<char*>(dst.data) + size_t(r * dst.stride[0]) * es,
                 static_cast<const char*>(src.data) + size_t(r * src.stride[0]) * es, size_t(w) * es);
}

void CpuBackend::fill(const TensorView& dst, float value) {
  CHECK(dst.dtype == DType::kF32) << "cpu fill expects F32";
  const int64_t w = row_width(dst);
  for (int64_t r = 0; r < dst.shape[0]; ++r) std::fill_n(row_f32(dst, r), w, value);
}

// --- helpers -------------------------------------------------------------------------------------

int64_t row_width(const TensorView& v) {
  CHECK_GE(v.ndim, 1);
  int64_t w = 1;
  for (int d = v.ndim - 1; d >= 1; --d) {
    CHECK_EQ(v.stride[size_t(d)], w) << "row of " << v.shape_str() << " is not contiguous";
    w *= v.shape[size_t(d)];
  }
  if (v.ndim == 1) CHECK_EQ(v.stride[0], 1);
  return w;
}

void check_f32(const TensorView& v, int64_t rows, int64_t width, const char* what) {
  CHECK(v.data != nullptr) << what << ": no data";
  CHECK(v.dtype == DType::kF32) << what << ": cpu backend expects F32, got " << dtype_name(v.dtype);
  CHECK_EQ(v.shape[0], rows) << what << " " << v.shape_str();
  const int64_t w = v.ndim == 1 ? 1 : row_width(v);
  CHECK_EQ(w, width) << what << " " << v.shape_str();
}

float dot(const float* a, const float* b, int64_t n) {
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) s[k] += a[i + k] * b[i + k];
  float tail = 0.0f;
  for (; i < n; ++i) tail += a[i] * b[i];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])) + tail;
}

namespace {
// 2^ceil(log2(v)) for a positive normal fp32 v, by exponent bits (exact).
float pow2_ceil(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  int e = int((u >> 23) & 0xff) - 127 + ((u & 0x7fffffu) != 0 ? 1 : 0);
  return std::ldexp(1.0f, e);
}
}  // namespace

float fp8_block_scale(float amax) { return pow2_ceil(std::max(amax, 1e-4f) * (1.0f / 448.0f)); }
float fp4_block_scale(float amax) { return pow2_ceil(std::max(amax, 6.0f * std::ldexp(1.0f, -126)) / 6.0f); }

void qdq_fp8(float* x, int64_t n, int block) {
  for (int64_t b = 0; b < n; b += block) {
    const int64_t e = std::min<int64_t>(n, b + block);
    float amax = 0.0f;
    for (int64_t i = b; i < e; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float s = fp8_block_scale(amax);
    for (int64_t i = b; i < e; ++i) x[i] = round_e4m3(std::clamp(x[i] / s, -448.0f, 448.0f)) * s;
  }
}

void qdq_fp4(float* x, int64_t n, int block) {
  for (int64_t b = 0; b < n; b += block) {
    const int64_t e = std::min<int64_t>(n, b + block);
    float amax = 0.0f;
    for (int64_t i = b; i < e; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float s = fp4_block_scale(amax);
    for (int64_t i = b; i < e; ++i) x[i] = round_fp4(std::clamp(x[i] / s, -6.0f, 6.0f)) * s;
  }
}

void round_bf16_inplace(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = round_bf16(x[i]);
}

}  // namespace cpu
}  // namespace v4rt::kernels
