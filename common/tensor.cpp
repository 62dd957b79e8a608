// SPDX-License-Identifier: MIT
#include "common/tensor.h"

#include <cstdlib>
#include <sstream>
#include <utility>

#include "common/check.h"

namespace v4rt {

TensorView::TensorView(void* p, DType dt, std::initializer_list<int64_t> dims, Device dev)
    : data(p), dtype(dt), device(dev), ndim(int(dims.size())) {
  CHECK_LE(ndim, kMaxDims);
  int i = 0;
  for (int64_t d : dims) shape[size_t(i++)] = d;
  int64_t s = 1;
  for (int d = ndim - 1; d >= 0; --d) {
    stride[size_t(d)] = s;
    s *= shape[size_t(d)];
  }
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int d = 0; d < ndim; ++d) n *= shape[size_t(d)];
  return n;
}

bool TensorView::contiguous() const {
  int64_t s = 1;
  for (int d = ndim - 1; d >= 0; --d) {
    if (shape[size_t(d)] != 1 && stride[size_t(d)] != s) return false;
    s *= shape[size_t(d)];
  }
  return true;
}

std::string TensorView::shape_str() const {
  std::ostringstream os;
  os << "[";
  for (int d = 0; d < ndim; ++d) os << (d ? ", " : "") << shape[size_t(d)];
  os << "]";
  return os.str();
}

namespace {
Buffer::DeviceAllocator g_device_allocator{nullptr, nullptr};
}

void Buffer::set_device_allocator(DeviceAllocator allocator) { g_device_allocator = allocator; }

Buffer::Buffer(size_t bytes, Device device) : bytes_(bytes), device_(device) {
  if (bytes == 0) return;
  if (device == Device::kHost) {
    data_ = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    CHECK(data_ != nullptr) << "host allocation of " << bytes << " bytes failed";
  } else {
    CHECK(g_device_allocator.alloc != nullptr) << "device Buffer requested but no CUDA backend is initialised";
    data_ = g_device_allocator.alloc(bytes);
  }
}

Buffer::~Buffer() { release(); }

Buffer::Buffer(Buffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)), device_(other.device_) {}

Buffer& Buffer::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    release();
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
    device_ = other.device_;
  }
  return *this;
}

void Buffer::release() {
  if (!data_) return;
  if (device_ == Device::kHost) std::free(data_);
  else if (g_device_allocator.free) g_device_allocator.free(data_);
  data_ = nullptr;
  bytes_ = 0;
}

TensorView Buffer::view(DType dtype, std::initializer_list<int64_t> dims) const {
  TensorView v(data_, dtype, dims, device_);
  CHECK_LE(size_t(v.numel()) * dtype_size(dtype), bytes_) << "view " << v.shape_str() << " exceeds buffer";
  return v;
}

}  // namespace v4rt
