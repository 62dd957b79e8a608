// SPDX-License-Identifier: MIT
// Device-test helpers (see cuda_test_util.h).
#include "tests/cuda/cuda_test_util.h"

#include <algorithm>
#include <cstring>
#include <sstream>

#include "kernels/cuda/cuda_backend.h"

namespace v4rt::kernels::cuda_test {

Backend& cpu_backend() {
  static std::unique_ptr<Backend> be = make_cpu_backend();
  return *be;
}

Backend& gpu_backend() {
  static std::unique_ptr<Backend> be = cuda::make_cuda_backend(0);
  return *be;
}

int64_t Dual::numel() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

std::vector<float> Dual::cpu_values() const {
  std::vector<float> v(static_cast<size_t>(numel()));
  std::memcpy(v.data(), cpu_buf.data(), v.size() * 4);
  return v;
}

std::vector<float> Dual::gpu_values() const {
  const size_t n = size_t(numel());
  std::vector<float> v(n);
  if (gpu_dtype == DType::kF32) {
    gpu_backend().copy_to_host(v.data(), gpu_buf.data(), n * 4);
  } else {
    std::vector<uint16_t> h(n);
    gpu_backend().copy_to_host(h.data(), gpu_buf.data(), n * 2);
    for (size_t i = 0; i < n; ++i) v[i] = bf16_to_f32(h[i]);
  }
  return v;
}

Dual make_dual(const std::vector<int64_t>& dims, const std::vector<float>& values, DType gpu_dtype) {
  gpu_backend();  // installs the device allocator
  Dual d;
  d.dims = dims;
  d.gpu_dtype = gpu_dtype;
  const size_t n = size_t(d.numel());
  CHECK_EQ(values.size(), n);
  d.cpu_buf = Buffer(std::max<size_t>(n, 1) * 4, Device::kHost);
  std::memcpy(d.cpu_buf.data(), values.data(), n * 4);
  d.cpu = make_view(d.cpu_buf.data(), DType::kF32, dims, Device::kHost);
  const size_t es = gpu_dtype == DType::kF32 ? 4 : 2;
  d.gpu_buf = Buffer(std::max<size_t>(n, 1) * es, Device::kCuda);
  if (gpu_dtype == DType::kF32) {
    gpu_backend().copy_to_device(d.gpu_buf.data(), values.data(), n * 4);
  } else {
    std::vector<uint16_t> h(n);
    for (size_t i = 0; i < n; ++i) h[i] = f32_to_bf16(values[i]);
    gpu_backend().copy_to_device(d.gpu_buf.data(), h.data(), n * 2);
  }
  d.gpu = make_view(d.gpu_buf.data(), gpu_dtype, dims, Device::kCuda);
  return d;
}

Dual make_dual_i32(const std::vector<int64_t>& dims, const std::vector<int32_t>& values) {
  gpu_backend();
  Dual d;
  d.dims = dims;
  d.gpu_dtype = DType::kI32;
  const size_t n = size_t(d.numel());
  CHECK_EQ(values.size(), n);
  d.cpu_buf = Buffer(std::max<size_t>(n, 1) * 4, Device::kHost);
  std::memcpy(d.cpu_buf.data(), values.data(), n * 4);
  d.cpu = make_view(d.cpu_buf.data(), DType::kI32, dims, Device::kHost);
  d.gpu_buf = Buffer(std::max<size_t>(n, 1) * 4, Device::kCuda);
  gpu_backend().copy_to_device(d.gpu_buf.data(), values.data(), n * 4);
  d.gpu = make_view(d.gpu_buf.data(), DType::kI32, dims, Device::kCuda);
  return d;
}

DualRows dual_compact_rows(const KvRowLayout& l, int64_t rows, Rng& rng) {
  std::vector<float> x = rng.normals(rows * l.dim, 1.f, false);
  round_to_kv_layout(cpu_backend(), l, TensorView(x.data(), DType::kF32, {rows, l.dim}));
  DualRows d;
  d.bytes.resize(size_t(rows * l.row_bytes));
  for (int64_t r = 0; r < rows; ++r) EXPECT_TRUE(kv_pack_row(l, &x[size_t(r * l.dim)], &d.bytes[size_t(r * l.row_bytes)]));
  d.gpu_buf = gpu_backend().alloc(d.bytes.size());
  gpu_backend().copy_to_device(d.gpu_buf.data(), d.bytes.data(), d.bytes.size());
  d.cpu = TensorView(d.bytes.data(), DType::kU8, {rows, l.row_bytes});
  d.gpu = TensorView(d.gpu_buf.data(), DType::kU8, {rows, l.row_bytes}, Device::kCuda);
  return d;
}

PagedRows page_rows_reversed(const std::vector<uint8_t>& bytes, int64_t rows, int64_t row_bytes, int shift) {
  const int64_t per = int64_t(1) << shift, nb = (rows + per - 1) / per;
  const int64_t slot = (per * row_bytes + 255) / 256 * 256;
  std::vector<uint8_t> host(size_t(nb * slot), 0xA5);
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(&host[size_t((nb - 1 - (r >> shift)) * slot + (r & (per - 1)) * row_bytes)],
                &bytes[size_t(r * row_bytes)], size_t(row_bytes));
  PagedRows p;
  p.pool = gpu_backend().alloc(host.size());
  gpu_backend().copy_to_device(p.pool.data(), host.data(), host.size());
  std::vector<const uint8_t*> addr(static_cast<size_t>(nb));
  for (int64_t b = 0; b < nb; ++b) addr[size_t(b)] = static_cast<const uint8_t*>(p.pool.data()) + (nb - 1 - b) * slot;
  p.table = gpu_backend().alloc(addr.size() * sizeof(addr[0]));
  gpu_backend().copy_to_device(p.table.data(), addr.data(), addr.size() * sizeof(addr[0]));
  p.blocks.blocks = static_cast<const uint8_t* const*>(p.table.data());
  p.blocks.block_shift = shift;
  p.view = TensorView(const_cast<uint8_t*>(addr[0]), DType::kU8, {rows, row_bytes}, Device::kCuda);
  return p;
}

std::vector<int32_t> gpu_i32(const Dual& d) {
  std::vector<int32_t> v(static_cast<size_t>(d.numel()));
  gpu_backend().copy_to_host(v.data(), d.gpu_buf.data(), v.size() * 4);
  return v;
}

std::vector<int32_t> cpu_i32(const Dual& d) {
  std::vector<int32_t> v(static_cast<size_t>(d.numel()));
  std::memcpy(v.data(), d.cpu_buf.data(), v.size() * 4);
  return v;
}

DualWeight upload_both(const WeightSource& s) { return {cpu_backend().upload_weight(s), gpu_backend().upload_weight(s)}; }

DualWeight upload_f32(const std::vector<float>& v, int64_t rows, int64_t cols, DType as, std::vector<uint16_t>* keep) {
  WeightSource s;
  s.name = "test_weight";
  s.rows = rows;
  s.cols = cols;
  if (as == DType::kBF16) {
    std::vector<uint16_t> local;
    std::vector<uint16_t>& h = keep ? *keep : local;
    h.resize(v.size());
    for (size_t i = 0; i < v.size(); ++i) h[i] = f32_to_bf16(v[i]);
    s.dtype = DType::kBF16;
    s.data = h.data();
    return upload_both(s);
  }
  s.dtype = DType::kF32;
  s.data = v.data();
  return upload_both(s);
}

::testing::AssertionResult compare(const std::string& what, const std::vector<float>& got,
                                   const std::vector<float>& ref, const Tolerance& tol) {
  if (got.size() != ref.size()) return ::testing::AssertionFailure() << what << ": size " << got.size() << " vs " << ref.size();
  double ss = 0, se = 0, max_err = 0;
  int64_t finite = 0;
  std::ostringstream bad;
  int64_t nbad = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const bool fr = std::isfinite(ref[i]), fg = std::isfinite(got[i]);
    const bool parity = (std::isnan(ref[i]) == std::isnan(got[i])) &&
                        (fr || std::isnan(ref[i]) || (std::isinf(got[i]) && std::signbit(got[i]) == std::signbit(ref[i])));
    if (!parity || fr != fg) {
      if (nbad++ < 8) bad << "  [" << i << "] got " << got[i] << " ref " << ref[i] << " (non-finite mismatch)\n";
      continue;
    }
    if (!fr) continue;
    ss += double(ref[i]) * ref[i];
    ++finite;
  }
  const double rms = finite ? std::sqrt(ss / double(finite)) : 0.0;
  const double atol = tol.atol_rms * rms;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(ref[i]) || !std::isfinite(got[i])) continue;
    const double e = std::fabs(double(got[i]) - double(ref[i]));
    se += e * e;
    max_err = std::max(max_err, e);
    if (e > atol + tol.rtol * std::fabs(ref[i])) {
      if (nbad++ < 8) bad << "  [" << i << "] got " << got[i] << " ref " << ref[i] << " err " << e << "\n";
    }
  }
  const double nmse = ss > 0 ? se / ss : se;
  std::printf("[compare] %-44s n=%zu max_abs_err=%.3e rms_ref=%.3e nmse=%.3e bad=%lld\n", what.c_str(), ref.size(),
              max_err, rms, nmse, static_cast<long long>(nbad));
  if (nbad > 0 || nmse > tol.max_nmse)
    return ::testing::AssertionFailure() << what << ": " << nbad << " elements out of tolerance (rtol " << tol.rtol
                                         << ", atol " << atol << "), nmse " << nmse << "\n" << bad.str();
  return ::testing::AssertionSuccess();
}

}  // namespace v4rt::kernels::cuda_test
