// SPDX-License-Identifier: MIT
// Random-weight checkpoints in the official release layout, for tests, benchmarks and the embedded
// model: FP8 e4m3 weights with ue8m0 128x128 block scales, routed experts as packed FP4 with ue8m0
// per-32 scales, BF16/F32/I64 where the release uses them, split into shards with an index, exactly
// as the golden generator (tests/data/golden/README.md) quantizes and lays out tiny-a. Initial scales follow that
// script's randomize() so activations stay in a sane range through every layer.
#pragma once

#include <cstdint>
#include <string>

#include "model/config.h"

namespace v4rt::model {

struct SyntheticOptions {
  uint64_t seed = 1;   // same seed and config -> byte-identical files
  // > 0: tensors sorted by name, split into this many contiguous shards (make_golden.py: 2);
  // 0: the release placement (release_shard_name: one shard per layer, embed, head, MTP).
  int num_shards = 2;
};

// Writes config.json, model.safetensors.index.json and the shards into `dir` (created if needed).
// Tensors are produced one at a time, so a slice of Flash or Pro needs memory for one tensor, not
// for the checkpoint. Returns the total tensor bytes. Throws v4rt::Error on I/O failure.
uint64_t write_synthetic_checkpoint(const ModelConfig& config, const std::string& dir,
                                    const SyntheticOptions& options = {});

// The quantization recipes of make_golden.py, exposed for tests. `w` is [rows, cols] row-major.
// FP8: q [rows, cols] e4m3 codes, scale [ceil(rows/128), ceil(cols/128)] ue8m0 codes.
void quantize_fp8_block(const float* w, int64_t rows, int64_t cols, uint8_t* q, uint8_t* scale);
// FP4: packed [rows, cols/2] (low nibble = even element), scale [rows, cols/32] ue8m0 codes.
void quantize_fp4(const float* w, int64_t rows, int64_t cols, uint8_t* packed, uint8_t* scale);

}  // namespace v4rt::model
