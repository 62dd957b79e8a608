// SPDX-License-Identifier: MIT
// Generated tokens -> what the client sees. One GenerationOutput per request: streaming
// detokenizer, then (chat) the DSML/reasoning output parser, then stop strings on content. Streamed
// and non-streamed responses are both built from the same deltas, so the same seeded request gives
// the same text either way. Also the JSON of OpenAI responses, stream chunks and usage.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "launch/serve/openai_api.h"
#include "runtime/scheduler.h"
#include "model/text/detokenizer.h"
#include "model/text/output_parser.h"

namespace v4rt::launch::serve {

struct Delta {
  // kWarning: the output parser dropped a tool call (text names it); sent before the finish chunk.
  enum class Kind { kReasoning, kContent, kToolCallStart, kToolCallArgs, kWarning };
  Kind kind = Kind::kContent;
  std::string text;
  int index = -1;    // tool calls
  std::string id;    // kToolCallStart
  std::string name;  // kToolCallStart
};

// Holds back content that may be the start of a stop string; cuts at the first full match.
class StopFilter {
 public:
  explicit StopFilter(std::vector<std::string> stops) : stops_(std::move(stops)) {}
  std::string feed(std::string_view text);  // returns what is safe to emit
  std::string flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

class GenerationOutput {
 public:
  GenerationOutput(const model::text::Tokenizer& tokenizer, const GenerationSpec& spec);

  // Consumes tokens; appends the deltas that became final. Returns false once a stop string
  // matched (the caller cancels the generation; later tokens are ignored).
  bool on_tokens(const std::vector<runtime::TokenEvent>& tokens, std::vector<Delta>* deltas);
  // End of generation: flushes held text. `reason` is the scheduler's.
  void finish(runtime::FinishReason reason, std::vector<Delta>* deltas);

  std::string finish_reason() const { return finish_reason_; }  // OpenAI value
  int64_t completion_tokens() const { return completion_tokens_; }
  int64_t reasoning_tokens() const { return reasoning_tokens_; }
  // Logprob entries of tokens not yet attached to a chunk (moved out).
  text_json take_logprobs();

  // Full texts after finish().
  const std::string& reasoning() const { return reasoning_; }
  const std::string& content() const { return content_; }
  const model::text::ParsedMessage* parsed() const { return parser_ ? &parser_->message() : nullptr; }
  bool thinking() const { return thinking_; }
  // The tool calls the model started that were dropped, and why ("" when none); the response's
  // `warning` field. finish_reason is unaffected ("stop" when no call was returned).
  const std::string& warning() const { return warning_; }

 private:
  void route(std::vector<model::text::ParseEvent>& events, std::vector<Delta>* deltas);
  void add_content(std::string_view text, std::vector<Delta>* deltas);
  text_json logprob_entry(const runtime::TokenEvent& ev) const;

  const model::text::Tokenizer& tokenizer_;
  bool chat_;
  bool thinking_;
  bool logprobs_;
  model::text::Detokenizer detok_;
  std::unique_ptr<model::text::OutputParser> parser_;
  StopFilter stop_;
  bool in_reasoning_;
  int64_t completion_tokens_ = 0;
  int64_t reasoning_tokens_ = 0;
  std::string reasoning_, content_;
  std::string finish_reason_;
  std::string warning_;
  text_json pending_logprobs_ = text_json::array();
};

// Response JSON. `id` and `created` are the same for every chunk of a response.
struct ResponseMeta {
  std::string id;
  int64_t created = 0;
  std::string model;
  bool chat = true;
};

text_json usage_json(const GenerationOutput& out, int64_t prompt_tokens, int64_t cached_tokens);
// One SSE chunk object for `delta` (nullptr: the role chunk for chat, an empty text otherwise);
// finish_reason "" means null.
text_json chunk_json(const ResponseMeta& meta, const Delta* delta, const std::string& finish_reason,
                     text_json logprobs);
// The non-streaming response.
text_json final_json(const ResponseMeta& meta, GenerationOutput& out, int64_t prompt_tokens, int64_t cached_tokens);

}  // namespace v4rt::launch::serve
