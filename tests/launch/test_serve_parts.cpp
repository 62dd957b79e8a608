// SPDX-License-Identifier: MIT
// Serving building blocks without a model: StepPlan encoding (prefix-cache ops included), stop strings,
// request validation errors and the KV estimate.
#include <gtest/gtest.h>

#include <cmath>

#include "common/check.h"
#include "launch/serve/openai_api.h"
#include "launch/serve/output.h"
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
  p.stores = {{8, 300, 256, {{21, 299}}, {{22, 0, 256}, {23, 1, 299}}}};
  p.resumes = {{9, 100, 21, {22, 24}}};
  p.drafts = {{5, 2, 3, 17}};
  p.chunks = {{9, 100, 3, kLogitsAll, ChunkKind::kVerify, 0, {}},
              {11, 0, 2, kLogitsNone, ChunkKind::kHidden, 1, {}},
              {12, 40, 1, kSampleLast, ChunkKind::kPlain, 0, {0x1234567890ull, 0.7f, 0.9f, 40, 5}}};
  p.tokens = {5, 6, 7, 128803, 0, 9};
  p.frees = {30, 31, 32};
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
  ASSERT_EQ(q.stores.size(), 1u);
  EXPECT_EQ(q.stores[0].seq, 8u);
  EXPECT_EQ(q.stores[0].upto, 300);
  EXPECT_EQ(q.stores[0].block_tokens, 256);
  ASSERT_EQ(q.stores[0].points.size(), 1u);
  EXPECT_EQ(q.stores[0].points[0].id, 21u);
  EXPECT_EQ(q.stores[0].points[0].position, 299);
  ASSERT_EQ(q.stores[0].blocks.size(), 2u);
  EXPECT_EQ(q.stores[0].blocks[1].id, 23u);
  EXPECT_EQ(q.stores[0].blocks[1].index, 1);
  EXPECT_EQ(q.stores[0].blocks[1].end, 299);
  ASSERT_EQ(q.resumes.size(), 1u);
  EXPECT_EQ(q.resumes[0].dst, 9u);
  EXPECT_EQ(q.resumes[0].position, 100);
  EXPECT_EQ(q.resumes[0].point, 21u);
  EXPECT_EQ(q.resumes[0].blocks, (std::vector<uint64_t>{22, 24}));
  EXPECT_EQ(q.frees, p.frees);
  EXPECT_EQ(q.chunks[0].take_point, 0);
  EXPECT_EQ(q.chunks[1].take_point, 1);
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
  bytes[4] = 4;  // the version field: version 4 plans had no kSampleLast
  try {
    deserialize_plan(bytes);
    ADD_FAILURE() << "a version 4 plan was accepted";
  } catch (const v4rt::Error& e) {
    EXPECT_NE(std::string(e.what()).find("version 4"), std::string::npos) << e.what();
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

// Every prefix-cache op names what is wrong with it.
TEST(StepPlan, RejectsBadPrefixOps) {
  const auto rejects = [](const StepPlan& p, const std::string& words) {
    try {
      deserialize_plan(serialize_plan(p));
      ADD_FAILURE() << "accepted a plan that should fail with '" << words << "'";
    } catch (const v4rt::Error& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    }
  };
  StepPlan bad = sample_plan();
  bad.chunks[1].take_point = 2;
  rejects(bad, "take_point 2");
  bad = sample_plan();
  bad.stores[0].points[0].position = 301;  // past the store's upto
  rejects(bad, "point 21 at 301");
  bad = sample_plan();
  bad.stores[0].blocks[1].end = 513;  // block 1 of 256 tokens ends by 512
  rejects(bad, "block 23");
  bad = sample_plan();
  bad.stores[0].block_tokens = 0;
  rejects(bad, "blocks of 0 tokens");
  bad = sample_plan();
  bad.resumes[0].point = 0;
  rejects(bad, "resume of sequence 9");
  bad = sample_plan();
  bad.resumes[0].position = 0;
  rejects(bad, "resume of sequence 9 at 0");
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
