// SPDX-License-Identifier: MIT
// Streaming parser for DeepSeek-V4 completions (chat-format §8): generated text in, OpenAI-style
// reasoning_content / content / tool_calls out, as deltas for SSE streaming plus a final message.
//
// It is one text-level state machine (REASONING, CONTENT, BLOCK, INVOKE, VALUE, AFTER, DONE) that
// keeps back, at the end of every feed, only the longest suffix that could still start a marker
// of the current state (plus up to two '\n' that may be the separator before a DSML block, and an
// incomplete UTF-8 character). Everything before it is final, so the result does not depend on
// how the text was chunked. Malformed markup never throws and raw `｜DSML｜` never reaches content
// or reasoning: any DSML opener starts markup (a wrapper other than tool_calls, a bare invoke),
// DSML closers, stray `<think>` and `</think>` are removed from text, and text inside a block that
// is not a parameter is dropped. Each call is held until its invoke closes and is then emitted
// whole, or dropped with a warning when its arguments cannot be read (docs/SERVING.md).
#pragma once

#include <functional>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "model/text/json_format.h"

namespace v4rt::model::text {

struct ToolCall {
  std::string id;
  std::string name;
  std::string arguments;  // JSON object text (§6.3): {"key": value, ...}
};

struct ParsedMessage {
  bool thinking = false;          // reasoning_content is reported only in thinking mode
  std::string reasoning_content;
  std::string content;
  std::vector<ToolCall> tool_calls;
  std::string finish_reason;      // "stop" | "tool_calls" | "length" (set by finish())
  // One line per call the model started but that was not returned, naming the call and why
  // (unreadable arguments, tool calls disabled, output ended inside it). Not part of to_json().
  std::vector<std::string> warnings;

  // {"role": "assistant", "content": ..., "reasoning_content": ..., "tool_calls": [...]};
  // content is null when empty and tool calls exist (OpenAI convention).
  Json to_json() const;
};

struct ParseEvent {
  enum class Kind { kReasoning, kContent, kToolCallStart, kToolCallArgs };
  Kind kind = Kind::kContent;
  std::string text;  // reasoning/content delta, or an arguments fragment
  int index = -1;    // tool call index (0, 1, ...) for tool-call events
  std::string id;    // kToolCallStart only
  std::string name;  // kToolCallStart only
};

struct ParserOptions {
  bool thinking = true;            // the prompt ended with <think>: start in REASONING (§8.1)
  bool tool_calls_enabled = true;  // false (no tools / tool_choice "none"): blocks are dropped
  // Request tools (OpenAI form), used to unwrap a lone "arguments"/"input" wrapper parameter when
  // the tool's schema has no such property (§8.3 item 7). May be null.
  Json tools;
  // Tool-call id generator; default "call_" + 24 random hex digits.
  std::function<std::string()> make_id;
};

class OutputParser {
 public:
  explicit OutputParser(ParserOptions options);

  // Feeds generated text (any chunking; a UTF-8 character may be split across feeds). Events that
  // became final are appended to `events` when it is not null.
  void feed(std::string_view text, std::vector<ParseEvent>* events = nullptr);
  // End of generation: flushes what is held and sets finish_reason ("length" when the token
  // limit stopped generation). Further feeds are ignored.
  void finish(bool length_limited = false, std::vector<ParseEvent>* events = nullptr);

  const ParsedMessage& message() const { return msg_; }

 private:
  enum class State { kReasoning, kContent, kBlock, kInvoke, kValue, kAfter, kDone };
  struct Param {
    std::string key, raw;  // raw: the value text as the model wrote it
    bool is_string = true;
  };
  // One invoke, held until it closes (§8.3 item 5): a call is emitted whole or not at all.
  struct Call {
    std::string name;
    std::vector<Param> params;
    std::string body;       // text inside the invoke outside any parameter
    std::string malformed;  // why the arguments cannot be read; empty when they can
  };

  bool step(bool eof);
  bool step_text(bool eof, bool reasoning);
  bool guard_join(bool eof, bool reasoning);
  bool step_markup(bool eof);
  bool on_tag(bool eof, bool closing, std::string_view name, size_t name_end);
  bool step_value(bool eof);
  void markup_text(std::string_view text);

  void emit_text(ParseEvent::Kind kind, std::string_view text);
  void start_call(std::string name, std::string malformed);
  void close_call();
  void drop_call(const std::string& reason);
  void warn_dropped(const std::string& name, const std::string& reason);

  ParserOptions opt_;
  std::map<std::string, std::set<std::string>> tool_props_;  // declared tool -> property names
  State state_;
  std::string buf_;         // unprocessed text
  std::string utf8_tail_;   // incomplete UTF-8 character held between feeds
  std::vector<ParseEvent>* out_ = nullptr;
  ParsedMessage msg_;
  bool in_call_ = false;
  Call call_;
  bool after_drop_ = false;  // markup was just removed from text: guard the join (guard_join)
  bool length_limited_ = false;
  bool finished_ = false;
};

// Convenience: parses a whole completion (non-streaming, §8.5).
ParsedMessage parse_completion(std::string_view text, const ParserOptions& options,
                               bool length_limited = false);

}  // namespace v4rt::model::text
