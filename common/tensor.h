// SPDX-License-Identifier: MIT
// TensorView: a non-owning, trivially copyable view (data, dtype, up to 4 dims, strides in
// elements, device). Buffer: owning, move-only host or device storage that hands out views.
// Device memory is allocated through an allocator hook that kernels/cuda installs, so common/
// never links CUDA.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "common/dtype.h"

namespace v4rt {

enum class Device : uint8_t { kHost, kCuda };

constexpr int kMaxDims = 4;

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::kF32;
  Device device = Device::kHost;
  int ndim = 0;
  std::array<int64_t, kMaxDims> shape{};   // shape[0] is the slowest dimension
  std::array<int64_t, kMaxDims> stride{};  // in elements

  TensorView() = default;
  TensorView(void* p, DType dt, std::initializer_list<int64_t> dims, Device dev = Device::kHost);

  int64_t numel() const;
  int64_t size(int d) const { return shape[size_t(d)]; }
  bool contiguous() const;
  template <typename T>
  T* ptr() const { return static_cast<T*>(data); }
  std::string shape_str() const;  // "[4, 256]"
};

class Buffer {
 public:
  Buffer() = default;
  Buffer(size_t bytes, Device device = Device::kHost);
  ~Buffer();
  Buffer(Buffer&& other) noexcept;
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }
  TensorView view(DType dtype, std::initializer_list<int64_t> dims) const;

  // Installed by the CUDA backend; without it a device Buffer is a fatal error.
  struct DeviceAllocator {
    void* (*alloc)(size_t bytes);
    void (*free)(void* p);
  };
  static void set_device_allocator(DeviceAllocator allocator);

 private:
  void release();
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_ = Device::kHost;
};

}  // namespace v4rt
