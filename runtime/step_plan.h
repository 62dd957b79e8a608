// SPDX-License-Identifier: MIT
// The one step plan of v4rt: what every rank of a job does in one step, as data. The leader
// (world rank 0) decides a StepPlan (the Scheduler for serve / batch / generate, the `logits`
// command itself), broadcasts its bytes over the PlanLink and every rank applies it to its own
// sequence states through its Executor, in this order:
//   resolves -> stores -> resumes -> drafts -> one Model::step over the chunks (then the tail
//   snapshots of chunks that end at a prefix point) -> frees -> releases
// Sequence ids are the only names the ranks share. The byte format is versioned and validated on
// receipt (deserialize_plan names the field at fault).
//
// A new op: its struct and vector here, its bytes in step_plan.cpp, its application in
// executor.cpp (docs/RUNTIME.md "Adding a plan op").
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace v4rt::runtime {

using SeqId = uint64_t;

// How a chunk enters its sequence.
enum class ChunkKind : uint8_t {
  kPlain = 0,   // Model::step alone
  kHidden = 1,  // a non-speculative chunk of a speculative sequence: its final streams feed the MTP block
  kVerify = 2,  // a verify chunk [next, d1..dk] (logits of every token; a later resolve keeps a prefix)
};

// The logits a chunk asks for (PlanChunk::want_logits).
constexpr uint8_t kLogitsNone = 0;  // an inner prefill chunk: no vocabulary projection at all
constexpr uint8_t kLogitsLast = 1;  // the chunk's last token (sampling)
constexpr uint8_t kLogitsAll = 2;   // every token of the chunk (`v4rt logits`, verify chunks)
constexpr uint8_t kSampleLast = 3;  // the chunk's next token is drawn on the device (PlanChunk::sample);
                                    // the leader gets its id and logprobs, no logits row

// How a kSampleLast chunk draws (kernels::SampleRow without the position, which is the chunk's
// end, and the draw index, 0): the request's settings.
struct PlanSample {
  uint64_t seed = 0;
  float temperature = 0.0f;  // <= 0: greedy
  float top_p = 1.0f;
  int32_t top_k = 0;         // <= 0: off
  int32_t n_logprobs = 0;    // top alternatives returned with the id
};

struct PlanChunk {
  SeqId seq = 0;
  int64_t start_pos = 0;    // tokens already in the sequence's state (checked by the executor)
  int32_t num_tokens = 0;   // this chunk's tokens in StepPlan::tokens, in chunk order
  uint8_t want_logits = kLogitsNone;
  ChunkKind kind = ChunkKind::kPlain;  // kVerify chunks want kLogitsAll
  // 1: the chunk ends at a prefix point (docs/PREFIX_CACHE.md): after the forward the executor
  // keeps a tail snapshot of the sequence at start_pos + num_tokens for a later PlanStore.
  uint8_t take_point = 0;
  PlanSample sample;                   // kSampleLast only
};

// The leader's verdict on a sequence's last verify chunk: keep its first `accepted` drafts.
struct PlanResolve {
  SeqId seq = 0;
  int32_t accepted = 0;
};

// Draft level `level` of `depth` of a speculative sequence; `token` is the decided next token
// (level 1) or the previous level's draft.
struct PlanDraft {
  SeqId seq = 0;
  int32_t level = 1;
  int32_t depth = 1;
  int32_t token = 0;
};

// Prefix cache (docs/PREFIX_CACHE.md). The leader's PrefixTree names points and blocks by id;
// every rank's PrefixStore holds their payloads.
//
// A new sequence `dst` resumed from a stored point: its tail is the point's snapshot, its entries
// come from `blocks` (covering [0, position); the last may be partial).
struct PlanResume {
  SeqId dst = 0;
  int64_t position = 0;
  uint64_t point = 0;
  std::vector<uint64_t> blocks;
};

struct PlanStorePoint {
  uint64_t id = 0;
  int64_t position = 0;  // the tail snapshot the sequence kept there (take_point) or, when it
                         // stands there now, a snapshot taken at once
};
struct PlanStoreBlock {
  uint64_t id = 0;
  int64_t index = 0;  // entries of tokens [index * block_tokens, end), extracted from `seq`
  int64_t end = 0;
};
// The payloads a PrefixTree::insert named, taken from sequence `seq` (which holds their entries);
// then the sequence's kept snapshots at positions <= `upto` are dropped.
struct PlanStore {
  SeqId seq = 0;
  int64_t upto = 0;
  int64_t block_tokens = 0;
  std::vector<PlanStorePoint> points;
  std::vector<PlanStoreBlock> blocks;
};

struct StepPlan {
  uint64_t step_idx = 0;
  std::vector<PlanResolve> resolves;  // applied first
  std::vector<PlanStore> stores;      // then prefix payloads stored (before any resume uses them)
  std::vector<PlanResume> resumes;    // then sequences resumed from prefix points
  std::vector<PlanDraft> drafts;      // then the draft levels (MTP block)
  std::vector<PlanChunk> chunks;      // then one forward over all chunks
  std::vector<int32_t> tokens;        // [sum of chunks' num_tokens]
  std::vector<uint64_t> frees;        // then prefix payloads dropped (evicted)
  std::vector<SeqId> releases;        // applied last: states freed
  uint8_t shutdown = 0;               // followers leave their loop

  // An empty plan is a heartbeat (PlanLink): followers answer it and run nothing.
  bool empty() const {
    return resolves.empty() && stores.empty() && resumes.empty() && drafts.empty() && chunks.empty() &&
           frees.empty() && releases.empty() && !shutdown;
  }
  int64_t num_tokens() const { return int64_t(tokens.size()); }
  // Appends a chunk of `tokens` for `seq` (whose state holds `start_pos` tokens).
  void add_chunk(SeqId seq, int64_t start_pos, std::span<const int32_t> chunk_tokens, uint8_t want_logits,
                 ChunkKind kind = ChunkKind::kPlain);
};

// Little-endian byte encoding (magic, version, counts, arrays).
std::vector<uint8_t> serialize_plan(const StepPlan& plan);
// Throws v4rt::Error naming the field when the bytes are truncated or inconsistent.
StepPlan deserialize_plan(std::span<const uint8_t> bytes);

}  // namespace v4rt::runtime
