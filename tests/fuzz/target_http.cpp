// SPDX-License-Identifier: MIT
// Fuzz target: the server's OpenAI request parsing (launch/serve/openai_api.h), the path every
// POST /v1/chat/completions and /v1/completions body takes before it reaches the scheduler. Byte 0
// picks the endpoint, the rest is the body. Bad bodies must be rejected with an ApiError of a 4xx
// status (or a v4rt::Error, which the server answers with 400); anything else would be a 500. An
// accepted request must fit the context limit and carry sane sampling values.
#include "common/check.h"
#include "launch/serve/openai_api.h"
#include "model/text/tokenizer.h"
#include "tests/fuzz/fuzz_targets.h"

namespace v4rt::fuzz {

void fuzz_http_request(const uint8_t* data, size_t size) {
  const model::text::Tokenizer* tok = shared_tokenizer();
  if (tok == nullptr || size == 0) return;
  const bool chat = (data[0] & 1) == 0;
  const std::string body(reinterpret_cast<const char*>(data + 1), size - 1);
  launch::serve::ApiLimits limits;
  limits.model_name = "v4rt-fuzz";
  limits.max_context = 4096;
  launch::serve::GenerationSpec spec;
  try {
    const launch::serve::text_json j = launch::serve::parse_json_body(body);
    spec = chat ? launch::serve::parse_chat_request(j, *tok, limits)
                : launch::serve::parse_completion_request(j, *tok, limits);
  } catch (const launch::serve::ApiError& e) {
    V4RT_FUZZ_REQUIRE(e.status() >= 400 && e.status() < 500, "rejections are 4xx: " + e.json());
    return;
  } catch (const v4rt::Error&) {
    return;  // the server answers 400 with the message
  }
  V4RT_FUZZ_REQUIRE(!spec.prompt.empty() || !chat, "a chat prompt has tokens");
  V4RT_FUZZ_REQUIRE(int64_t(spec.prompt.size()) < limits.max_context, "the prompt fits the context");
  for (int32_t id : spec.prompt) V4RT_FUZZ_REQUIRE(id >= 0 && id < tok->vocab_size(), "prompt ids in the vocabulary");
  const runtime::SamplingParams& s = spec.sampling;
  V4RT_FUZZ_REQUIRE(s.temperature >= 0 && s.top_p > 0 && s.top_p <= 1, "sampling values in range");
  V4RT_FUZZ_REQUIRE(s.max_tokens >= 0 && int64_t(spec.prompt.size()) + s.max_tokens <= limits.max_context,
                    "max_tokens clamped to the context left");
  V4RT_FUZZ_REQUIRE(s.top_logprobs >= 0 && s.top_logprobs <= 20, "top_logprobs in [0, 20]");
}

}  // namespace v4rt::fuzz
