// SPDX-License-Identifier: MIT
// OpenAI-compatible request parsing and validation (chat-format §9.1): /v1/chat/completions and
// /v1/completions bodies -> a GenerationSpec (prompt token ids, sampling, stop strings, output
// parser settings). Every rejection is an ApiError carrying the HTTP status and the OpenAI error
// object {"message", "type", "param", "code"}, naming the field at fault.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/scheduler.h"
#include "launch/runtime_config.h"
#include "model/text/chat_encoder.h"
#include "model/text/output_parser.h"
#include "model/text/tokenizer.h"

namespace v4rt::launch::serve {

using text_json = model::text::Json;

class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string message, std::string param = "", std::string code = "",
           std::string type = "");
  int status() const { return status_; }
  // {"error": {"message", "type", "param", "code"}}
  std::string json() const;

 private:
  int status_;
  std::string param_, code_, type_;
};

// What the server allows and defaults to (from the runtime config and the model).
struct ApiLimits {
  std::string model_name;
  int64_t max_context = 0;              // prompt + completion tokens
  launch::SamplingDefaults defaults;
  model::text::EffortDialect dialect = model::text::EffortDialect::kOriginal;
  bool test_hook_forced_output = false;  // debug.test_hook_forced_output
  int ranks = 1;                         // ranks of the job (reported by /health)
};

struct GenerationSpec {
  bool chat = true;
  bool stream = false;
  bool include_usage = false;           // stream_options.include_usage
  std::vector<int32_t> prompt;
  std::vector<int64_t> boundaries;      // chat: prompt positions where a message ends (prefix cache)
  runtime::SamplingParams sampling;
  std::vector<std::string> stop;        // applied to content only (§9.2)
  int priority = 0;
  bool thinking = false;                // chat: the prompt ends with <think>
  model::text::ParserOptions parser;    // chat only
};

// Parses the body text as JSON (400 naming the position on failure).
text_json parse_json_body(const std::string& body);

GenerationSpec parse_chat_request(const text_json& body, const model::text::Tokenizer& tokenizer,
                                  const ApiLimits& limits);
GenerationSpec parse_completion_request(const text_json& body, const model::text::Tokenizer& tokenizer,
                                        const ApiLimits& limits);

}  // namespace v4rt::launch::serve
