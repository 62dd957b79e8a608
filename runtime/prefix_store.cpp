// SPDX-License-Identifier: MIT
// PrefixStore: the rank-local payloads behind the prefix tree's ids.
#include "runtime/prefix_store.h"

#include <vector>

#include "common/check.h"

namespace v4rt::runtime {

PrefixStore::PrefixStore(model::Model& model, int64_t block_tokens) : model_(model), block_tokens_(block_tokens) {
  model::validate_block_tokens(model.config(), block_tokens);
}

void PrefixStore::apply(const InsertResult& result, std::map<int64_t, model::TailSnapshot>& snapshots,
                        const model::SequenceState& sequence) {
  for (const PointSpec& p : result.points) {
    auto it = snapshots.find(p.position);
    CHECK(it != snapshots.end()) << "no tail snapshot taken at prefix point " << p.position;
    put_point(p.id, std::move(it->second), std::nullopt);
    snapshots.erase(it);
  }
  for (const BlockSpec& b : result.blocks) put_block(b.id, sequence, b.index, b.end);
  free(result.freed);
}

void PrefixStore::put_point(PrefixId id, model::TailSnapshot tail, std::optional<model::SpeculativeTail> speculative) {
  CHECK(!points_.count(id) && !blocks_.count(id)) << "prefix store already holds id " << id;
  bytes_ += tail.bytes();
  points_.emplace(id, std::move(tail));
  if (speculative) {
    bytes_ += speculative->bytes;
    speculative_.emplace(id, std::move(*speculative));
  }
}

void PrefixStore::put_block(PrefixId id, const model::SequenceState& sequence, int64_t index, int64_t end) {
  CHECK(!points_.count(id) && !blocks_.count(id)) << "prefix store already holds id " << id;
  model::EntryBlock block = model::extract_block(model_, sequence, index, block_tokens_, end);
  bytes_ += block.bytes();
  blocks_.emplace(id, std::move(block));
}

const model::SpeculativeTail* PrefixStore::speculative_tail(PrefixId point) const {
  auto it = speculative_.find(point);
  return it == speculative_.end() ? nullptr : &it->second;
}

void PrefixStore::free(std::span<const PrefixId> ids) {
  for (PrefixId id : ids) {
    if (auto p = points_.find(id); p != points_.end()) {
      bytes_ -= p->second.bytes();
      points_.erase(p);
      if (auto s = speculative_.find(id); s != speculative_.end()) {
        bytes_ -= s->second.bytes;
        speculative_.erase(s);
      }
    } else if (auto b = blocks_.find(id); b != blocks_.end()) {
      bytes_ -= b->second.bytes();
      blocks_.erase(b);
    } else {
      LOG(FATAL) << "prefix store holds no id " << id;
    }
  }
}

std::unique_ptr<model::SequenceState> PrefixStore::resume(const PrefixMatch& match) const {
  auto p = points_.find(match.point);
  CHECK(p != points_.end()) << "prefix store holds no point " << match.point;
  CHECK_EQ(p->second.position, match.position) << "prefix point " << match.point;
  std::vector<const model::EntryBlock*> blocks;
  for (PrefixId id : match.blocks) {
    auto b = blocks_.find(id);
    CHECK(b != blocks_.end()) << "prefix store holds no block " << id;
    blocks.push_back(&b->second);
  }
  return model::resume_from_blocks(model_, blocks, p->second);
}

void set_model_byte_sizes(PrefixTreeOptions& options, const model::ModelConfig& config,
                          const model::EntryOwnership& ownership, model::KvStorage storage) {
  options.point_bytes = [config](int64_t position) { return model::tail_snapshot_bytes(config, position); };
  options.block_bytes = [config, ownership, storage](int64_t begin, int64_t end) {
    return model::entry_block_bytes(config, ownership, begin, end, storage);
  };
}

}  // namespace v4rt::runtime
