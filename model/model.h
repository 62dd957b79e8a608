// SPDX-License-Identifier: MIT
// The DeepSeek-V4 forward pass (spec §3-§7) over a kernels::Backend. A Model holds the weights;
// each sequence has its own SequenceState. step() appends a chunk of tokens to one or more
// sequences (prefill chunks and decode tokens alike) and returns logits.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/state.h"
#include "model/weights.h"

namespace v4rt::model {

enum class Numerics : uint8_t {
  kReference,  // fp32 everywhere, no quantization simulation (matches golden/)
  kOfficial,   // the rounding points of DeepSeek's reference code (spec §2, §11)
};
Numerics parse_numerics(const std::string& text);  // "reference" | "official"; throws naming the value

struct ModelOptions {
  Numerics numerics = Numerics::kReference;
  Shard shard;
};

struct StepChunk {
  SequenceState* sequence = nullptr;
  std::span<const int32_t> tokens;  // appended at sequence->position()
  bool all_logits = false;          // logits for every token of the chunk, else the last only
};

// Called after every layer with the residual streams [num_tokens, hc, hidden] of the chunk being
// processed (device view) and the chunk's first position. For tests and debugging.
using LayerObserver = std::function<void(int layer, int64_t pos_begin, const TensorView& x)>;

class Model {
 public:
  static std::unique_ptr<Model> load(const Checkpoint& ckpt, const ModelOptions& options, kernels::Backend& backend);

  const ModelConfig& config() const { return config_; }
  kernels::Backend& backend() { return backend_; }
  std::unique_ptr<SequenceState> new_sequence();

  // Runs every chunk; (*logits)[i] holds chunk i's logits, row-major [rows, vocab] where rows is
  // the chunk length (all_logits) or 1. logits may be nullptr.
  void step(std::span<const StepChunk> chunks, std::vector<std::vector<float>>* logits);

  void set_layer_observer(LayerObserver observer) { observer_ = std::move(observer); }

 private:
  Model(const ModelConfig& config, const ModelOptions& options, kernels::Backend& backend)
      : config_(config), options_(options), backend_(backend) {}
  void forward_chunk(const StepChunk& chunk, std::vector<float>* logits);

  ModelConfig config_;
  ModelOptions options_;
  kernels::Backend& backend_;
  ModelWeights weights_;
  LayerObserver observer_;
};

}  // namespace v4rt::model
