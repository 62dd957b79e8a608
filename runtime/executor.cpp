// SPDX-License-Identifier: MIT
// Executor: one StepPlan applied to this rank's sequence states (see executor.h).
#include "runtime/executor.h"

#include <glog/logging.h>

namespace v4rt::runtime {

namespace {

// The kernels' draw settings of a kSampleLast chunk: the token drawn is the one at the chunk's end.
kernels::SampleRow sample_row(const PlanChunk& c) {
  kernels::SampleRow row;
  row.seed = c.sample.seed;
  row.position = c.start_pos + c.num_tokens;
  row.temperature = c.sample.temperature;
  row.top_p = c.sample.top_p;
  row.top_k = c.sample.top_k;
  row.n_logprobs = c.sample.n_logprobs;
  return row;
}

}  // namespace

void Executor::run(const StepPlan& plan, std::vector<std::vector<float>>* logits,
                   std::vector<std::vector<float>>* draft_logits, std::vector<model::SampledToken>* sampled) {
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
  std::vector<kernels::SampleRow> rows;  // the device draws' settings; outlive the step
  rows.reserve(plan.chunks.size());
  if (sampled) sampled->assign(plan.chunks.size(), {});
  size_t offset = 0;
  for (size_t i = 0; i < plan.chunks.size(); ++i) {
    const PlanChunk& c = plan.chunks[i];
    const int64_t at = table_.has(c.seq) ? table_.position(c.seq) : 0;
    CHECK_EQ(at, c.start_pos) << "step " << plan.step_idx << ": sequence " << c.seq;
    const std::span<const int32_t> tokens(plan.tokens.data() + offset, size_t(c.num_tokens));
    offset += size_t(c.num_tokens);
    model::StepChunk sc = table_.chunk(c.seq, tokens, c.want_logits == kLogitsAll, c.kind);
    const bool draws = c.want_logits == kSampleLast && sampled;
    if (draws) {
      rows.push_back(sample_row(c));
      sc.sample = &rows.back();
      sc.sampled = &(*sampled)[i];
    }
    if (draws || (c.want_logits != kLogitsNone && c.want_logits != kSampleLast)) {
      with_logits.push_back(sc);
      logit_chunk_idx.push_back(i);
    } else {
      without_logits.push_back(sc);
    }
  }
  if (logits) logits->assign(plan.chunks.size(), {});
  if (!without_logits.empty()) model_.step(without_logits, nullptr);
  if (!with_logits.empty()) {
    std::vector<std::vector<float>> out;
    model_.step(with_logits, logits ? &out : nullptr);
    if (logits)
      for (size_t j = 0; j < out.size(); ++j) (*logits)[logit_chunk_idx[j]] = std::move(out[j]);
  }
  for (const PlanChunk& c : plan.chunks)  // collective MTP forwards, in chunk order on every rank
    if (c.kind == ChunkKind::kHidden) table_.after_step(c.seq);
  for (SeqId s : plan.releases) table_.release(s);
}

}  // namespace v4rt::runtime
