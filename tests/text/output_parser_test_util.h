// SPDX-License-Identifier: MIT
// Shared by the output-parser tests: runs a completion through OutputParser under a given
// chunking and collects the final message and the streamed deltas, and checks, for every run,
// the properties that hold for any input: the deltas add up to the message, no content or
// reasoning delta holds the ｜DSML｜ token, tool arguments are JSON objects, and every chunking
// (whole, every 2-way split, byte and character at a time, random 6-way and token-sized) gives
// the same result.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "model/text/json_format.h"
#include "model/text/output_parser.h"
#include "model/text/special_tokens.h"

namespace v4rt::model::text::testing {

inline const std::string kEosS(kEos);

struct Result {
  std::string message;          // final message JSON (deterministic ids) + finish_reason + warnings
  std::string reasoning_delta;  // concatenated reasoning events
  std::string content_delta;
  std::vector<std::string> starts;     // "index:id:name" per start event
  std::vector<std::string> args_delta; // per call index: concatenated argument fragments
  ParsedMessage parsed;
};

inline ParserOptions options(bool thinking, bool tools_enabled = true,
                             const std::string& tools = "null") {
  ParserOptions o;
  o.thinking = thinking;
  o.tool_calls_enabled = tools_enabled;
  o.tools = json_parse(tools, "tools");
  return o;
}

inline Result run(const std::string& text, ParserOptions o, const std::vector<size_t>& cuts,
                  bool length = false) {
  int next_id = 0;
  o.make_id = [&next_id] { return "call_" + std::to_string(next_id++); };
  OutputParser p(o);
  std::vector<ParseEvent> ev;
  size_t prev = 0;
  for (size_t c : cuts) {
    p.feed(std::string_view(text).substr(prev, c - prev), &ev);
    prev = c;
  }
  p.feed(std::string_view(text).substr(prev), &ev);
  p.finish(length, &ev);
  Result r;
  r.parsed = p.message();
  r.message = json_dumps(p.message().to_json()) + " finish=" + p.message().finish_reason;
  for (const auto& w : p.message().warnings) r.message += " warning=" + w;
  for (const auto& e : ev) {
    switch (e.kind) {
      case ParseEvent::Kind::kReasoning:
      case ParseEvent::Kind::kContent:
        EXPECT_EQ(e.text.find(kDsml), std::string::npos)
            << "raw DSML in a " << (e.kind == ParseEvent::Kind::kContent ? "content" : "reasoning")
            << " delta: " << e.text;
        (e.kind == ParseEvent::Kind::kContent ? r.content_delta : r.reasoning_delta) += e.text;
        break;
      case ParseEvent::Kind::kToolCallStart:
        EXPECT_EQ(e.index, static_cast<int>(r.starts.size())) << "indices are 0, 1, ...";
        r.starts.push_back(std::to_string(e.index) + ":" + e.id + ":" + e.name);
        r.args_delta.emplace_back();
        break;
      case ParseEvent::Kind::kToolCallArgs:
        EXPECT_TRUE(e.id.empty() && e.name.empty()) << "later deltas carry only arguments";
        EXPECT_LT(e.index, static_cast<int>(r.args_delta.size()));
        if (e.index < static_cast<int>(r.args_delta.size())) r.args_delta[e.index] += e.text;
        break;
    }
  }
  EXPECT_EQ(r.parsed.content.find(kDsml), std::string::npos) << "raw DSML in content";
  EXPECT_EQ(r.parsed.reasoning_content.find(kDsml), std::string::npos) << "raw DSML in reasoning";
  for (const auto& tc : r.parsed.tool_calls) {
    Json args;
    EXPECT_TRUE(json_try_parse(tc.arguments, &args) && args.is_object()) << tc.arguments;
  }
  return r;
}

// The deltas must add up to the final message (case 37 and §9.3).
inline void check_deltas_consistent(const Result& r) {
  EXPECT_EQ(r.reasoning_delta, r.parsed.reasoning_content);
  EXPECT_EQ(r.content_delta, r.parsed.content);
  EXPECT_EQ(r.starts.size(), r.parsed.tool_calls.size()) << "a start event per returned call";
  for (const auto& tc : r.parsed.tool_calls) {
    bool found = false;
    for (size_t i = 0; i < r.starts.size(); ++i) {
      if (r.starts[i].find(":" + tc.id + ":") != std::string::npos) {
        EXPECT_EQ(r.args_delta[i], tc.arguments) << "streamed arguments of " << tc.name;
        found = true;
      }
    }
    EXPECT_TRUE(found) << "no start event for " << tc.id;
  }
}

inline bool same(const Result& a, const Result& b) {
  return a.message == b.message && a.reasoning_delta == b.reasoning_delta &&
         a.content_delta == b.content_delta && a.starts == b.starts && a.args_delta == b.args_delta;
}

// Runs `text` whole, at every 2-way split, byte by byte, char by char, random 6-way splits and
// random token-sized chunks; all must agree. Returns the whole-text result.
inline Result run_all_splits(const std::string& text, const ParserOptions& o, bool length = false,
                             int random_trials = 60) {
  const Result whole = run(text, o, {}, length);
  check_deltas_consistent(whole);
  for (size_t k = 1; k < text.size(); ++k) {
    const Result r = run(text, o, {k}, length);
    EXPECT_TRUE(same(r, whole)) << "2-way split at " << k << "\n" << r.message << "\n" << whole.message;
    if (!same(r, whole)) return whole;
  }
  std::vector<size_t> bytes, chars;
  for (size_t k = 1; k < text.size(); ++k) {
    bytes.push_back(k);
    if ((static_cast<unsigned char>(text[k]) & 0xC0) != 0x80) chars.push_back(k);
  }
  EXPECT_TRUE(same(run(text, o, bytes, length), whole)) << "byte by byte";
  EXPECT_TRUE(same(run(text, o, chars, length), whole)) << "char by char";
  std::mt19937 rng(static_cast<uint32_t>(text.size()));
  for (int t = 0; t < random_trials && text.size() > 6; ++t) {
    std::vector<size_t> cuts;
    for (int c = 0; c < 5; ++c) cuts.push_back(1 + rng() % (text.size() - 1));
    std::sort(cuts.begin(), cuts.end());
    EXPECT_TRUE(same(run(text, o, cuts, length), whole)) << "6-way split " << t;
    std::vector<size_t> tokens;  // token-sized chunks: 1-6 bytes
    for (size_t at = 1 + rng() % 6; at < text.size(); at += 1 + rng() % 6) tokens.push_back(at);
    EXPECT_TRUE(same(run(text, o, tokens, length), whole)) << "token-sized chunks " << t;
  }
  return whole;
}

}  // namespace v4rt::model::text::testing
