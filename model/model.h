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
#include <utility>
#include <vector>

#include "kernels/backend.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/distributed.h"
#include "model/state.h"
#include "model/weights.h"
#include "parallel/ep.h"
#include "parallel/sp_ops.h"

namespace v4rt::model {

enum class Numerics : uint8_t {
  kReference,  // fp32 everywhere, no quantization simulation (matches golden/)
  kOfficial,   // the rounding points of DeepSeek's reference code (spec §2, §11)
};
Numerics parse_numerics(const std::string& text);  // "reference" | "official"; throws naming the value

struct ModelOptions {
  Numerics numerics = Numerics::kReference;
  Shard shard;               // used when `parallel` is not sharded; otherwise shard_of(parallel.plan)
  ParallelContext parallel;  // this rank's layout, shard plan and group communicators
  LoadObserver load_observer;  // called after each unit of the weight load (may be empty)
};

// A token drawn on the device (Backend::sample) from a chunk's last logits row: the id, its
// log-softmax at temperature 1 and the row's best `n_logprobs` ids (best first, ties: lower id).
struct SampledToken {
  int32_t id = -1;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;
};

struct StepChunk {
  SequenceState* sequence = nullptr;
  std::span<const int32_t> tokens;  // appended at sequence->position()
  bool all_logits = false;          // logits for every token of the chunk, else the last only
  // Optional: [rows, hc, D] F32 on the backend's device; receives the final residual streams
  // (before hc_head) of the chunk's last `rows` tokens (the MTP block's input, spec §7).
  TensorView hidden{};
  // Optional, with `sampled` (not with all_logits): the next token is drawn on the device from
  // the chunk's last row with these settings (`position` and `draw` included) and lands in
  // *sampled; its logits row never reaches the host (step()'s (*logits)[i] stays empty).
  const kernels::SampleRow* sample = nullptr;
  SampledToken* sampled = nullptr;
};

// Called after every layer with the residual streams [num_tokens, hc, hidden] of the chunk being
// processed (device view) and the chunk's first position. For tests and debugging.
using LayerObserver = std::function<void(int layer, int64_t pos_begin, const TensorView& x)>;

class Model {
 public:
  static std::unique_ptr<Model> load(const Checkpoint& ckpt, const ModelOptions& options, kernels::Backend& backend);

  const ModelConfig& config() const { return config_; }
  kernels::Backend& backend() { return backend_; }
  // A new, empty sequence (under SP it stores only the compressed entries this rank owns).
  std::unique_ptr<SequenceState> new_sequence();
  // How its sequences store compressed entries and indexer keys: compact under the official
  // numerics (their values are exactly the compact formats', docs/KV_CACHE.md), F32 otherwise.
  // Byte budgets pass it to state_bytes / entry_block_bytes.
  KvStorage kv_storage() const;
  // The pool of compact KV blocks the sequences share; nullptr before the first compact sequence.
  const KvPool* kv_pool() const { return kv_pool_.get(); }
  const ParallelContext& parallel() const { return options_.parallel; }
  // Checkpoint bytes this rank loaded (its weight share, stored format).
  uint64_t weight_bytes() const { return weights_.bytes_loaded; }

  // Runs every chunk; (*logits)[i] holds chunk i's logits, row-major [rows, vocab] where rows is
  // the chunk length (all_logits) or 1. logits may be nullptr (the head is then skipped).
  // The chunks run as one batch over their concatenated tokens: embedding, mHC, norms, every
  // projection, the MoE and the head run once over all rows (weights read once per step); only the
  // window / compressor / indexer / sparse-attention parts run per sequence. A sequence named by
  // several chunks starts a new batch at its second chunk (chunks of one sequence run in order).
  // Chunks with `sample` set draw their next token on the device: the head runs over their last
  // row whatever `logits` is, and only the drawn ids and logprobs are copied to the host.
  // NOTE: under a sharded layout step() is collective: every rank of the job calls it with the
  // same chunks (same sequences, same tokens) in the same order. The head and sampling are not
  // collective: a rank may sample or skip the head on its own.
  void step(std::span<const StepChunk> chunks, std::vector<std::vector<float>>* logits);

  void set_layer_observer(LayerObserver observer) { observer_ = std::move(observer); }

  // For the blocks that reuse the main model's weights and settings (the MTP block).
  const ModelWeights& weights() const { return weights_; }
  const ModelOptions& options() const { return options_; }
  parallel::ExpertParallel* expert_parallel() const { return expert_parallel_.get(); }
  parallel::SpOps* sp_ops() const { return sp_ops_.get(); }
  // The slice of the weights this rank holds.
  Shard shard() const;

 private:
  Model(const ModelConfig& config, const ModelOptions& options, kernels::Backend& backend)
      : config_(config), options_(options), backend_(backend) {}
  // One batch of chunks on distinct sequences; logits[i] receives chunks[i]'s logits (nullptr: none).
  void forward_batch(std::span<const StepChunk> chunks, std::vector<float>* const* logits);
  // Whether a batch's device work is recorded as one step graph (Backend::begin_graph): decode-
  // shaped batches (every chunk at most kGraphMaxChunkTokens tokens) of a one-rank model without a
  // layer observer, on a backend that records graphs.
  bool records_graph(std::span<const StepChunk> chunks) const;
  // The head's rows `out0[i], out0[i + 1])` of chunk i: its device draw (chunks[i].sample) and its
  // logits to the host (logits[i]). Ends `recording` once the device work is enqueued, before the
  // first host read.
  void finish_head(std::span<const StepChunk> chunks, std::vector<float>* const* logits,
                   const std::vector<int64_t>& out0, const TensorView& head_logits,
                   kernels::GraphRecording& recording);

  ModelConfig config_;
  ModelOptions options_;
  kernels::Backend& backend_;
  ModelWeights weights_;
  LayerObserver observer_;
  std::unique_ptr<parallel::ExpertParallel> expert_parallel_;  // set when layout.ep > 1
  std::unique_ptr<parallel::SpOps> sp_ops_;                    // set when layout.sp > 1
  std::shared_ptr<KvPool> kv_pool_;  // the compact KV blocks of every sequence (first one makes it)
};

}  // namespace v4rt::model
