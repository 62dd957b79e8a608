// SPDX-License-Identifier: MIT
// A checkpoint in the official release layout: config.json, model.safetensors.index.json and
// shards (or a single model.safetensors). Shards are memory-mapped; headers are validated when a
// shard is opened (well-formed JSON, known dtypes, shape x dtype size == byte range, ranges inside
// the file and not overlapping). Tensor bytes are only touched when a caller reads them, so a rank
// pages in exactly the slices it uses.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/tensor.h"
#include "model/config.h"

namespace v4rt::model {

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::string file;          // shard path
  uint64_t offset = 0;       // absolute byte offset inside the shard file
  uint64_t bytes = 0;
  const uint8_t* data = nullptr;  // inside the mapping (valid while the Checkpoint lives)
  int64_t numel() const;
};

class Checkpoint {
 public:
  // Opens DIR (config.json + index + shards). Throws v4rt::Error naming the file/tensor at fault.
  static std::unique_ptr<Checkpoint> open(const std::string& dir);
  ~Checkpoint();

  const std::string& dir() const { return dir_; }
  const ModelConfig& config() const { return config_; }
  bool has(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;  // throws naming the tensor when absent
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }

  // Dequantized fp32 copies (spec §2.1). `rows` selects a row range [row_begin, row_end) of the
  // first dimension (a TP/EP shard); the default reads everything. FP8 weights use `name + ".scale"`
  // (128x128 blocks), packed FP4 (I8) weights use per-32 scales; BF16/F32 convert exactly.
  std::vector<float> read_f32(const std::string& name, int64_t row_begin = 0, int64_t row_end = -1) const;
  std::vector<int64_t> read_i64(const std::string& name) const;
  // The shape read_f32 returns: the stored shape, except packed FP4 (I8 with a `.scale` sibling)
  // whose last dimension is doubled ([out, in/2] bytes -> [out, in] values).
  std::vector<int64_t> logical_shape(const std::string& name) const;
  // Bytes of tensors touched so far through read_* (for the per-rank memory report).
  uint64_t bytes_read() const { return bytes_read_.load(); }

  // Checks the tensor list against what `config` requires: every missing, extra or mis-shaped
  // tensor is reported by name (all of them, one per line, in one Error).
  void validate_tensors() const;

 private:
  Checkpoint() = default;
  struct Mapping;
  std::string dir_;
  ModelConfig config_;
  std::map<std::string, TensorInfo> tensors_;
  std::vector<std::unique_ptr<Mapping>> mappings_;
  mutable std::atomic<uint64_t> bytes_read_{0};  // read_* may run on several threads
};

// The tensors (name -> dtype, shape) a checkpoint with `config` must hold (spec §9), MTP included
// when num_nextn_predict_layers > 0.
struct ExpectedTensor {
  DType dtype;
  std::vector<int64_t> shape;
};
std::map<std::string, ExpectedTensor> expected_tensors(const ModelConfig& config);

// The shard file the official release places `tensor` in (spec/release/README.md): shard 1 holds
// embed, layer l shard l+2, shard N-1 head/norm/hc_head, shard N the MTP blocks, where
// N = num_hidden_layers + 2 (+1 with MTP), e.g. "model-00003-of-00046.safetensors" for layers.1.*.
std::string release_shard_name(const ModelConfig& config, const std::string& tensor);

}  // namespace v4rt::model
