// SPDX-License-Identifier: MIT
// Output parser on malformed, partial and foreign DSML (docs/SERVING.md, "Malformed tool calls"):
// one named test per case, each run on the whole text and at every split (run_all_splits), where
// the shared runner also checks that no content or reasoning delta holds the ｜DSML｜ token and
// that every returned call's arguments are a JSON object. A call whose arguments cannot be read is
// never returned (never as {}); it is dropped with a warning naming it.
#include <gtest/gtest.h>

#include <string>

#include "common/check.h"
#include "model/text/json_format.h"
#include "model/text/output_parser.h"
#include "model/text/special_tokens.h"
#include "tests/text/output_parser_test_util.h"

namespace v4rt::model::text {
namespace {

using namespace v4rt::model::text::testing;

const std::string kParamCity = "<｜DSML｜parameter name=\"city\" string=\"true\">Lyon</｜DSML｜parameter>\n";
const std::string kInvokeWeather =
    "<｜DSML｜invoke name=\"get_weather\">\n" + kParamCity + "</｜DSML｜invoke>\n";
const std::string kBlockWeather = "<｜DSML｜tool_calls>\n" + kInvokeWeather + "</｜DSML｜tool_calls>";

void expect_one_weather_call(const Result& r) {
  ASSERT_EQ(r.parsed.tool_calls.size(), 1u) << r.message;
  EXPECT_EQ(r.parsed.tool_calls[0].name, "get_weather");
  EXPECT_EQ(r.parsed.tool_calls[0].arguments, R"({"city": "Lyon"})");
  EXPECT_EQ(r.parsed.finish_reason, "tool_calls");
  EXPECT_TRUE(r.parsed.warnings.empty()) << r.message;
}

// A dropped call: no tool_calls, finish_reason stop, one warning naming it.
void expect_dropped(const Result& r, const std::string& name, const std::string& why) {
  EXPECT_TRUE(r.parsed.tool_calls.empty()) << r.message;
  EXPECT_TRUE(r.starts.empty()) << "no tool-call delta for a dropped call";
  EXPECT_EQ(r.parsed.finish_reason, "stop");
  ASSERT_EQ(r.parsed.warnings.size(), 1u) << r.message;
  if (!name.empty()) {
    EXPECT_NE(r.parsed.warnings[0].find("\"" + name + "\""), std::string::npos) << r.parsed.warnings[0];
  }
  EXPECT_NE(r.parsed.warnings[0].find(why), std::string::npos) << r.parsed.warnings[0];
}

// ----- defect 1: DSML other than a well-formed tool_calls block ---------------------------------
TEST(OutputParserMalformed, BareInvokeWithoutWrapperIsACall) {
  const Result r = run_all_splits("Checking.\n\n" + kInvokeWeather + kEosS, options(false));
  EXPECT_EQ(r.parsed.content, "Checking.");
  expect_one_weather_call(r);
}

TEST(OutputParserMalformed, V32FunctionCallsWrapperIsABlock) {
  const Result r = run_all_splits(
      "Checking.\n\n<｜DSML｜function_calls>\n" + kInvokeWeather + "</｜DSML｜function_calls>" + kEosS,
      options(false));
  EXPECT_EQ(r.parsed.content, "Checking.");
  expect_one_weather_call(r);
}

TEST(OutputParserMalformed, MisspelledWrappersAreBlocks) {
  for (const std::string w : {"toolcalls", "tool_call", "tools", "tool_calls_begin"}) {
    SCOPED_TRACE(w);
    const Result r = run_all_splits("Checking.\n\n<｜DSML｜" + w + ">\n" + kInvokeWeather + "</｜DSML｜" + w +
                                        ">" + kEosS, options(false), false, 5);
    EXPECT_EQ(r.parsed.content, "Checking.");
    expect_one_weather_call(r);
  }
}

TEST(OutputParserMalformed, UnknownDsmlTagInProseEndsTheContent) {
  const Result r = run_all_splits("Hello <｜DSML｜test more text", options(false));
  EXPECT_EQ(r.parsed.content, "Hello ");
  EXPECT_TRUE(r.parsed.tool_calls.empty());
  EXPECT_EQ(r.parsed.finish_reason, "stop");
}

TEST(OutputParserMalformed, StreamEndingInsideAnOpener) {
  Result r = run_all_splits("Prose.\n<｜DSML｜invoke name=\"ba", options(false));
  EXPECT_EQ(r.parsed.content, "Prose.");
  EXPECT_TRUE(r.parsed.tool_calls.empty());
  ASSERT_EQ(r.parsed.warnings.size(), 1u) << "the started call is reported";
  for (const std::string tail : {"<", "<｜", "<｜DSML", "<｜DSML｜", "<｜DSML｜tool_", "</｜DSML｜param"}) {
    SCOPED_TRACE(tail);
    r = run_all_splits("Prose.\n\n" + tail, options(false));
    // A lone '<' or a partial token is plain text; a complete ｜DSML｜ token never is.
    if (tail.find(kDsml) == std::string::npos) {
      EXPECT_EQ(r.parsed.content, "Prose.\n\n" + tail);
    } else {
      EXPECT_EQ(r.parsed.content, tail[1] == '/' ? "Prose.\n\n" : "Prose.");
    }
  }
}

// Every prefix of a completion with calls: no DSML anywhere, and a call is returned only once
// its invoke has closed, with the arguments of the whole text.
TEST(OutputParserMalformed, EveryTruncationIsCleanAndNeverReturnsAPartialCall) {
  const std::string text = "Thinking.</think>Checking.\n\n<｜DSML｜tool_calls>\n" + kInvokeWeather +
                           "<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"n\" string=\"false\">"
                           "[1, 2]</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>" + kEosS;
  const Result full = run(text, options(true), {});
  ASSERT_EQ(full.parsed.tool_calls.size(), 2u);
  for (size_t n = 0; n <= text.size(); ++n) {
    if (n < text.size() && (static_cast<unsigned char>(text[n]) & 0xC0) == 0x80) continue;
    const Result r = run(text.substr(0, n), options(true), {}, /*length=*/true);
    for (size_t i = 0; i < r.parsed.tool_calls.size(); ++i)
      EXPECT_EQ(r.parsed.tool_calls[i].arguments, full.parsed.tool_calls[i].arguments) << "prefix " << n;
    // A cut before the block flushes what was held: the separator and a part of the token.
    const std::string& content = r.parsed.content;
    const std::string held = "\n\n<" + std::string(kDsml);
    const bool ok = full.parsed.content.starts_with(content) ||
                    (content.starts_with(full.parsed.content) &&
                     held.starts_with(content.substr(full.parsed.content.size())));
    EXPECT_TRUE(ok) << "prefix " << n << ": " << content;
  }
}

TEST(OutputParserMalformed, BareDsmlTokenAndForeignClosersRemovedFromText) {
  Result r = run_all_splits("a｜DSML｜b</｜DSML｜toolcalls>c</｜DSML｜function_calls>d" + kEosS, options(false));
  EXPECT_EQ(r.parsed.content, "abcd");
  r = run_all_splits("r｜DSML｜s</｜DSML｜invoke>t</think>answer" + kEosS, options(true));
  EXPECT_EQ(r.parsed.reasoning_content, "rst");
  EXPECT_EQ(r.parsed.content, "answer");
}

// Tag names are read up to 64 characters; a '>' right after a name of exactly that length goes
// with the tag whether or not the stream was split before it.
TEST(OutputParserMalformed, CloserWithANameAtTheLengthCapTakesItsBracket) {
  const std::string name(64, 'x');
  Result r = run_all_splits("a</｜DSML｜" + name + ">b" + kEosS, options(false));
  EXPECT_EQ(r.parsed.content, "ab");
  r = run_all_splits(kBlockWeather.substr(0, kBlockWeather.size() - std::string("</｜DSML｜tool_calls>").size()) +
                         "</｜DSML｜" + name + ">\n</｜DSML｜tool_calls>" + kEosS, options(false));
  expect_one_weather_call(r);
}

// Removing markup must not join the text around it into the token.
TEST(OutputParserMalformed, RemovedMarkupNeverJoinsIntoTheToken) {
  for (const std::string mid : {"</think>", "<think>", "｜DSML｜", "</｜DSML｜invoke>"}) {
    SCOPED_TRACE(mid);
    const Result r = run_all_splits("x｜DS" + mid + "ML｜y" + kEosS, options(false));
    EXPECT_EQ(r.parsed.content.find(kDsml), std::string::npos);
  }
  const Result r = run_all_splits("｜DS｜DSML｜ML｜DSML｜ML｜", options(false));
  EXPECT_EQ(r.parsed.content.find(kDsml), std::string::npos) << r.parsed.content;
}

TEST(OutputParserMalformed, ToolChoiceNoneNeverLeaksDsml) {
  const std::vector<std::string> samples = {
      "Answer.\n\n" + kBlockWeather + kEosS,
      "Answer.\n\n" + kInvokeWeather + kEosS,
      "Answer.<｜DSML｜function_calls>\n" + kInvokeWeather + "</｜DSML｜function_calls>",
      "Answer.<｜DSML｜toolcalls>" + kInvokeWeather,
      "Answer.\n<｜DSML｜invoke name=\"ba",
  };
  for (const std::string& s : samples) {
    SCOPED_TRACE(s);
    const Result r = run_all_splits(s, options(false, /*tools_enabled=*/false), false, 5);
    EXPECT_EQ(r.parsed.content, "Answer.");
    EXPECT_TRUE(r.parsed.tool_calls.empty());
    EXPECT_EQ(r.parsed.finish_reason, "stop");
    ASSERT_EQ(r.parsed.warnings.size(), 1u);
  }
  const Result r = run_all_splits("Answer.\n\n" + kBlockWeather + kEosS, options(false, false));
  expect_dropped(r, "get_weather", "tool calls are disabled");
}

// ----- defect 2: text inside a block that is not a parameter ------------------------------------
TEST(OutputParserMalformed, JsonObjectBodyRecoveredAsArguments) {
  const Result r = run_all_splits(
      "<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">{\"city\": \"Beijing\"}</｜DSML｜invoke>\n"
      "</｜DSML｜tool_calls>" + kEosS, options(false));
  EXPECT_EQ(r.parsed.content, "");
  ASSERT_EQ(r.parsed.tool_calls.size(), 1u);
  EXPECT_EQ(r.parsed.tool_calls[0].arguments, R"({"city": "Beijing"})");
  EXPECT_EQ(r.parsed.finish_reason, "tool_calls");
  // With layout whitespace and a '<' inside a string.
  const Result r2 = run_all_splits(
      "<｜DSML｜invoke name=\"calc\">\n  {\"expr\": \"a<b && c\", \"n\": [1]}\n</｜DSML｜invoke>" + kEosS,
      options(false));
  ASSERT_EQ(r2.parsed.tool_calls.size(), 1u);
  EXPECT_EQ(r2.parsed.tool_calls[0].arguments, R"({"expr": "a<b && c", "n": [1]})");
}

TEST(OutputParserMalformed, UnreadableBodyDropsTheCallNeverEmptyArguments) {
  for (const std::string body : {"city is Beijing", "[\"Beijing\"]", "{\"city\": ", "\"Beijing\""}) {
    SCOPED_TRACE(body);
    const Result r = run_all_splits("<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">" + body +
                                        "</｜DSML｜invoke>\n</｜DSML｜tool_calls>" + kEosS, options(false), false, 5);
    EXPECT_EQ(r.parsed.content, "");
    expect_dropped(r, "get_weather", "neither parameters nor a JSON object");
  }
}

TEST(OutputParserMalformed, TextBesideParametersDropsTheCall) {
  const Result r = run_all_splits("<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\nnote: " +
                                      kParamCity + "</｜DSML｜invoke>\n</｜DSML｜tool_calls>" + kEosS,
                                  options(false));
  EXPECT_EQ(r.parsed.content, "");
  expect_dropped(r, "get_weather", "text that is not a parameter");
}

// A NUL byte ends nlohmann's input, so `{"x": 1}\0\0` once read as JSON and went into the arguments
// verbatim, NULs and all: the arguments were then no JSON object. Such a value is not JSON.
TEST(OutputParserMalformed, NonStringValueWithANulByteIsSentAsAString) {
  const std::string raw = std::string("{\"x\": 1}") + '\0' + '\0';
  const Result r = run_all_splits("<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"v\" "
                                  "string=\"false\">" + raw + "</｜DSML｜parameter>\n</｜DSML｜invoke>\n"
                                  "</｜DSML｜tool_calls>" + kEosS, options(false));
  ASSERT_EQ(r.parsed.tool_calls.size(), 1u) << r.message;
  Json args;
  ASSERT_TRUE(json_try_parse(r.parsed.tool_calls[0].arguments, &args));
  EXPECT_EQ(args["v"].get<std::string>(), raw);
  EXPECT_FALSE(json_try_parse(raw, &args));
  EXPECT_THROW(json_parse(raw, "body"), v4rt::Error);
}

TEST(OutputParserMalformed, InvalidStringAttributeDropsTheCall) {
  const Result r = run_all_splits(
      "<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n<｜DSML｜parameter name=\"city\" "
      "string=\"maybe\">Lyon</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>" + kEosS,
      options(false));
  EXPECT_EQ(r.parsed.content, "");
  expect_dropped(r, "get_weather", "string=\"maybe\"");
}

TEST(OutputParserMalformed, ThinkingBlockWithTextInsideIsNotContent) {
  const Result r = run_all_splits("<think>reasoning<｜DSML｜tool_calls>call", options(true));
  EXPECT_EQ(r.parsed.reasoning_content, "reasoning");
  EXPECT_EQ(r.parsed.content, "");
  EXPECT_TRUE(r.parsed.tool_calls.empty());
}

// ----- defect 3: stray <think> ------------------------------------------------------------------
TEST(OutputParserMalformed, StrayThinkStartRemovedLikeStrayThinkEnd) {
  Result r = run_all_splits("a<think>b</think>c" + kEosS, options(false));
  EXPECT_EQ(r.parsed.content, "abc");
  r = run_all_splits("r</think>a<think>b</think>c" + kEosS, options(true));
  EXPECT_EQ(r.parsed.reasoning_content, "r");
  EXPECT_EQ(r.parsed.content, "abc");
}

// ----- other classes of malformed or partial DSML -----------------------------------------------
TEST(OutputParserMalformed, NestedWrappers) {
  const Result r = run_all_splits("<｜DSML｜tool_calls>\n<｜DSML｜tool_calls>\n" + kInvokeWeather +
                                      "</｜DSML｜tool_calls>\n</｜DSML｜tool_calls>" + kEosS, options(false));
  EXPECT_EQ(r.parsed.content, "");
  expect_one_weather_call(r);
}

TEST(OutputParserMalformed, DuplicatedBlockOpener) {
  const Result r = run_all_splits("Go.\n\n<｜DSML｜tool_calls><｜DSML｜tool_calls>\n" + kInvokeWeather +
                                      "</｜DSML｜tool_calls>" + kEosS, options(false));
  EXPECT_EQ(r.parsed.content, "Go.");
  expect_one_weather_call(r);
}

TEST(OutputParserMalformed, SeveralBlocks) {
  const Result r = run_all_splits(
      "Go.\n\n" + kBlockWeather + "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n\n</｜DSML｜invoke>\n"
      "</｜DSML｜tool_calls>" + kEosS, options(false));
  EXPECT_EQ(r.parsed.content, "Go.");
  ASSERT_EQ(r.parsed.tool_calls.size(), 2u);
  EXPECT_EQ(r.starts[0], "0:call_0:get_weather");
  EXPECT_EQ(r.starts[1], "1:call_1:f");
  EXPECT_EQ(r.parsed.tool_calls[1].arguments, "{}");
}

TEST(OutputParserMalformed, BlockInsideReasoning) {
  Result r = run_all_splits("Let me look it up.\n\n" + kBlockWeather + kEosS, options(true));
  EXPECT_EQ(r.parsed.reasoning_content, "Let me look it up.");
  EXPECT_EQ(r.parsed.content, "");
  expect_one_weather_call(r);
  // Reasoning that goes on after the block, then an answer: after a block only ⟨EOS⟩ or another
  // block may follow (§8.2 AFTER), so the rest is dropped, never shown as content.
  r = run_all_splits("Look up.\n\n" + kBlockWeather + "more thoughts</think>The answer." + kEosS, options(true));
  EXPECT_EQ(r.parsed.reasoning_content, "Look up.");
  EXPECT_EQ(r.parsed.content, "");
  expect_one_weather_call(r);
}

TEST(OutputParserMalformed, BlockFollowedByText) {
  const Result r = run_all_splits("Go.\n\n" + kBlockWeather + "\nDone, waiting for the result." + kEosS,
                                  options(false));
  EXPECT_EQ(r.parsed.content, "Go.");
  expect_one_weather_call(r);
}

TEST(OutputParserMalformed, UnknownTagsInsideInvokeDropTheCall) {
  const Result r = run_all_splits(
      "<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n<｜DSML｜argument name=\"city\">Lyon"
      "</｜DSML｜argument>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>" + kEosS, options(false));
  EXPECT_EQ(r.parsed.content, "");
  expect_dropped(r, "get_weather", "unknown tag 'argument'");
  // The next well-formed call in the same block still goes through, as index 0.
  const Result r2 = run_all_splits(
      "<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"bad\">\n<｜DSML｜item/>\n</｜DSML｜invoke>\n" +
      kInvokeWeather + "</｜DSML｜tool_calls>" + kEosS, options(false));
  expect_one_weather_call(Result{r2.message, "", "", {}, {}, [&] {
                                   ParsedMessage m = r2.parsed;
                                   m.warnings.clear();
                                   return m;
                                 }()});
  EXPECT_EQ(r2.starts[0], "0:call_0:get_weather");
  ASSERT_EQ(r2.parsed.warnings.size(), 1u);
  EXPECT_NE(r2.parsed.warnings[0].find("\"bad\""), std::string::npos);
}

TEST(OutputParserMalformed, ParameterWithoutANameDropsTheCall) {
  for (const std::string attrs : {"string=\"true\"", "name=\"\" string=\"true\""}) {
    SCOPED_TRACE(attrs);
    const Result r = run_all_splits("<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n"
                                    "<｜DSML｜parameter " + attrs + ">Lyon</｜DSML｜parameter>\n"
                                    "</｜DSML｜invoke>\n</｜DSML｜tool_calls>" + kEosS, options(false), false, 5);
    expect_dropped(r, "get_weather", "a parameter has no name");
  }
}

TEST(OutputParserMalformed, InvokeWithoutANameDropsTheCall) {
  const Result r = run_all_splits("<｜DSML｜tool_calls>\n<｜DSML｜invoke>\n" + kParamCity +
                                      "</｜DSML｜invoke>\n</｜DSML｜tool_calls>" + kEosS, options(false));
  expect_dropped(r, "", "no name");
}

TEST(OutputParserMalformed, DuplicateParameterDropsTheCall) {
  const Result r = run_all_splits("<｜DSML｜invoke name=\"get_weather\">\n" + kParamCity + kParamCity +
                                      "</｜DSML｜invoke>" + kEosS, options(false));
  expect_dropped(r, "get_weather", "appears twice");
}

TEST(OutputParserMalformed, UnclosedParameters) {
  // Closed implicitly by the invoke's closer, the next parameter or the block's closer: the
  // value is delimited, so the call stands.
  for (const std::string next : {"</｜DSML｜invoke>\n</｜DSML｜tool_calls>",
                                 "<｜DSML｜parameter name=\"days\" string=\"false\">2</｜DSML｜parameter>\n"
                                 "</｜DSML｜invoke>\n</｜DSML｜tool_calls>",
                                 "</｜DSML｜tool_calls>"}) {
    SCOPED_TRACE(next);
    const Result r = run_all_splits("<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n"
                                    "<｜DSML｜parameter name=\"city\" string=\"true\">Lyon" + next + kEosS,
                                    options(false), false, 5);
    ASSERT_EQ(r.parsed.tool_calls.size(), 1u);
    const Json args = json_parse(r.parsed.tool_calls[0].arguments, "arguments");
    EXPECT_EQ(args["city"], "Lyon");
  }
  // Ended by ⟨EOS⟩ or by the end of the stream: the call is incomplete and is dropped.
  Result r = run_all_splits("<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n"
                            "<｜DSML｜parameter name=\"city\" string=\"true\">Lyon" + kEosS, options(false));
  expect_dropped(r, "get_weather", "ended before the invoke was closed");
  r = run_all_splits("<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n"
                     "<｜DSML｜parameter name=\"city\" string=\"true\">Lyo", options(false), /*length=*/true);
  EXPECT_TRUE(r.parsed.tool_calls.empty());
  EXPECT_EQ(r.parsed.finish_reason, "length");
  ASSERT_EQ(r.parsed.warnings.size(), 1u);
  EXPECT_NE(r.parsed.warnings[0].find("token limit"), std::string::npos);
}

TEST(OutputParserMalformed, ParameterOutsideAnInvokeIsDropped) {
  const Result r = run_all_splits("Go.\n\n<｜DSML｜tool_calls>\n" + kParamCity + "</｜DSML｜tool_calls>" + kEosS,
                                  options(false));
  EXPECT_EQ(r.parsed.content, "Go.");
  EXPECT_TRUE(r.parsed.tool_calls.empty());
  EXPECT_EQ(r.parsed.finish_reason, "stop");
}

TEST(OutputParserMalformed, GoodCallThenBadCallKeepsTheGoodOne) {
  const Result r = run_all_splits("<｜DSML｜tool_calls>\n" + kInvokeWeather +
                                      "<｜DSML｜invoke name=\"get_time\">now</｜DSML｜invoke>\n</｜DSML｜tool_calls>" +
                                      kEosS, options(false));
  ASSERT_EQ(r.parsed.tool_calls.size(), 1u);
  EXPECT_EQ(r.parsed.finish_reason, "tool_calls");
  ASSERT_EQ(r.parsed.warnings.size(), 1u);
  EXPECT_NE(r.parsed.warnings[0].find("\"get_time\""), std::string::npos);
}

TEST(OutputParserMalformed, AttributeVariantsAreRead) {
  // Single quotes, swapped attributes, extra whitespace and a missing string attribute.
  const Result r = run_all_splits(
      "<｜DSML｜tool_calls>\n<｜DSML｜invoke  name='get_weather' >\n<｜DSML｜parameter string=\"true\" "
      "name=\"city\">Lyon</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>" + kEosS, options(false));
  expect_one_weather_call(r);
  const Result r2 = run_all_splits("<｜DSML｜invoke name=\"get_weather\">\n<｜DSML｜parameter name=\"city\">"
                                   "Lyon</｜DSML｜parameter>\n</｜DSML｜invoke>" + kEosS, options(false));
  expect_one_weather_call(r2);
}

}  // namespace
}  // namespace v4rt::model::text
