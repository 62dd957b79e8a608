// SPDX-License-Identifier: MIT
// Resumable points (model/prefix_state.h): a sequence rebuilt at position p from the tail snapshot
// at p and the entries before p (from a state that went further, or from entry blocks) gives
// bit-for-bit the logits the original sequence gives, for points at a prompt end, a message
// boundary, every N tokens, and inside a CSA (ratio 4) and an HCA (ratio 128) compression block.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "model/prefix_state.h"
#include "model/presets.h"
#include "model/speculative.h"
#include "tests/model/test_mtp_util.h"

namespace v4rt::model {
namespace {

using testing::LoadedModel;
using testing::step_logits;
using testing::test_prompt;
using testing::tiny_config;

constexpr int64_t kVocab = 512;
constexpr int64_t kBlockTokens = 128;

LoadedModel& loaded() {
  static LoadedModel* m = new LoadedModel(tiny_config(kVocab), 7);
  return *m;
}

bool bit_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

std::vector<int32_t> slice(const std::vector<int32_t>& v, int64_t begin, int64_t end) {
  return std::vector<int32_t>(v.begin() + begin, v.begin() + end);
}

// Runs `tokens` from `seq` (at `from`) in chunks ending at every position of `cuts`, then decodes
// `decode` greedy tokens; returns every logit row of both parts, concatenated.
std::vector<float> continue_run(Model& m, SequenceState& seq, const std::vector<int32_t>& tokens, int64_t from,
                                std::vector<int64_t> cuts, int decode) {
  std::vector<float> out;
  cuts.push_back(int64_t(tokens.size()));
  int64_t pos = from;
  std::vector<float> last;
  for (int64_t cut : cuts) {
    if (cut <= pos || cut > int64_t(tokens.size())) continue;
    std::vector<float> lg = step_logits(m, seq, slice(tokens, pos, cut), /*all=*/true);
    out.insert(out.end(), lg.end() - (cut - pos) * kVocab, lg.end());
    last.assign(lg.end() - kVocab, lg.end());
    pos = cut;
  }
  for (int i = 0; i < decode; ++i) {
    const int32_t next = argmax(last);
    last = step_logits(m, seq, {next});
    out.insert(out.end(), last.begin(), last.end());
  }
  return out;
}

// A prompt of "messages": each ends with the boundary token 1 (never drawn by test_prompt).
struct Conversation {
  std::vector<int32_t> tokens;
  std::vector<int64_t> boundaries;  // positions right after a boundary token
};
Conversation conversation(const std::vector<int>& lengths, uint32_t salt) {
  Conversation c;
  for (size_t i = 0; i < lengths.size(); ++i) {
    const std::vector<int32_t> msg = test_prompt(kVocab, lengths[i], salt + uint32_t(i));
    c.tokens.insert(c.tokens.end(), msg.begin(), msg.end());
    c.tokens.push_back(1);
    c.boundaries.push_back(int64_t(c.tokens.size()));
  }
  return c;
}

constexpr int kDecode = 4;

// Computed once per prompt: the whole prompt in one chunk (every logit row) then kDecode greedy
// steps, and the entry blocks of that finished sequence.
struct Reference {
  std::vector<float> logits;              // [(L + kDecode) rows, vocab]
  std::unique_ptr<SequenceState> done;    // at L + kDecode - 1
  std::vector<EntryBlock> later;          // blocks of [0, L), the last one partial
  std::vector<float> from(int64_t p) const { return std::vector<float>(logits.begin() + p * kVocab, logits.end()); }
};
Reference reference(Model& m, const std::vector<int32_t>& tokens) {
  Reference r;
  r.done = m.new_sequence();
  r.logits = continue_run(m, *r.done, tokens, 0, {}, kDecode);
  const int64_t len = int64_t(tokens.size());
  for (int64_t k = 0; k * kBlockTokens < len; ++k)
    r.later.push_back(extract_block(m, *r.done, k, kBlockTokens, std::min<int64_t>((k + 1) * kBlockTokens, len)));
  return r;
}

// Takes a snapshot at p (the prompt run in chunks [0, p), [p, L)), then resumes at p from the
// state that went on, from entry blocks ending at p and from the reference's later blocks, and
// compares each continuation with the full recompute.
void check_point(int64_t p, const std::vector<int32_t>& tokens, const Reference& ref, const char* kind) {
  SCOPED_TRACE(std::string(kind) + " point at " + std::to_string(p));
  LoadedModel& lm = loaded();
  Model& m = *lm.model;
  const std::vector<float> want = ref.from(p);

  auto original = m.new_sequence();
  if (p > 0) step_logits(m, *original, slice(tokens, 0, p));
  const TailSnapshot tail = snapshot_tail(*original);
  EXPECT_EQ(tail.position, p);
  EXPECT_EQ(tail.bytes(), tail_snapshot_bytes(m.config(), p));
  // A block ending exactly at the point (the partial block a tree keeps with it).
  const int64_t last = p / kBlockTokens;
  const EntryBlock at_point = extract_block(m, *original, last, kBlockTokens, p);
  std::vector<EntryBlock> early;  // the full blocks before it
  for (int64_t k = 0; k < last; ++k) early.push_back(extract_block(m, *original, k, kBlockTokens, (k + 1) * kBlockTokens));
  const std::vector<float> got_original = continue_run(m, *original, tokens, p, {}, kDecode);
  EXPECT_TRUE(bit_equal(got_original, want)) << "chunked at the point vs one chunk";

  // From a state that went past the point (the original, now at the end of its decode).
  auto from_state = resume_from_state(m, *original, tail);
  EXPECT_EQ(from_state->position(), p);
  EXPECT_TRUE(bit_equal(continue_run(m, *from_state, tokens, p, {}, kDecode), want)) << "resumed from a state";

  // From blocks: the full ones, then the partial block ending at the point.
  std::vector<const EntryBlock*> blocks;
  for (const EntryBlock& b : early) blocks.push_back(&b);
  blocks.push_back(&at_point);
  auto from_blocks = resume_from_blocks(m, blocks, tail);
  EXPECT_TRUE(bit_equal(continue_run(m, *from_blocks, tokens, p, {p + 3, p + 70}, kDecode), want))
      << "resumed from blocks, continued in three chunks";

  // From blocks extracted after the sequence went on (the last one reaches past the point).
  std::vector<const EntryBlock*> later;
  for (const EntryBlock& b : ref.later) later.push_back(&b);
  auto from_later = resume_from_blocks(m, later, tail);
  EXPECT_TRUE(bit_equal(continue_run(m, *from_later, tokens, p, {}, kDecode), want)) << "resumed from later blocks";
}

TEST(PrefixState, EveryKindOfPointResumesExactly) {
  const Conversation c = conversation({40, 90, 60, 77}, 3);  // boundaries 41, 132, 193, 271
  const int64_t len = int64_t(c.tokens.size());
  ASSERT_EQ(len, 271);
  const Reference ref = reference(*loaded().model, c.tokens);
  check_point(len - 1, c.tokens, ref, "prompt end (before the last token)");
  check_point(c.boundaries[1], c.tokens, ref, "message boundary");
  check_point(c.boundaries[0], c.tokens, ref, "message boundary");
  check_point(64, c.tokens, ref, "every-N (N = 64)");
  check_point(256, c.tokens, ref, "every-N at an HCA entry end");
  check_point(37, c.tokens, ref, "mid CSA block");
  check_point(130, c.tokens, ref, "mid CSA and HCA block");
  check_point(200, c.tokens, ref, "mid HCA block");
  check_point(3, c.tokens, ref, "inside CSA's first block");
  check_point(0, c.tokens, ref, "empty");
}

// With the MTP block: the speculative tail (MTP window, the waiting streams) resumes with the main
// tail; the main logits and the next draft's logits equal the original's bit for bit.
TEST(PrefixState, SpeculativeTailResumesExactly) {
  LoadedModel lm(testing::tiny_mtp_config(kVocab), 5);
  Model& m = *lm.model;
  const std::vector<int32_t> tokens = test_prompt(kVocab, 230, 9);
  for (int64_t p : {int64_t(150), int64_t(229), int64_t(66)}) {
    SCOPED_TRACE("point at " + std::to_string(p));
    auto run_chunk = [&](SpeculativeSequence& s, int64_t begin, int64_t end) {
      const std::vector<int32_t> chunk = slice(tokens, begin, end);
      const StepChunk c = s.prompt_chunk(chunk, false);
      std::vector<std::vector<float>> out;
      m.step(std::span<const StepChunk>(&c, 1), &out);
      s.after_prompt_chunk();
      return out[0];
    };
    auto seq0 = m.new_sequence();
    SpeculativeSequence spec0(m, *lm.mtp, *seq0);
    run_chunk(spec0, 0, p);
    const TailSnapshot tail = snapshot_tail(*seq0);
    const SpeculativeTail spec_tail = spec0.snapshot();
    EXPECT_EQ(spec_tail.num_pending, 1);
    EXPECT_EQ(spec_tail.bytes, (std::min<int64_t>(p - 1, 127) * m.config().head_dim +
                                int64_t(m.config().hc_mult) * m.config().hidden_size) * 4);
    const std::vector<float> want = run_chunk(spec0, p, int64_t(tokens.size()));
    std::vector<float> want_draft;
    spec0.draft(1, 1, argmax(want), &want_draft);

    auto seq1 = resume_from_state(m, *seq0, tail);
    auto spec1 = SpeculativeSequence::resume(m, *lm.mtp, *seq1, spec_tail);
    const std::vector<float> got = run_chunk(*spec1, p, int64_t(tokens.size()));
    std::vector<float> got_draft;
    spec1->draft(1, 1, argmax(got), &got_draft);
    EXPECT_TRUE(bit_equal(got, want)) << "main logits";
    EXPECT_TRUE(bit_equal(got_draft, want_draft)) << "draft logits";
  }
}

// What a point costs next to what it saves, on the tiny model at 1,400 tokens (figures printed for
// docs/PREFIX_CACHE.md; nothing timed is asserted): the prefill, a snapshot, extracting the blocks,
// resuming from them, and the resumed request's one-token step.
TEST(PrefixState, CostOfAPoint) {
  LoadedModel& lm = loaded();
  Model& m = *lm.model;
  const std::vector<int32_t> tokens = test_prompt(kVocab, 1401, 12);
  using clock = std::chrono::steady_clock;
  auto ms = [](clock::time_point a, clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
  auto seq = m.new_sequence();
  const auto t0 = clock::now();
  step_logits(m, *seq, slice(tokens, 0, 1400));
  const auto t1 = clock::now();
  const TailSnapshot tail = snapshot_tail(*seq);
  const auto t2 = clock::now();
  std::vector<EntryBlock> blocks;
  for (int64_t k = 0; k * 256 < 1400; ++k) blocks.push_back(extract_block(m, *seq, k, 256, std::min<int64_t>((k + 1) * 256, 1400)));
  const auto t3 = clock::now();
  std::vector<const EntryBlock*> ptrs;
  int64_t block_bytes = 0;
  for (const EntryBlock& b : blocks) {
    ptrs.push_back(&b);
    block_bytes += b.bytes();
  }
  auto resumed = resume_from_blocks(m, ptrs, tail);
  const auto t4 = clock::now();
  const std::vector<float> got = step_logits(m, *resumed, slice(tokens, 1400, 1401));
  const auto t5 = clock::now();
  const std::vector<float> want = step_logits(m, *seq, slice(tokens, 1400, 1401));
  EXPECT_TRUE(bit_equal(got, want));
  std::printf("tiny, 1400 tokens: prefill %.1f ms; snapshot %.3f ms (%lld bytes); blocks %.3f ms (%lld bytes); "
              "resume %.3f ms; resumed step %.1f ms\n",
              ms(t0, t1), ms(t1, t2), (long long)tail.bytes(), ms(t2, t3), (long long)block_bytes, ms(t3, t4), ms(t4, t5));
}

TEST(PrefixState, OwnedBeforeCountsTheOwnedEntries) {
  for (int ranks : {1, 2, 3, 4}) {
    for (int rank = 0; rank < ranks; ++rank) {
      for (int64_t block : {1, 4, 64}) {
        EntryOwnership own{ranks, rank, block};
        int64_t count = 0;
        for (int64_t n = 0; n < 600; ++n) {
          ASSERT_EQ(own.owned_before(n), count) << ranks << " ranks, rank " << rank << ", block " << block << ", n " << n;
          count += own.owns(n) ? 1 : 0;
        }
      }
    }
  }
}

TEST(PrefixState, BlockBytesAndValidation) {
  const ModelConfig c = tiny_config(kVocab);
  // tiny: CSA layers 1, 3, 5 (128-wide entries + 64-wide indexer keys), HCA layers 2, 4.
  const EntryOwnership one;
  EXPECT_EQ(entry_block_bytes(c, one, 0, 128), int64_t(3 * 32 * (128 + 64) + 2 * 1 * 128) * 4);
  EXPECT_EQ(entry_block_bytes(c, one, 128, 130), 0);
  // SP 2 with ownership blocks of 4 entries: the rank holding the most (rank 0 holds entries 0-3, 8-11..).
  const EntryOwnership sp{2, 0, 4};
  EXPECT_EQ(entry_block_bytes(c, sp, 0, 40), int64_t(3 * 6 * (128 + 64)) * 4);
  testing::expect_error_naming([&] { validate_block_tokens(c, 96); }, {"96", "compress ratio 128"});
  testing::expect_error_naming([&] { validate_block_tokens(c, 0); }, {"0 tokens"});
  validate_block_tokens(c, 256);
}

// Snapshot sizes (F32 payload) for the tiny model and the Flash preset, from the config alone; the
// tiny figure is checked against a real snapshot in EveryKindOfPointResumesExactly.
TEST(PrefixState, SnapshotSizes) {
  const ModelConfig tiny = tiny_config(kVocab);
  const ModelConfig flash = preset_config("flash", true);
  for (const auto& [name, cfg] : {std::pair{"tiny", &tiny}, std::pair{"flash", &flash}}) {
    int64_t worst = 0;
    for (int64_t p = 128; p < 1024; ++p) worst = std::max(worst, tail_snapshot_bytes(*cfg, p));
    std::printf("%s: tail snapshot %lld bytes at p = 1024, %lld at p = 1151, worst %lld; full entry block of 256 "
                "tokens %lld bytes\n",
                name, (long long)tail_snapshot_bytes(*cfg, 1024), (long long)tail_snapshot_bytes(*cfg, 1151),
                (long long)worst, (long long)entry_block_bytes(*cfg, EntryOwnership{}, 0, 256));
    EXPECT_GT(worst, tail_snapshot_bytes(*cfg, 1024));
  }
  // Flash at a point 127 tokens into an HCA block: 43 windows of 127 x 512, 21 CSA layers with 7
  // rows of kv+score (1024 wide) and indexer rows (256 wide), 20 HCA layers with 127 rows (512 wide).
  EXPECT_EQ(tail_snapshot_bytes(flash, 1151),
            int64_t(43 * 127 * 512 + 21 * 2 * 7 * (1024 + 256) + 20 * 2 * 127 * 512) * 4);
}

}  // namespace
}  // namespace v4rt::model
