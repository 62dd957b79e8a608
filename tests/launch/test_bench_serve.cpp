// SPDX-License-Identifier: MIT
// `v4rt bench serve` without a server: seeded prompts and arrivals, the SSE reader on bytes cut
// anywhere, percentiles, and the level summary (every request counted once, failures by reason,
// TPOT / ITL arithmetic, throughputs per GPU) with its JSON line.
#include <gtest/gtest.h>

#include <cmath>

#include "launch/bench/bench_serve.h"

namespace v4rt::launch::bench_serve {
namespace {

TEST(BenchServePrompts, RandomIdsAreSeededAndInRange) {
  const auto a = random_prompts(5, 33, 7), b = random_prompts(5, 33, 7), c = random_prompts(5, 33, 8);
  ASSERT_EQ(a.size(), 5u);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_NE(a[0], a[1]);
  for (const auto& p : a) {
    ASSERT_EQ(p.size(), 33u);
    for (int32_t t : p) {
      EXPECT_GE(t, kFirstRandomId);
      EXPECT_LT(t, kEndRandomId);
    }
  }
}

TEST(BenchServePrompts, CorpusWindowsWrapAround) {
  const std::vector<int32_t> corpus{10, 11, 12};
  const auto p = corpus_prompts(corpus, 4, 5, 3);
  ASSERT_EQ(p.size(), 4u);
  for (const auto& w : p) {
    ASSERT_EQ(w.size(), 5u);
    for (size_t i = 1; i < w.size(); ++i) EXPECT_EQ(w[i], w[i - 1] == 12 ? 10 : w[i - 1] + 1);
  }
  EXPECT_THROW(corpus_prompts({}, 1, 5, 3), std::exception);
}

TEST(BenchServePrompts, ArrivalsAllAtOnceOrPoisson) {
  for (double t : arrival_times(4, INFINITY, 1)) EXPECT_EQ(t, 0.0);
  const auto a = arrival_times(2000, 50.0, 1);
  EXPECT_EQ(a, arrival_times(2000, 50.0, 1));
  EXPECT_EQ(a[0], 0.0);
  for (size_t i = 1; i < a.size(); ++i) EXPECT_GE(a[i], a[i - 1]);
  EXPECT_NEAR(a.back() / double(a.size() - 1), 1.0 / 50.0, 0.1 / 50.0);  // mean gap, 2000 draws
}

TEST(BenchServeSse, DataEventsFromBytesCutAnywhere) {
  const std::string stream =
      "data: {\"a\":1}\n\n: keepalive\n\ndata: {\"b\":2}\r\n\r\nevent: x\ndata:{\"c\":3}\n\ndata: [DONE]\n\n";
  const std::vector<std::string> want{"{\"a\":1}", "{\"b\":2}", "{\"c\":3}", "[DONE]"};
  for (size_t cut = 1; cut <= stream.size(); ++cut) {
    SseReader r;
    std::vector<std::string> got;
    for (size_t at = 0; at < stream.size(); at += cut)
      r.feed(std::string_view(stream).substr(at, cut), [&](std::string_view d) { got.emplace_back(d); });
    EXPECT_EQ(got, want) << "cut every " << cut << " bytes";
  }
}

TEST(BenchServeStats, PercentilesInterpolateLikeNumpy) {
  EXPECT_TRUE(std::isnan(percentile({}, 50)));
  EXPECT_DOUBLE_EQ(percentile({4, 1, 3, 2}, 50), 2.5);
  EXPECT_DOUBLE_EQ(percentile({1, 2, 3, 4}, 99), 3.97);
  EXPECT_DOUBLE_EQ(percentile({5}, 99), 5.0);
  const Percentiles p = percentiles_of({1, 2, 3, 4, 5});
  EXPECT_EQ(p.count, 5u);
  EXPECT_DOUBLE_EQ(p.mean, 3.0);
  EXPECT_DOUBLE_EQ(p.p50, 3.0);
  EXPECT_DOUBLE_EQ(p.max, 5.0);
}

TEST(BenchServeStats, SummaryCountsEveryRequestOnce) {
  std::vector<RequestResult> rs(6);
  for (int i = 0; i < 3; ++i) {  // completed: 10 prompt tokens, 5 output tokens, TTFT 0.1 s, 1.1 s in all
    rs[i].sent = rs[i].ok = true;
    rs[i].prompt_tokens = 10;
    rs[i].output_tokens = 5;
    rs[i].ttft_s = 0.1;
    rs[i].latency_s = 1.1;
    rs[i].itl_s = {0.25, 0.25, 0.25, 0.25};
  }
  rs[2].output_tokens = 4;  // one came back short
  rs[2].latency_s = 0.85;
  rs[2].itl_s = {0.25, 0.25, 0.25};
  rs[3].sent = true;
  rs[3].error = "HTTP 503: generation failed";
  rs[4].sent = true;
  rs[4].error = "HTTP 503: generation failed";
  // rs[5] never sent
  const LevelSummary s = summarize(rs, 2.0, 5, 2);
  EXPECT_EQ(s.num_prompts, 6);
  EXPECT_EQ(s.completed, 3);
  EXPECT_EQ(s.failed, 2);
  EXPECT_EQ(s.not_sent, 1);
  EXPECT_EQ(s.completed + s.failed + s.not_sent, s.num_prompts);
  ASSERT_EQ(s.errors.size(), 1u);
  EXPECT_EQ(s.errors.at("HTTP 503: generation failed"), 2);
  EXPECT_EQ(s.output_len_mismatch, 1);
  EXPECT_EQ(s.input_tokens, 30);
  EXPECT_EQ(s.output_tokens, 14);
  EXPECT_DOUBLE_EQ(s.request_throughput, 1.5);
  EXPECT_DOUBLE_EQ(s.input_tok_s, 15.0);
  EXPECT_DOUBLE_EQ(s.output_tok_s, 7.0);
  EXPECT_DOUBLE_EQ(s.total_tok_s, 22.0);
  EXPECT_EQ(s.ttft_ms.count, 3u);
  EXPECT_NEAR(s.ttft_ms.p50, 100.0, 1e-9);
  EXPECT_EQ(s.tpot_ms.count, 3u);
  EXPECT_NEAR(s.tpot_ms.p50, 250.0, 1e-9);  // (1.1 - 0.1) / 4 and (0.85 - 0.1) / 3
  EXPECT_NEAR(s.tpot_ms.max, 250.0, 1e-9);
  EXPECT_EQ(s.itl_ms.count, 11u);
  EXPECT_EQ(s.e2el_ms.count, 3u);

  RunInfo run;
  run.input_len = 10;
  run.output_len = 5;
  const nlohmann::json j = level_json(run, s);
  EXPECT_EQ(j["completed"], 3);
  EXPECT_EQ(j["failed"], 2);
  EXPECT_EQ(j["not_sent"], 1);
  EXPECT_EQ(j["errors"]["HTTP 503: generation failed"], 2);
  EXPECT_DOUBLE_EQ(j["total_tok_s_per_gpu"].get<double>(), 11.0);
  EXPECT_DOUBLE_EQ(j["output_tok_s_per_gpu"].get<double>(), 3.5);
  EXPECT_TRUE(j["request_rate"].is_number());
  EXPECT_FALSE(table_row(s).empty());
}

TEST(BenchServeStats, NonStreamedHasNoTtftAndEmptyLevelNoRates) {
  std::vector<RequestResult> rs(2);
  for (auto& r : rs) {
    r.sent = r.ok = true;
    r.prompt_tokens = 4;
    r.output_tokens = 2;
    r.latency_s = 0.5;
  }
  LevelSummary s = summarize(rs, 1.0, 2, 1);
  EXPECT_EQ(s.ttft_ms.count, 0u);
  EXPECT_EQ(s.tpot_ms.count, 0u);
  EXPECT_EQ(s.e2el_ms.count, 2u);
  s.request_rate = INFINITY;
  const nlohmann::json j = level_json(RunInfo{}, s);
  EXPECT_TRUE(j["ttft_p50_ms"].is_null());
  EXPECT_TRUE(j["request_rate"].is_null());
  const LevelSummary none = summarize({}, 0.0, 2, 1);
  EXPECT_EQ(none.num_prompts, 0);
  EXPECT_EQ(none.request_throughput, 0.0);
}

}  // namespace
}  // namespace v4rt::launch::bench_serve
