// SPDX-License-Identifier: MIT
// DeepSeek-V3/V4 byte-level BPE tokenizer loaded from a Hugging Face tokenizer.json
// (chat-format §1). Encoding: added/special tokens are matched on the raw text first (longest
// match, and only where the caller allows it), each gap is pre-tokenized as one whole by the
// file's Split regex sequence (PCRE2, UTF + UCP, JIT), and every pre-token is BPE-merged by rank
// over its bytes. Pre-token results are cached. Decoding maps ids back to bytes; the streaming
// Detokenizer (detokenizer.h) turns those bytes into complete UTF-8.
//
// Safe tokenisation: encode() never turns special-token strings into control tokens unless
// allow_special is set; encode_spans() looks for them only inside spans marked trusted (the chat
// template), so user text that spells `<｜User｜>` stays ordinary text.
//
// Where the tokenizer.json comes from (find_tokenizer_path), first hit wins:
//   1. an explicit path (must exist);
//   2. <model_dir>/tokenizer.json when a model directory is given;
//   3. the file named by the environment variable V4RT_TOKENIZER;
//   4. <prefix>/share/v4rt/tokenizer/tokenizer.json of an installed tree (relative to the binary);
//   5. <repo>/data/tokenizer/tokenizer.json (compiled in; scripts/fetch-tokenizer.sh fetches it).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace v4rt::model::text {

// A piece of prompt text; special-token strings are recognised only in trusted pieces.
struct TextSpan {
  std::string_view text;
  bool trusted = false;
};

// Resolves the tokenizer.json to load (order in the file comment); throws v4rt::Error listing the
// places it looked when none exists.
std::string find_tokenizer_path(const std::string& explicit_path = "",
                                const std::string& model_dir = "");

class Tokenizer {
 public:
  // Loads and checks a tokenizer.json (model type, pre-tokenizer patterns, byte-level decoder);
  // throws v4rt::Error naming the file and the key at fault.
  explicit Tokenizer(const std::string& path);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Encodes UTF-8 text (throws v4rt::Error on invalid UTF-8). No BOS is added.
  std::vector<int32_t> encode(std::string_view text, bool allow_special = false) const;
  void encode_to(std::string_view text, bool allow_special, std::vector<int32_t>* ids) const;
  // Encodes the concatenation of the spans; special tokens only inside trusted spans, and each
  // gap between special tokens is pre-tokenized as one whole across span boundaries.
  std::vector<int32_t> encode_spans(std::span<const TextSpan> spans) const;
  // As above; for every byte offset in `marks` (increasing) where a trusted special token starts,
  // the number of tokens before it goes to *mark_tokens. Such a position is exact: the tokens
  // before a special token do not depend on the text after it. Other marks are skipped.
  std::vector<int32_t> encode_spans(std::span<const TextSpan> spans, std::span<const size_t> marks,
                                    std::vector<int64_t>* mark_tokens) const;

  // Concatenated bytes of the tokens (may end inside a UTF-8 character). Throws on ids outside
  // [0, vocab_size); ids with no entry decode to nothing.
  std::string decode(std::span<const int32_t> ids) const;
  // Bytes of one token ("" for an unassigned id); throws on ids outside [0, vocab_size).
  const std::string& token_bytes(int32_t id) const;
  // Id of an added/special token string, if it is one.
  std::optional<int32_t> special_id(std::string_view text) const;
  bool is_special(int32_t id) const;

  int32_t vocab_size() const;
  // The pre-tokens of one gap (no special-token matching); exposed for tests.
  std::vector<std::string> pre_tokenize(std::string_view text) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace v4rt::model::text
