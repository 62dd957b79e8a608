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

size_t Executor::num_kept_points() const {
  size_t n = 0;
  for (const auto& [seq, points] : kept_) n += points.size();
  return n;
}

Executor::KeptPoint Executor::snapshot(SeqId seq) const {
  KeptPoint k{model::snapshot_tail(table_.state(seq)), std::nullopt};
  if (const model::SpeculativeSequence* spec = table_.speculative_or_null(seq)) k.speculative = spec->snapshot();
  return k;
}

// The payloads of one PrefixTree::insert. A point's snapshot is the one its take_point chunk kept
// or, for the end of a finished sequence (no chunk ends there), the sequence's tail now.
void Executor::store(const PlanStore& s) {
  if (!store_) store_ = std::make_unique<PrefixStore>(model_, s.block_tokens);
  CHECK_EQ(store_->block_tokens(), s.block_tokens) << "step plan: prefix store of sequence " << s.seq;
  std::map<int64_t, KeptPoint>& kept = kept_[s.seq];
  for (const PlanStorePoint& p : s.points) {
    auto it = kept.find(p.position);
    if (it != kept.end()) {
      store_->put_point(p.id, std::move(it->second.tail), std::move(it->second.speculative));
      kept.erase(it);
      continue;
    }
    CHECK_EQ(table_.position(s.seq), p.position) << "sequence " << s.seq << " kept no tail snapshot for prefix point "
                                                 << p.id;
    KeptPoint now = snapshot(s.seq);
    store_->put_point(p.id, std::move(now.tail), std::move(now.speculative));
  }
  for (const PlanStoreBlock& b : s.blocks) store_->put_block(b.id, table_.state(s.seq), b.index, b.end);
  kept.erase(kept.begin(), kept.upper_bound(s.upto));
  if (kept.empty()) kept_.erase(s.seq);
}

void Executor::resume(const PlanResume& r) {
  CHECK(store_) << "step plan: resume of sequence " << r.dst << " before any prefix point was stored";
  PrefixMatch m{r.position, r.point, r.blocks};
  table_.adopt(r.dst, store_->resume(m), store_->speculative_tail(r.point));
}

void Executor::run(const StepPlan& plan, std::vector<std::vector<float>>* logits,
                   std::vector<std::vector<float>>* draft_logits, std::vector<model::SampledToken>* sampled) {
  for (const PlanResolve& r : plan.resolves) table_.resolve(r.seq, r.accepted);
  for (const PlanStore& s : plan.stores) store(s);
  for (const PlanResume& r : plan.resumes) resume(r);
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
    // Grouped by the plan alone, so every rank runs the same Model::step batches (their
    // collectives line up); a follower's drawing chunks just skip the head.
    if (c.want_logits != kLogitsNone) {
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
  for (const PlanChunk& c : plan.chunks)
    if (c.take_point) kept_[c.seq].emplace(c.start_pos + c.num_tokens, snapshot(c.seq));
  if (!plan.frees.empty()) {
    CHECK(store_) << "step plan " << plan.step_idx << ": prefix frees before any store";
    store_->free(plan.frees);
  }
  for (SeqId s : plan.releases) {
    kept_.erase(s);
    table_.release(s);
  }
}

}  // namespace v4rt::runtime
