// SPDX-License-Identifier: MIT
// Fuzz targets for the text path: tokenizer encode/decode, the chat encoder on arbitrary JSON
// messages, and the streaming DSML/reasoning parser under random chunkings.
// Properties: decode(encode(text)) == text for valid UTF-8; decoding arbitrary ids either works or
// throws v4rt::Error; a rendered prompt tokenizes; the parser's result does not depend on how the
// text was chunked, its deltas add up to the final message, its text is valid UTF-8, no content or
// reasoning delta holds the ｜DSML｜ token, and its tool arguments are JSON objects.
#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

#include "common/check.h"
#include "model/text/chat_encoder.h"
#include "model/text/json_format.h"
#include "model/text/output_parser.h"
#include "model/text/special_tokens.h"
#include "model/text/tokenizer.h"
#include "model/text/utf8.h"
#include "tests/fuzz/fuzz_targets.h"

namespace v4rt::fuzz {

using model::text::Json;

namespace {

uint32_t hash_bytes(const uint8_t* data, size_t size) {
  uint32_t h = 2166136261u;  // FNV-1a: a deterministic seed for the chunkings
  for (size_t i = 0; i < size; ++i) h = (h ^ data[i]) * 16777619u;
  return h;
}

}  // namespace

// ----- tokenizer -----------------------------------------------------------------------------

void fuzz_tokenizer(const uint8_t* data, size_t size) {
  const model::text::Tokenizer* tok = shared_tokenizer();
  if (tok == nullptr || size == 0) return;
  const uint8_t mode = data[0] % 4;
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  if (mode == 0 || mode == 1) {  // encode (specials off / on), then decode back
    std::vector<int32_t> ids;
    try {
      ids = tok->encode(text, mode == 1);
    } catch (const v4rt::Error&) {
      V4RT_FUZZ_REQUIRE(model::text::utf8_first_invalid(text) != std::string::npos,
                        "encode rejects only invalid UTF-8");
      return;
    }
    for (int32_t id : ids) V4RT_FUZZ_REQUIRE(id >= 0 && id < tok->vocab_size(), "ids inside the vocabulary");
    V4RT_FUZZ_REQUIRE(tok->decode(ids) == text, "decode(encode(text)) == text");
  } else if (mode == 2) {  // arbitrary ids: decode works or names the bad id
    std::vector<int32_t> ids(text.size() / 4);
    if (!ids.empty()) std::memcpy(ids.data(), text.data(), ids.size() * 4);
    bool in_range = true;
    for (int32_t id : ids) in_range &= id >= 0 && id < tok->vocab_size();
    try {
      std::string bytes = tok->decode(ids);
      (void)bytes;
      V4RT_FUZZ_REQUIRE(in_range, "decode rejects ids outside the vocabulary");
    } catch (const v4rt::Error&) {
      V4RT_FUZZ_REQUIRE(!in_range, "decode accepts every id inside the vocabulary");
    }
  } else {  // two spans, trusted or not: special tokens only from trusted text
    const size_t cut = text.empty() ? 0 : size_t(data[0] >> 2) % (text.size() + 1);
    const model::text::TextSpan spans[2] = {{text.substr(0, cut), (data[0] & 0x40) != 0},
                                            {text.substr(cut), (data[0] & 0x80) != 0}};
    std::vector<int32_t> ids;
    try {
      ids = tok->encode_spans(spans);
    } catch (const v4rt::Error&) {
      return;
    }
    V4RT_FUZZ_REQUIRE(tok->decode(ids) == text, "decode(encode_spans(spans)) == joined text");
    for (size_t i = 0; i < 2; ++i) {
      // An untrusted span on its own never yields a control token (the cut may split a UTF-8
      // character, which the tokenizer must refuse with an Error).
      if (spans[i].trusted || model::text::utf8_first_invalid(spans[i].text) != std::string::npos) continue;
      for (int32_t id : tok->encode_spans(std::span<const model::text::TextSpan>(&spans[i], 1)))
        V4RT_FUZZ_REQUIRE(!tok->is_special(id), "untrusted text gives no special token");
    }
  }
}

// ----- chat encoder --------------------------------------------------------------------------

void fuzz_chat_encoder(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  Json input;
  if (!model::text::json_try_parse(text, &input)) return;
  Json messages = input;
  Json tools = nullptr;
  if (input.is_object()) {
    messages = input.contains("messages") ? input["messages"] : Json();
    if (input.contains("tools")) tools = input["tools"];
  }
  const uint32_t h = hash_bytes(data, size);
  for (int variant = 0; variant < 2; ++variant) {
    model::text::ChatOptions opt;
    opt.thinking = ((h >> variant) & 1) != 0;
    opt.drop_thinking = ((h >> (2 + variant)) & 1) != 0;
    opt.effort = model::text::EffortPrefix((h >> (4 + 2 * variant)) % 3);
    opt.add_bos = variant == 0;
    model::text::ChatPrompt prompt;
    try {
      prompt = model::text::chat_encode(messages, tools, opt);
    } catch (const v4rt::Error&) {
      continue;
    }
    const std::string joined = prompt.text();
    std::string pieces;
    for (const auto& p : prompt.pieces) pieces += p.text;
    V4RT_FUZZ_REQUIRE(pieces == joined, "prompt text is the concatenation of its pieces");
    const model::text::Tokenizer* tok = shared_tokenizer();
    if (tok == nullptr || variant != 0) continue;
    // Client text may carry invalid UTF-8 only if json_parse let it through; then encoding must
    // refuse it with an Error rather than crash.
    try {
      const std::vector<int32_t> ids = tok->encode_spans(prompt.spans());
      V4RT_FUZZ_REQUIRE(tok->decode(ids) == joined, "the rendered prompt tokenizes and decodes back");
    } catch (const v4rt::Error&) {
      V4RT_FUZZ_REQUIRE(model::text::utf8_first_invalid(joined) != std::string::npos,
                        "a prompt of valid UTF-8 tokenizes");
    }
  }
}

// ----- output parser -------------------------------------------------------------------------

namespace {

struct StreamResult {
  std::string message;  // final message JSON + finish reason
  std::string reasoning, content;
  std::vector<std::string> args;  // per call index, concatenated argument fragments
  int starts = 0;
};

const char* kFuzzTools =
    R"([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"k": {"type": "string"}}}}},
        {"type": "function", "function": {"name": "wrap", "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}}}])";

StreamResult run_parser(std::string_view text, const model::text::ParserOptions& base, const std::vector<size_t>& cuts,
                        bool length) {
  model::text::ParserOptions o = base;
  int next_id = 0;
  o.make_id = [&next_id] { return "call_" + std::to_string(next_id++); };
  model::text::OutputParser p(o);
  std::vector<model::text::ParseEvent> ev;
  size_t prev = 0;
  for (size_t c : cuts) {
    p.feed(text.substr(prev, c - prev), &ev);
    prev = c;
  }
  p.feed(text.substr(prev), &ev);
  p.finish(length, &ev);
  StreamResult r;
  const model::text::ParsedMessage& m = p.message();
  r.message = model::text::json_dumps(m.to_json()) + " finish=" + m.finish_reason;
  for (const std::string& w : m.warnings) r.message += " warning=" + w;
  for (const auto& e : ev) {
    using Kind = model::text::ParseEvent::Kind;
    if (e.kind == Kind::kReasoning || e.kind == Kind::kContent)
      V4RT_FUZZ_REQUIRE(e.text.find(model::text::kDsml) == std::string::npos,
                        "no DSML token in a content or reasoning delta: " + e.text);
    if (e.kind == Kind::kReasoning) r.reasoning += e.text;
    if (e.kind == Kind::kContent) r.content += e.text;
    if (e.kind == Kind::kToolCallStart) {
      V4RT_FUZZ_REQUIRE(e.index == r.starts, "tool call indices are 0, 1, ...");
      ++r.starts;
      r.args.emplace_back();
    }
    if (e.kind == Kind::kToolCallArgs) {
      V4RT_FUZZ_REQUIRE(e.index >= 0 && e.index < r.starts, "argument delta of a started call");
      r.args[size_t(e.index)] += e.text;
    }
  }
  V4RT_FUZZ_REQUIRE(r.reasoning == m.reasoning_content, "reasoning deltas add up to the message");
  V4RT_FUZZ_REQUIRE(r.content == m.content, "content deltas add up to the message");
  V4RT_FUZZ_REQUIRE(model::text::utf8_first_invalid(m.content) == std::string::npos, "content is UTF-8");
  V4RT_FUZZ_REQUIRE(model::text::utf8_first_invalid(m.reasoning_content) == std::string::npos, "reasoning is UTF-8");
  V4RT_FUZZ_REQUIRE(m.content.find(model::text::kDsml) == std::string::npos, "no DSML token in content");
  V4RT_FUZZ_REQUIRE(m.reasoning_content.find(model::text::kDsml) == std::string::npos, "no DSML token in reasoning");
  V4RT_FUZZ_REQUIRE(r.starts == static_cast<int>(m.tool_calls.size()), "a start delta per returned call, none for a dropped one");
  for (size_t i = 0; i < m.tool_calls.size(); ++i) {
    Json args;
    V4RT_FUZZ_REQUIRE(model::text::json_try_parse(m.tool_calls[i].arguments, &args) && args.is_object(),
                      "tool arguments are a JSON object: " + m.tool_calls[i].arguments);
  }
  return r;
}

}  // namespace

void fuzz_output_parser(const uint8_t* data, size_t size) {
  if (size == 0) return;
  const uint8_t flags = data[0];
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  model::text::ParserOptions o;
  o.thinking = (flags & 1) != 0;
  o.tool_calls_enabled = (flags & 2) == 0;
  o.tools = (flags & 4) ? model::text::json_parse(kFuzzTools, "tools") : Json();
  const bool length = (flags & 8) != 0;

  const StreamResult whole = run_parser(text, o, {}, length);
  std::vector<size_t> bytes;
  for (size_t k = 1; k < text.size(); ++k) bytes.push_back(k);
  const StreamResult by_byte = run_parser(text, o, bytes, length);
  V4RT_FUZZ_REQUIRE(by_byte.message == whole.message && by_byte.args == whole.args,
                    "byte-by-byte feeding gives the whole-text result\n" + by_byte.message + "\n" + whole.message);
  std::mt19937 rng(hash_bytes(data, size));
  for (int trial = 0; trial < 3 && text.size() > 2; ++trial) {
    std::vector<size_t> cuts;
    for (size_t at = 1 + rng() % 7; at < text.size(); at += 1 + rng() % 7) cuts.push_back(at);
    const StreamResult r = run_parser(text, o, cuts, length);
    V4RT_FUZZ_REQUIRE(r.message == whole.message && r.args == whole.args,
                      "random chunking gives the whole-text result\n" + r.message + "\n" + whole.message);
  }
}

}  // namespace v4rt::fuzz
