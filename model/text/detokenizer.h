// SPDX-License-Identifier: MIT
// Streaming detokenization (chat-format §1.5): token ids in, complete UTF-8 out. Byte-level BPE
// tokens can end inside a character (CJK, emoji), so the incomplete tail is held back until the
// next token completes it. Bytes that can never form a character are replaced by U+FFFD, so the
// output is always valid UTF-8 (safe for JSON and SSE). Special tokens decode to their strings.
#pragma once

#include <cstdint>
#include <string>

#include "model/text/tokenizer.h"

namespace v4rt::model::text {

class Detokenizer {
 public:
  explicit Detokenizer(const Tokenizer& tokenizer) : tokenizer_(&tokenizer) {}

  // Appends one token; returns the text that became complete (possibly empty).
  std::string push(int32_t id);
  // Appends raw bytes (as if decoded from tokens); returns the text that became complete.
  std::string push_bytes(std::string_view bytes);
  // End of stream: returns whatever is held (an incomplete tail becomes U+FFFD).
  std::string flush();

 private:
  const Tokenizer* tokenizer_;
  std::string pending_;  // bytes not yet emitted (at most an incomplete character)
};

// Replaces every byte that does not belong to a valid UTF-8 character by U+FFFD.
std::string utf8_sanitize(std::string_view bytes);

}  // namespace v4rt::model::text
