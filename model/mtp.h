// SPDX-License-Identifier: MIT
// The MTP block (spec §7) as a draft model for speculative decoding: from the main model's final
// residual streams at position t (before hc_head) and the embedding of token t+1 it predicts token
// t+2. It reuses the main model's block functions (hc_pre/attention/moe/hc_post), its embedding and
// head; it has its own window-only attention state (MtpState), which a speculative step marks and
// rolls back like the main model's SequenceState.
//
// NOTE: the position fed to the block's RoPE is not fixed by the reference (spec §7, §13.4). We use
// the DeepSeek-V3 convention (also what V3 serving engines do): the pair (streams of position t,
// token t+1) is processed at position t, so the MTP block's sequence runs in step with the main
// model's, one entry per main position, with its own 128-slot window. Drafting beyond one token
// feeds the block's own output streams (before its hc_head) back as the "main streams" of the next
// position, as V3 engines do when they chain one MTP layer.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "kernels/backend.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "model/state.h"
#include "model/weights.h"

namespace v4rt::model {

// Per-sequence state of the MTP block: its window tail and its position (pairs processed so far).
class MtpState {
 public:
  MtpState(const ModelConfig& config, kernels::Backend& backend);
  int64_t position() const { return position_; }
  void advance(int64_t n) { position_ += n; }
  LayerState& layer() { return layer_; }
  void reset();
  // A deep copy (not while marked): continuing it gives what continuing this state gives.
  std::unique_ptr<MtpState> clone() const;
  // As SequenceState::mark / rollback / release (window only).
  void mark(int64_t max_tokens);
  void rollback(int64_t position);
  void release();
  bool marked() const { return marked_; }

 private:
  const ModelConfig& config_;
  kernels::Backend& backend_;
  LayerState layer_;
  int64_t position_ = 0;
  bool marked_ = false;
  int64_t mark_position_ = 0;
  int64_t mark_max_ = 0;
  WindowMark window_mark_;
};

class Mtp {
 public:
  // Loads `mtp.0.*` for `model` (its backend, numerics and shard). Throws v4rt::Error when the
  // checkpoint has no MTP block (num_nextn_predict_layers = 0) or a tensor is missing.
  static std::unique_ptr<Mtp> load(const Checkpoint& ckpt, Model& model);

  std::unique_ptr<MtpState> new_state() const;
  uint64_t weight_bytes() const { return weights_.bytes_loaded; }

  // Runs the block at positions [state.position(), + n): hidden [n, hc, D] F32 on the device (the
  // main model's final streams of those positions, or the block's own previous output), tokens [n]
  // (each position's next token). Then `logits` (may be nullptr) gets the draft logits [vocab] of
  // the last position (the token two ahead of it), and `out_hidden` (if set, [1, hc, D]) its output
  // streams. NOTE: collective under a sharded layout, like Model::step.
  void forward(MtpState& state, const TensorView& hidden, std::span<const int32_t> tokens, std::vector<float>* logits,
               const TensorView& out_hidden = TensorView());

 private:
  explicit Mtp(Model& model) : model_(model) {}
  Model& model_;
  MtpWeights weights_;
};

}  // namespace v4rt::model
