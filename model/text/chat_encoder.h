// SPDX-License-Identifier: MIT
// DeepSeek-V4 prompt rendering (chat-format §2-§7): OpenAI-style messages + tool declarations ->
// the exact prompt bytes of DeepSeek's reference encoder (encoding_dsv4.py), byte for byte.
// Normalisation (§3): tool results merge into user turns and are sorted by call order; request
// tools attach to the first system/developer message (or an inserted empty system message).
// Rendering (§4): thinking on/off, the reasoning-effort prefix of the model's dialect, reasoning
// kept across turns when tools are declared and dropped otherwise, DSML tool-call blocks (§6.1)
// with Python-compatible JSON (§6.4).
//
// The prompt comes back as pieces marked trusted (template text) or untrusted (anything the client
// wrote); Tokenizer::encode_spans turns only trusted special-token strings into control tokens.
// Input JSON must be parsed with json_parse (json_format.h) so key order and number forms survive.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "model/text/json_format.h"
#include "model/text/tokenizer.h"

namespace v4rt::model::text {

// Which reasoning-effort table the checkpoint was trained with (§0): the original V4 release
// (`max` = P_ABSMAX) or the 0731 refresh (`high` = P_ABSMAX, `max` = P_BEYOND).
enum class EffortDialect { kOriginal, kV0731 };
enum class EffortPrefix { kNone, kAbsMax, kBeyond };

// "original" | "v0731" (also "0731"); throws v4rt::Error otherwise.
EffortDialect parse_effort_dialect(std::string_view name);
// Maps a request's reasoning_effort to the prefix (§9.1). "" means the dialect's default (no
// prefix). Unknown strings throw v4rt::Error naming the value.
EffortPrefix effort_prefix_for(std::string_view effort, EffortDialect dialect);
// The prefix text (P_ABSMAX / P_BEYOND, "" for kNone).
std::string_view effort_prefix_text(EffortPrefix prefix);

struct ChatOptions {
  bool thinking = true;                      // thinking mode (prompt ends with <think>)
  EffortPrefix effort = EffortPrefix::kNone;
  bool drop_thinking = true;                 // reference default; off whenever tools are declared
  bool add_bos = true;
};

struct PromptPiece {
  std::string text;
  bool trusted = false;
};

struct ChatPrompt {
  std::vector<PromptPiece> pieces;
  bool generation_prompt = false;  // ends with ⟨A⟩<think> or ⟨A⟩</think>: the model speaks next
  bool ends_in_reasoning = false;  // ends with <think>: the output parser starts in REASONING
  // Byte offsets into text() where a message ends (before and after its transition to the next
  // speaker), increasing: the prefix cache's message boundaries. Tokenizer::encode_spans maps the
  // ones that fall on a special token to token positions.
  std::vector<size_t> message_ends;

  std::string text() const;
  std::vector<TextSpan> spans() const;  // views into `pieces` (valid while this object lives)
};

// Renders `messages` (a JSON array of OpenAI-style messages). `tools` is the request's tool list
// (array of {"type":"function","function":{...}}) or null. Throws v4rt::Error naming the message
// index and field for input the V4 format cannot represent.
ChatPrompt chat_encode(const Json& messages, const Json& tools, const ChatOptions& options);

}  // namespace v4rt::model::text
