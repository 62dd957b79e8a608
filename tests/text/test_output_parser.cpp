// SPDX-License-Identifier: MIT
// Streaming output parser: the spec's parser cases (chat-format §13, 21-38), each run on the whole
// text, at every 2-way split point, one byte and one character at a time, and on random 6-way
// and token-sized splits, all required to give identical results; the assistant segments of the
// official test_output_1/2; and a fuzz test on random bytes and random markup fragments.
#include <gtest/gtest.h>

#include <fstream>
#include <random>
#include <sstream>

#include "model/text/json_format.h"
#include "model/text/output_parser.h"
#include "model/text/special_tokens.h"
#include "model/text/utf8.h"
#include "tests/text/output_parser_test_util.h"

namespace v4rt::model::text {
namespace {

using namespace v4rt::model::text::testing;

const std::string kExampleD =
    "The user wants weather and events.</think>Let me check both.\n\n<｜DSML｜tool_calls>\n"
    "<｜DSML｜invoke name=\"get_weather\">\n"
    "<｜DSML｜parameter name=\"city\" string=\"true\">Lyon</｜DSML｜parameter>\n"
    "</｜DSML｜invoke>\n<｜DSML｜invoke name=\"find_events\">\n"
    "<｜DSML｜parameter name=\"query\" string=\"true\">jazz \"live\"\nnear Part-Dieu</｜DSML｜parameter>\n"
    "<｜DSML｜parameter name=\"max_results\" string=\"false\">5</｜DSML｜parameter>\n"
    "<｜DSML｜parameter name=\"filters\" string=\"false\">{\"days\":[\"sat\"],\"free\":true}</｜DSML｜parameter>\n"
    "</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>";

TEST(OutputParser, Case21_ExampleD) {
  const Result r = run_all_splits(kExampleD, options(true));
  EXPECT_EQ(r.message,
            R"({"role": "assistant", "content": "Let me check both.", "reasoning_content": "The user wants weather and events.", "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Lyon\"}"}}, {"id": "call_1", "type": "function", "function": {"name": "find_events", "arguments": "{\"query\": \"jazz \\\"live\\\"\\nnear Part-Dieu\", \"max_results\": 5, \"filters\": {\"days\":[\"sat\"],\"free\":true}}"}}]} finish=tool_calls)");
  ASSERT_EQ(r.starts.size(), 2u);
  EXPECT_EQ(r.starts[0], "0:call_0:get_weather");
  EXPECT_EQ(r.starts[1], "1:call_1:find_events");
}

TEST(OutputParser, Case22_ContentOnlyChat) {
  const Result r = run_all_splits("Sure.\n\nThe answer is 4.\n" + kEosS, options(false));
  EXPECT_EQ(r.parsed.content, "Sure.\n\nThe answer is 4.\n");
  EXPECT_EQ(r.parsed.finish_reason, "stop");
  EXPECT_EQ(r.message.find("reasoning_content"), std::string::npos) << "absent in chat mode";
}

TEST(OutputParser, Case23_ReasoningVerbatim) {
  const Result r = run_all_splits("\nthink\n</think>\n\nanswer\n" + kEosS, options(true));
  EXPECT_EQ(r.parsed.reasoning_content, "\nthink\n");
  EXPECT_EQ(r.parsed.content, "\n\nanswer\n");
}

TEST(OutputParser, Case24_ZeroArgumentInvoke) {
  const Result r = run_all_splits(
      "</think>\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"ping\">\n\n</｜DSML｜invoke>\n"
      "</｜DSML｜tool_calls>" + kEosS, options(true));
  ASSERT_EQ(r.parsed.tool_calls.size(), 1u);
  EXPECT_EQ(r.parsed.tool_calls[0].arguments, "{}");
  EXPECT_EQ(r.parsed.content, "");
}

TEST(OutputParser, Case25_StringValueEscaping) {
  const std::string value = "say \"hi\" \\ then\nnew line < & 数学 é";
  const Result r = run_all_splits(
      "<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"s\" "
      "string=\"true\">" + value + "</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>" +
      kEosS, options(false));
  ASSERT_EQ(r.parsed.tool_calls.size(), 1u);
  EXPECT_EQ(r.parsed.tool_calls[0].arguments, "{\"s\": " + json_quote(value) + "}");
  const Json args = json_parse(r.parsed.tool_calls[0].arguments, "arguments");
  EXPECT_EQ(args["s"].get<std::string>(), value);
}

TEST(OutputParser, Case26_ValueEndingInAngleAtChunkBoundary) {
  for (const std::string v : {"a <", "a </", "x</｜DSML｜param", "2 <"}) {
    const std::string text = "<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter "
                             "name=\"v\" string=\"true\">" + v + "</｜DSML｜parameter>\n"
                             "</｜DSML｜invoke>\n</｜DSML｜tool_calls>" + kEosS;
    const Result r = run_all_splits(text, options(false), false, 10);
    ASSERT_EQ(r.parsed.tool_calls.size(), 1u) << v;
    EXPECT_EQ(json_parse(r.parsed.tool_calls[0].arguments, "a")["v"].get<std::string>(), v);
  }
  // Held-back text at the end of content is flushed (vLLM #41241).
  EXPECT_EQ(run_all_splits("1 < 2 <", options(false)).parsed.content, "1 < 2 <");
}

TEST(OutputParser, Case27_NonStringValueVerbatim) {
  const Result r = run_all_splits(
      "<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n"
      "<｜DSML｜parameter name=\"o\" string=\"false\">{\"a\":[1,{\"b\":null}]}</｜DSML｜parameter>\n"
      "<｜DSML｜parameter name=\"t\" string=\"false\">true</｜DSML｜parameter>\n"
      "<｜DSML｜parameter name=\"n\" string=\"false\">5</｜DSML｜parameter>\n"
      "<｜DSML｜parameter name=\"z\" string=\"false\">null</｜DSML｜parameter>\n"
      "<｜DSML｜parameter name=\"s\" string=\"true\">007</｜DSML｜parameter>\n"
      "</｜DSML｜invoke>\n</｜DSML｜tool_calls>" + kEosS, options(false));
  ASSERT_EQ(r.parsed.tool_calls.size(), 1u);
  EXPECT_EQ(r.parsed.tool_calls[0].arguments,
            R"({"o": {"a":[1,{"b":null}]}, "t": true, "n": 5, "z": null, "s": "007"})");
}

TEST(OutputParser, Case28_BlockWithoutThinkEnd) {
  const Result r = run_all_splits(
      "I should call.\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n"
      "<｜DSML｜parameter name=\"a\" string=\"true\">x</｜DSML｜parameter>\n</｜DSML｜invoke>\n"
      "</｜DSML｜tool_calls>" + kEosS, options(true));
  EXPECT_EQ(r.parsed.reasoning_content, "I should call.");
  ASSERT_EQ(r.parsed.tool_calls.size(), 1u);
  EXPECT_EQ(r.parsed.tool_calls[0].arguments, R"({"a": "x"})");
  EXPECT_EQ(r.parsed.finish_reason, "tool_calls");
}

TEST(OutputParser, Case29_NoSeparatorBeforeBlock) {
  const Result r = run_all_splits(
      "</think>Calling.<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n</｜DSML｜invoke>\n"
      "</｜DSML｜tool_calls>" + kEosS, options(true));
  EXPECT_EQ(r.parsed.content, "Calling.");
  ASSERT_EQ(r.parsed.tool_calls.size(), 1u);
}

TEST(OutputParser, Case30_StrayMarkersRemoved) {
  const Result r = run_all_splits("a</think>b</｜DSML｜parameter>c</｜DSML｜invoke>d" + kEosS,
                                  options(false));
  EXPECT_EQ(r.parsed.content, "abcd");
}

TEST(OutputParser, Case31_EmptyBlockKeepsContent) {
  const Result r = run_all_splits(
      "</think>Before.\n\n<｜DSML｜tool_calls>\n</｜DSML｜tool_calls>" + kEosS, options(true));
  EXPECT_EQ(r.parsed.content, "Before.");
  EXPECT_TRUE(r.parsed.tool_calls.empty());
  EXPECT_EQ(r.parsed.finish_reason, "stop");
}

TEST(OutputParser, Case32_TruncatedMidParameter) {
  const Result r = run_all_splits(
      "</think>Let me.\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n"
      "<｜DSML｜parameter name=\"a\" string=\"true\">partial va", options(true), /*length=*/true);
  EXPECT_EQ(r.parsed.content, "Let me.");
  EXPECT_TRUE(r.parsed.tool_calls.empty());
  EXPECT_EQ(r.parsed.finish_reason, "length");
  EXPECT_EQ(r.message.find("DSML"), std::string::npos);
}

TEST(OutputParser, Case33_MissingOuterEndTag) {
  const Result r = run_all_splits(
      "<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n</｜DSML｜invoke>\n"
      "<｜DSML｜invoke name=\"g\">\n<｜DSML｜parameter name=\"k\" string=\"false\">1</｜DSML｜"
      "parameter>\n</｜DSML｜invoke>\n" + kEosS, options(false));
  ASSERT_EQ(r.parsed.tool_calls.size(), 2u);
  EXPECT_EQ(r.parsed.tool_calls[1].arguments, R"({"k": 1})");
}

TEST(OutputParser, Case34_ArgumentsWrapperUnwrapped) {
  const std::string tools = R"([{"type":"function","function":{"name":"f","parameters":
      {"type":"object","properties":{"city":{"type":"string"}}}}},
      {"type":"function","function":{"name":"g","parameters":
      {"type":"object","properties":{"arguments":{"type":"object"}}}}}])";
  const std::string call =
      "<｜DSML｜parameter name=\"arguments\" string=\"false\">{\"city\":\"Lyon\"}</｜DSML｜"
      "parameter>\n</｜DSML｜invoke>\n";
  const Result r = run_all_splits("<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n" + call +
                                      "<｜DSML｜invoke name=\"g\">\n" + call +
                                      "</｜DSML｜tool_calls>" + kEosS,
                                  options(false, true, tools));
  ASSERT_EQ(r.parsed.tool_calls.size(), 2u);
  EXPECT_EQ(r.parsed.tool_calls[0].arguments, R"({"city":"Lyon"})");              // unwrapped
  EXPECT_EQ(r.parsed.tool_calls[1].arguments, R"({"arguments": {"city":"Lyon"}})");  // schema has it
}

TEST(OutputParser, Case35_ToolChoiceNoneDropsBlock) {
  const Result r = run_all_splits(
      "Answer.\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"a\" "
      "string=\"true\">x</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>" + kEosS,
      options(false, /*tools_enabled=*/false));
  EXPECT_EQ(r.parsed.content, "Answer.");
  EXPECT_TRUE(r.parsed.tool_calls.empty());
  EXPECT_TRUE(r.starts.empty());
  EXPECT_EQ(r.parsed.finish_reason, "stop");
}

TEST(OutputParser, Case36_TextAfterBlockDropped) {
  const Result r = run_all_splits(
      "<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>"
      "trailing words" + kEosS + "after eos", options(false));
  EXPECT_EQ(r.parsed.content, "");
  ASSERT_EQ(r.parsed.tool_calls.size(), 1u);
}

TEST(OutputParser, ReasoningOnlyAndMalformedMarkup) {
  Result r = run_all_splits("still thinking" + kEosS, options(true));
  EXPECT_EQ(r.parsed.reasoning_content, "still thinking");
  EXPECT_EQ(r.parsed.content, "");
  // Malformed block: unknown DSML tags and prose inside a block are dropped (§8.3 item 10).
  r = run_all_splits("</think>Hi.\n\n<｜DSML｜tool_calls>\nI cannot call tools here.\n"
                     "<｜DSML｜bogus x=1>\n</｜DSML｜tool_calls>" + kEosS, options(true));
  EXPECT_EQ(r.parsed.content, "Hi.");
  EXPECT_EQ(r.message.find("DSML"), std::string::npos);
  // A parameter opener before the previous closer: implicit close, no markup in the value.
  r = run_all_splits("<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter "
                     "name=\"a\" string=\"true\">x\n<｜DSML｜parameter name=\"b\" string=\"false\">2"
                     "</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>" + kEosS,
                     options(false));
  ASSERT_EQ(r.parsed.tool_calls.size(), 1u);
  EXPECT_EQ(r.parsed.tool_calls[0].arguments, "{\"a\": \"x\\n\", \"b\": 2}");
  // A string="false" value that is not JSON is sent as a JSON string.
  r = run_all_splits("<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter "
                     "name=\"a\" string=\"false\">not json</｜DSML｜parameter>\n</｜DSML｜invoke>\n"
                     "</｜DSML｜tool_calls>", options(false));
  ASSERT_EQ(r.parsed.tool_calls.size(), 1u);
  EXPECT_EQ(r.parsed.tool_calls[0].arguments, R"({"a": "not json"})");
}

// ----- §13 API cases handled by the parser ------------------------------------------------------
TEST(OutputParser, Case37_StreamedArgumentsEqualNonStreaming) {
  const Result whole = run(kExampleD, options(true), {});
  std::vector<size_t> bytes;
  for (size_t k = 1; k < kExampleD.size(); ++k) bytes.push_back(k);
  const Result streamed = run(kExampleD, options(true), bytes);
  ASSERT_EQ(streamed.args_delta.size(), whole.parsed.tool_calls.size());
  for (size_t i = 0; i < streamed.args_delta.size(); ++i)
    EXPECT_EQ(streamed.args_delta[i], whole.parsed.tool_calls[i].arguments);
}

TEST(OutputParser, Case38_ToolCallDeltaShape) {
  OutputParser p(options(true));
  std::vector<ParseEvent> ev;
  for (char c : kExampleD) p.feed(std::string_view(&c, 1), &ev);
  p.finish(false, &ev);
  int starts = 0;
  for (size_t i = 0; i < ev.size(); ++i) {
    if (ev[i].kind == ParseEvent::Kind::kToolCallStart) {
      EXPECT_EQ(ev[i].index, starts++);
      EXPECT_EQ(ev[i].id.rfind("call_", 0), 0u);
      EXPECT_EQ(ev[i].id.size(), 5u + 24u);
      EXPECT_FALSE(ev[i].name.empty());
      EXPECT_TRUE(ev[i].text.empty());
    } else if (ev[i].kind == ParseEvent::Kind::kToolCallArgs) {
      EXPECT_EQ(ev[i].index, starts - 1) << "arguments follow their own start";
      EXPECT_TRUE(ev[i].id.empty() && ev[i].name.empty());
    }
  }
  EXPECT_EQ(starts, 2);
  EXPECT_NE(p.message().tool_calls[0].id, p.message().tool_calls[1].id);
}

TEST(OutputParser, Case39_ReasoningContentPresence) {
  const Result thinking = run("r</think>c" + kEosS, options(true), {});
  EXPECT_EQ(thinking.reasoning_delta, "r");
  EXPECT_NE(thinking.message.find("\"reasoning_content\": \"r\""), std::string::npos);
  const Result chat = run("c" + kEosS, options(false), {});
  EXPECT_TRUE(chat.reasoning_delta.empty());
  EXPECT_EQ(chat.message.find("reasoning_content"), std::string::npos);
}

TEST(OutputParser, Case40_FinishReasons) {
  EXPECT_EQ(run(kExampleD, options(true), {}).parsed.finish_reason, "tool_calls");
  EXPECT_EQ(run("done" + kEosS, options(false), {}).parsed.finish_reason, "stop");
  EXPECT_EQ(run("cut sho", options(false), {}, /*length=*/true).parsed.finish_reason, "length");
}

// ----- official vectors: the assistant segments of test_output_1 and test_output_2 ------------
void check_official_segments(int n) {
  const std::string dir = std::string(V4RT_GOLDEN_DIR) + "/chat/official/";
  std::ifstream fo(dir + "test_output_" + std::to_string(n) + ".txt", std::ios::binary);
  std::stringstream so;
  so << fo.rdbuf();
  const std::string out = so.str();
  std::ifstream fi(dir + "test_input_" + std::to_string(n) + ".json", std::ios::binary);
  std::stringstream si;
  si << fi.rdbuf();
  Json input = json_parse(si.str(), "input");
  const Json messages = input.is_object() ? input["messages"] : input;
  std::vector<Json> assistants;
  for (const auto& m : messages)
    if (m["role"] == "assistant") assistants.push_back(m);
  size_t at = 0, k = 0;
  const std::string a(kAssistant);
  while ((at = out.find(a, at)) != std::string::npos) {
    at += a.size();
    const bool thinking = out.compare(at, kThinkStart.size(), kThinkStart) == 0;
    const size_t begin = at + (thinking ? kThinkStart.size() : kThinkEnd.size());
    const size_t end = out.find(kEosS, begin) + kEosS.size();
    const std::string segment = out.substr(begin, end - begin);
    ASSERT_LT(k, assistants.size());
    const Json& want = assistants[k++];
    const Result r = run_all_splits(segment, options(thinking), false, 10);
    if (thinking) {
      EXPECT_EQ(r.parsed.reasoning_content, want.value("reasoning_content", ""));
    }
    EXPECT_EQ(r.parsed.content, want.value("content", ""));
    const Json calls = want.value("tool_calls", Json::array());
    ASSERT_EQ(r.parsed.tool_calls.size(), calls.size());
    for (size_t c = 0; c < calls.size(); ++c) {
      EXPECT_EQ(r.parsed.tool_calls[c].name, calls[c]["function"]["name"].get<std::string>());
      EXPECT_EQ(r.parsed.tool_calls[c].arguments,
                calls[c]["function"]["arguments"].get<std::string>());
    }
  }
  EXPECT_EQ(k, assistants.size());
}

TEST(OutputParser, OfficialOutput1AssistantSegments) { check_official_segments(1); }
TEST(OutputParser, OfficialOutput2AssistantSegments) { check_official_segments(2); }

// ----- fuzz -------------------------------------------------------------------------------------
TEST(OutputParser, FuzzRandomBytesAndMarkup) {
  const std::vector<std::string> frags = {
      "<｜DSML｜tool_calls>", "</｜DSML｜tool_calls>", "<｜DSML｜invoke name=\"f\">",
      "</｜DSML｜invoke>", "<｜DSML｜parameter name=\"k\" string=\"true\">",
      "<｜DSML｜parameter name=\"n\" string=\"false\">", "</｜DSML｜parameter>", "</think>",
      "<think>", kEosS, "\n", "\n\n", " ", "<", "</", "<｜DSML｜", "｜", "\"", ">", "数学", "🤖",
      "text", "{\"a\":1}", "<｜DSML｜invoke name=\"", "string=\"false\">",
      // malformed and foreign DSML: other wrappers, bare tokens, pieces of the token
      "<｜DSML｜function_calls>", "</｜DSML｜function_calls>", "<｜DSML｜toolcalls>",
      "<｜DSML｜test ", "｜DSML｜", "｜DS", "ML｜", "｜D", "SML｜", "<｜DSML｜parameter string=\"true\">",
      "<｜DSML｜parameter name=\"m\" string=\"maybe\">", "<｜DSML｜arg name=\"x\">", "</｜DSML｜arg>",
      "{\"city\": \"Lyon\"}", "</｜DSML｜"};
  std::mt19937 rng(99);
  for (int iter = 0; iter < 1500; ++iter) {
    std::string text;
    const int n = 1 + rng() % 14;
    for (int i = 0; i < n; ++i) {
      if (rng() % 4 == 0) {
        const int len = 1 + rng() % 5;
        for (int b = 0; b < len; ++b) text.push_back(static_cast<char>(rng() % 256));
      } else {
        text += frags[rng() % frags.size()];
      }
    }
    const bool thinking = rng() % 2;
    const bool tools_enabled = rng() % 4 != 0;
    const Result whole = run(text, options(thinking, tools_enabled), {});
    check_deltas_consistent(whole);
    EXPECT_EQ(utf8_first_invalid(whole.parsed.content), std::string::npos);
    EXPECT_EQ(utf8_first_invalid(whole.parsed.reasoning_content), std::string::npos);
    for (const auto& tc : whole.parsed.tool_calls) {
      Json parsed;
      EXPECT_TRUE(json_try_parse(tc.arguments, &parsed) && parsed.is_object()) << tc.arguments;
    }
    for (int t = 0; t < 8; ++t) {
      std::vector<size_t> cuts;
      for (int c = 0; c < 5 && text.size() > 1; ++c) cuts.push_back(1 + rng() % (text.size() - 1));
      std::sort(cuts.begin(), cuts.end());
      const Result r = run(text, options(thinking, tools_enabled), cuts);
      ASSERT_TRUE(same(r, whole)) << "iteration " << iter << " split " << t << "\n" << r.message
                                  << "\n" << whole.message;
    }
  }
}

// Plain text (no marker characters) is never lost: it comes back verbatim.
TEST(OutputParser, FuzzPlainTextPreserved) {
  std::mt19937 rng(7);
  const std::string alphabet = "ab \n\t{}\"\\:,.数学🤖é";
  for (int iter = 0; iter < 200; ++iter) {
    std::string text;
    const int n = rng() % 40;
    for (int i = 0; i < n; ++i) {
      size_t pos = rng() % alphabet.size();
      while (pos > 0 && (static_cast<unsigned char>(alphabet[pos]) & 0xC0) == 0x80) --pos;
      text.append(alphabet, pos, utf8_char_len(static_cast<unsigned char>(alphabet[pos])));
    }
    const bool thinking = rng() % 2;
    const Result r = run(text, options(thinking), {});
    EXPECT_EQ(thinking ? r.parsed.reasoning_content : r.parsed.content, text);
  }
}

}  // namespace
}  // namespace v4rt::model::text
