// SPDX-License-Identifier: MIT
// Executor: one StepPlan applied to this rank's sequence states (see executor.h).
#include "runtime/executor.h"

#include <glog/logging.h>

namespace v4rt::runtime {

void Executor::run(const StepPlan& plan, std::vector<std::vector<float>>* logits,
                   std::vector<std::vector<float>>* draft_logits) {
  for (const PlanResolve& r : plan.resolves) table_.resolve(r.seq, r.accepted);
  for (const PlanCopy& c : plan.copies) table_.copy(c.src, c.dst);
  if (draft_logits) draft_logits->assign(plan.drafts.size(), {});
  for (size_t i = 0; i < plan.drafts.size(); ++i) {
    const PlanDraft& d = plan.drafts[i];
    table_.draft(d.seq, d.level, d.depth, d.token, draft_logits ? &(*draft_logits)[i] : nullptr);
  }
  // Chunks whose logits are needed run in one Model::step, the others (inner prefill chunks nobody
  // reads the logits of) in a second one without the vocabulary projection.
  std::vector<model::StepChunk> with_logits, without_logits;
  std::vector<size_t> logit_chunk_idx;
  size_t offset = 0;
  for (size_t i = 0; i < plan.chunks.size(); ++i) {
    const PlanChunk& c = plan.chunks[i];
    const int64_t at = table_.has(c.seq) ? table_.position(c.seq) : 0;
    CHECK_EQ(at, c.start_pos) << "step " << plan.step_idx << ": sequence " << c.seq;
    const std::span<const int32_t> tokens(plan.tokens.data() + offset, size_t(c.num_tokens));
    offset += size_t(c.num_tokens);
    const model::StepChunk sc = table_.chunk(c.seq, tokens, c.want_logits == kLogitsAll, c.kind);
    if (c.want_logits) {
      with_logits.push_back(sc);
      logit_chunk_idx.push_back(i);
    } else {
      without_logits.push_back(sc);
    }
  }
  if (logits) logits->assign(plan.chunks.size(), {});
  if (!without_logits.empty()) model_.step(without_logits, nullptr);
  if (!with_logits.empty()) {
    std::vector<std::vector<float>> rows;
    model_.step(with_logits, logits ? &rows : nullptr);
    if (logits)
      for (size_t j = 0; j < rows.size(); ++j) (*logits)[logit_chunk_idx[j]] = std::move(rows[j]);
  }
  for (const PlanChunk& c : plan.chunks)  // collective MTP forwards, in chunk order on every rank
    if (c.kind == ChunkKind::kHidden) table_.after_step(c.seq);
  for (SeqId s : plan.releases) table_.release(s);
}

}  // namespace v4rt::runtime
