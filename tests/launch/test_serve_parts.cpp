// SPDX-License-Identifier: MIT
// Serving building blocks without a model: StepPlan encoding, the prefix cache, stop strings,
// request validation errors and the KV estimate.
#include <gtest/gtest.h>

#include <cmath>

#include "common/check.h"
#include "launch/serve/openai_api.h"
#include "launch/serve/output.h"
#include "runtime/prefix_cache.h"
#include "model/state.h"
#include "runtime/step_plan.h"
#include "model/presets.h"

namespace v4rt::launch::serve {
namespace {

using namespace v4rt::runtime;  // the scheduler, engine and step plans under test

StepPlan sample_plan() {
  StepPlan p;
  p.step_idx = 42;
  p.resolves = {{5, 2}};
  p.copies = {{7, 9}};
  p.drafts = {{5, 2, 3, 17}};
  p.chunks = {{9, 100, 3, kLogitsAll, ChunkKind::kVerify, {}},
              {11, 0, 2, kLogitsNone, ChunkKind::kHidden, {}},
              {12, 40, 1, kSampleLast, ChunkKind::kPlain, {0x1234567890ull, 0.7f, 0.9f, 40, 5}}};
  p.tokens = {5, 6, 7, 128803, 0, 9};
  p.releases = {3, 4};
  return p;
}

TEST(StepPlan, RoundTrip) {
  const StepPlan p = sample_plan();
  const std::vector<uint8_t> bytes = serialize_plan(p);
  const StepPlan q = deserialize_plan(bytes);
  EXPECT_EQ(q.step_idx, 42u);
  ASSERT_EQ(q.resolves.size(), 1u);
  EXPECT_EQ(q.resolves[0].seq, 5u);
  EXPECT_EQ(q.resolves[0].accepted, 2);
  ASSERT_EQ(q.drafts.size(), 1u);
  EXPECT_EQ(q.drafts[0].seq, 5u);
  EXPECT_EQ(q.drafts[0].level, 2);
  EXPECT_EQ(q.drafts[0].depth, 3);
  EXPECT_EQ(q.drafts[0].token, 17);
  ASSERT_EQ(q.copies.size(), 1u);
  EXPECT_EQ(q.copies[0].src, 7u);
  EXPECT_EQ(q.copies[0].dst, 9u);
  ASSERT_EQ(q.chunks.size(), 3u);
  EXPECT_EQ(q.chunks[0].seq, 9u);
  EXPECT_EQ(q.chunks[0].start_pos, 100);
  EXPECT_EQ(q.chunks[0].num_tokens, 3);
  EXPECT_EQ(q.chunks[0].want_logits, kLogitsAll);
  EXPECT_EQ(q.chunks[1].want_logits, 0);
  EXPECT_EQ(q.chunks[0].kind, ChunkKind::kVerify);
  EXPECT_EQ(q.chunks[1].kind, ChunkKind::kHidden);
  EXPECT_EQ(q.chunks[2].want_logits, kSampleLast);
  EXPECT_EQ(q.chunks[2].sample.seed, 0x1234567890ull);
  EXPECT_EQ(q.chunks[2].sample.temperature, 0.7f);
  EXPECT_EQ(q.chunks[2].sample.top_p, 0.9f);
  EXPECT_EQ(q.chunks[2].sample.top_k, 40);
  EXPECT_EQ(q.chunks[2].sample.n_logprobs, 5);
  EXPECT_EQ(q.tokens, p.tokens);
  EXPECT_EQ(q.releases, p.releases);
  EXPECT_EQ(q.shutdown, 0);
}

TEST(StepPlan, RejectsTruncatedAndInconsistent) {
  std::vector<uint8_t> bytes = serialize_plan(sample_plan());
  for (size_t cut : {size_t(3), size_t(20), bytes.size() - 1}) {
    std::vector<uint8_t> t(bytes.begin(), bytes.begin() + ptrdiff_t(cut));
    EXPECT_THROW(deserialize_plan(t), v4rt::Error) << "cut at " << cut;
  }
  StepPlan bad = sample_plan();
  bad.tokens.pop_back();  // chunks hold 5 tokens, 4 given
  EXPECT_THROW(deserialize_plan(serialize_plan(bad)), v4rt::Error);
  bytes.push_back(0);
  EXPECT_THROW(deserialize_plan(bytes), v4rt::Error);
  bad = sample_plan();
  bad.chunks[0].want_logits = 0;  // a verify chunk always returns its logits
  EXPECT_THROW(deserialize_plan(serialize_plan(bad)), v4rt::Error);
  bad = sample_plan();
  bad.chunks[0].want_logits = kLogitsLast;  // a verify chunk returns the logits of every token
  EXPECT_THROW(deserialize_plan(serialize_plan(bad)), v4rt::Error);
  bad = sample_plan();
  bad.chunks[1].want_logits = kSampleLast + 1;
  EXPECT_THROW(deserialize_plan(serialize_plan(bad)), v4rt::Error);
  for (const PlanSample s : {PlanSample{1, 0.7f, 0.0f, 0, 0}, PlanSample{1, 0.7f, 1.5f, 0, 0},
                             PlanSample{1, NAN, 1.0f, 0, 0}, PlanSample{1, 0.7f, 1.0f, 0, -1},
                             PlanSample{1, 0.7f, 1.0f, 0, 21}}) {
    bad = sample_plan();
    bad.chunks[2].sample = s;  // top_p outside (0, 1], a NaN temperature, logprobs outside [0, 20]
    EXPECT_THROW(deserialize_plan(serialize_plan(bad)), v4rt::Error) << s.top_p << " " << s.n_logprobs;
  }
  bad = sample_plan();
  bad.chunks[0].want_logits = kSampleLast;  // a verify chunk cannot draw on the device
  EXPECT_THROW(deserialize_plan(serialize_plan(bad)), v4rt::Error);
  bytes = serialize_plan(sample_plan());
  bytes[4] = 3;  // the version field: version 3 plans had no kSampleLast
  try {
    deserialize_plan(bytes);
    ADD_FAILURE() << "a version 3 plan was accepted";
  } catch (const v4rt::Error& e) {
    EXPECT_NE(std::string(e.what()).find("version 3"), std::string::npos) << e.what();
  }
  bad = sample_plan();
  bad.chunks[1].kind = ChunkKind(3);
  EXPECT_THROW(deserialize_plan(serialize_plan(bad)), v4rt::Error);
  bad = sample_plan();
  bad.drafts[0].level = 4;  // beyond its depth of 3
  EXPECT_THROW(deserialize_plan(serialize_plan(bad)), v4rt::Error);
  bad = sample_plan();
  bad.resolves[0].accepted = -1;
  EXPECT_THROW(deserialize_plan(serialize_plan(bad)), v4rt::Error);
}

TEST(PrefixCache, LongestProperPrefixAndLru) {
  PrefixCache c;
  c.insert({1, {1, 2, 3}, 30});
  c.insert({2, {9, 9}, 20});
  c.insert({3, {1, 2, 3, 4, 5}, 50});  // supersedes entry 1
  EXPECT_EQ(c.size(), 2u);
  EXPECT_EQ(c.bytes(), 70);
  const std::vector<int32_t> prompt{1, 2, 3, 4, 5, 6};
  const CacheEntry* hit = c.match(prompt);
  ASSERT_NE(hit, nullptr);
  EXPECT_EQ(hit->seq, 3u);
  // An entry equal to the whole prompt leaves nothing to compute: no match.
  const std::vector<int32_t> same{1, 2, 3, 4, 5};
  EXPECT_EQ(c.match(same), nullptr);
  const std::vector<int32_t> other{1, 2, 4, 4, 5, 6};
  EXPECT_EQ(c.match(other), nullptr);
  // Entry 3 was used last, so entry 2 goes first; `keep` protects an entry.
  int64_t freed = 0;
  EXPECT_EQ(c.evict_lru(2, &freed).value(), 3u);
  EXPECT_EQ(freed, 50);
  EXPECT_EQ(c.evict_lru().value(), 2u);
  EXPECT_FALSE(c.evict_lru().has_value());
  EXPECT_EQ(c.bytes(), 0);
}

TEST(StopFilter, HoldsBackPrefixesAndCutsAtMatch) {
  StopFilter f({"END", "xyz"});
  std::string out = f.feed("hello E");
  EXPECT_EQ(out, "hello ");  // "E" may start END
  out += f.feed("N");
  EXPECT_EQ(out, "hello ");
  out += f.feed("Dtrailing");
  EXPECT_EQ(out, "hello ");
  EXPECT_TRUE(f.stopped());
  EXPECT_EQ(f.feed("more"), "");

  StopFilter g({"END"});
  std::string o = g.feed("abc EN");
  o += g.feed("x");
  o += g.flush();
  EXPECT_EQ(o, "abc ENx");
  EXPECT_FALSE(g.stopped());
}

// A dropped tool call is reported in the choice's `warning`; the delta itself stays empty.
TEST(ChunkJson, WarningDeltaGoesToTheChoice) {
  ResponseMeta meta{"chatcmpl-1", 1, "tiny", true};
  Delta d;
  d.kind = Delta::Kind::kWarning;
  d.text = "tool call \"f\" was dropped: its body is neither parameters nor a JSON object";
  const text_json j = chunk_json(meta, &d, "", nullptr);
  const text_json& choice = j["choices"][0];
  EXPECT_EQ(choice["warning"], d.text);
  EXPECT_TRUE(choice["delta"].is_object() && choice["delta"].empty());
  EXPECT_TRUE(choice["finish_reason"].is_null());
}

TEST(KvEstimate, GrowsWithTokensAndCountsEveryLayer) {
  const model::ModelConfig c = model::preset_config("tiny");
  const int64_t a = model::state_bytes(c, 10), b = model::state_bytes(c, 1000), d = model::state_bytes(c, 100000);
  EXPECT_GT(a, 0);
  EXPECT_GT(b, a);
  EXPECT_GT(d, b);
  // Past the window only compressed entries grow: 1/4 of tokens on CSA layers (+ indexer keys),
  // 1/128 on HCA layers, 4 bytes each.
  int64_t per_token_x128 = 0;
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const int r = c.compress_ratio(l);
    if (r == 4) per_token_x128 += 32 * (c.head_dim + c.index_head_dim);
    if (r == 128) per_token_x128 += c.head_dim;
  }
  EXPECT_EQ(model::state_bytes(c, 128 * 1000 + 128) - model::state_bytes(c, 128), per_token_x128 * 1000 * 4);
}

}  // namespace
}  // namespace v4rt::launch::serve
