// SPDX-License-Identifier: MIT
// Streaming parser for DeepSeek-V4 completions (chat-format §8): generated text in, OpenAI-style
// reasoning_content / content / tool_calls out, as deltas for SSE streaming plus a final message.
//
// It is one text-level state machine (REASONING, CONTENT, BLOCK, INVOKE, VALUE, AFTER, DONE) that
// keeps back, at the end of every feed, only the longest suffix that could still start a marker
// of the current state (plus up to two '\n' that may be the separator before a DSML block, and an
// incomplete UTF-8 character). Everything before it is final, so the result does not depend on
// how the text was chunked. Malformed markup never throws: unknown DSML tags are dropped, stray
// closers and `</think>` in content are removed, other stray text inside a block degrades to
// content, and an unfinished call at the end of the stream is not reported as complete.
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
  struct Call {
    int index = -1;
    std::string id, name;
    std::string args;           // arguments text so far
    int num_params = 0;
    bool buffered = false;      // unwrap candidate: fragments are held until the invoke closes
    std::string first_value;    // raw text of the first parameter (for unwrapping)
  };

  bool step(bool eof);
  bool step_text(bool eof, bool reasoning);
  bool step_markup(bool eof, bool in_invoke);
  bool step_value(bool eof);
  bool step_after(bool eof);
  bool skip_bad_tag(bool eof);
  bool emit_stray_text();

  void emit_text(ParseEvent::Kind kind, std::string_view text);
  void start_call(const std::string& name);
  void append_args(std::string_view fragment);
  void begin_param(const std::string& key, bool is_string);
  void append_value(std::string_view raw);
  void end_param();
  void close_call();
  void drop_call();

  ParserOptions opt_;
  std::map<std::string, std::set<std::string>> tool_props_;  // declared tool -> property names
  State state_;
  std::string buf_;         // unprocessed text
  std::string utf8_tail_;   // incomplete UTF-8 character held between feeds
  std::vector<ParseEvent>* out_ = nullptr;
  ParsedMessage msg_;
  bool in_call_ = false;
  Call call_;
  bool value_is_string_ = false;
  std::string value_raw_;   // non-string value text (validated at its closer)
  bool in_stray_ = false;   // inside a run of non-markup text in BLOCK/INVOKE
  int num_calls_ = 0;
  bool finished_ = false;
};

// Convenience: parses a whole completion (non-streaming, §8.5).
ParsedMessage parse_completion(std::string_view text, const ParserOptions& options,
                               bool length_limited = false);

}  // namespace v4rt::model::text
