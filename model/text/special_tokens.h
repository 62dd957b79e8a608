// SPDX-License-Identifier: MIT
// The DeepSeek-V4 control-token strings and ids (chat-format §1.3). `｜` is U+FF5C and `▁` is
// U+2581; ASCII look-alikes are different strings. The V3 tokenizer.json that v4rt loads ends its
// added tokens at 128814; the V4 entries from 128815 on are added by the tokenizer from this table.
#pragma once

#include <cstdint>
#include <string_view>

namespace v4rt::model::text {

inline constexpr int32_t kVocabSize = 129280;

inline constexpr std::string_view kBos = "<｜begin▁of▁sentence｜>";
inline constexpr std::string_view kEos = "<｜end▁of▁sentence｜>";
inline constexpr std::string_view kPad = "<｜▁pad▁｜>";
inline constexpr std::string_view kUser = "<｜User｜>";
inline constexpr std::string_view kAssistant = "<｜Assistant｜>";
inline constexpr std::string_view kThinkStart = "<think>";
inline constexpr std::string_view kThinkEnd = "</think>";
inline constexpr std::string_view kDsml = "｜DSML｜";
inline constexpr std::string_view kLatestReminder = "<｜latest_reminder｜>";

inline constexpr int32_t kBosId = 0;
inline constexpr int32_t kEosId = 1;
inline constexpr int32_t kPadId = 2;
inline constexpr int32_t kUserId = 128803;
inline constexpr int32_t kAssistantId = 128804;
inline constexpr int32_t kThinkStartId = 128821;
inline constexpr int32_t kThinkEndId = 128822;
inline constexpr int32_t kDsmlId = 128825;
inline constexpr int32_t kLatestReminderId = 128828;

struct SpecialToken {
  std::string_view text;
  int32_t id;
};

// V4 additions beyond the V3 tokenizer.json (quick-instruction task tokens included).
inline constexpr SpecialToken kV4AddedTokens[] = {
    {kThinkStart, kThinkStartId},
    {kThinkEnd, kThinkEndId},
    {kDsml, kDsmlId},
    {kLatestReminder, kLatestReminderId},
    {"<｜action｜>", 128829},
    {"<｜query｜>", 128830},
    {"<｜authority｜>", 128831},
    {"<｜domain｜>", 128832},
    {"<｜title｜>", 128836},
    {"<｜read_url｜>", 128845},
};

}  // namespace v4rt::model::text
