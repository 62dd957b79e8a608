// SPDX-License-Identifier: MIT
// DeepSeek-V4 prompt rendering (see chat_encoder.h). The code follows the reference encoder's
// steps in order: merge tool messages, sort tool results, drop old reasoning, render each item
// with its transition.
#include "model/text/chat_encoder.h"

#include <algorithm>
#include <map>
#include <optional>

#include "common/check.h"
#include "model/text/special_tokens.h"

namespace v4rt::model::text {
namespace {

// ---------------------------------------------------------------------------------------------
// Fixed strings (§2). Byte counts and SHA-256 values are checked by the tests.
// ---------------------------------------------------------------------------------------------
constexpr std::string_view kToolsHead =
    "## Tools\n"
    "\n"
    "You have access to a set of tools to help answer the user's question. You can invoke tools by "
    "writing a \"<｜DSML｜tool_calls>\" block like the following:\n"
    "\n"
    "<｜DSML｜tool_calls>\n"
    "<｜DSML｜invoke name=\"$TOOL_NAME\">\n"
    "<｜DSML｜parameter name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE</｜DSML｜"
    "parameter>\n"
    "...\n"
    "</｜DSML｜invoke>\n"
    "<｜DSML｜invoke name=\"$TOOL_NAME2\">\n"
    "...\n"
    "</｜DSML｜invoke>\n"
    "</｜DSML｜tool_calls>\n"
    "\n"
    "String parameters should be specified as is and set `string=\"true\"`. For all other types "
    "(numbers, booleans, arrays, objects), pass the value in JSON format and set "
    "`string=\"false\"`.\n"
    "\n"
    "If thinking_mode is enabled (triggered by <think>), you MUST output your complete reasoning "
    "inside <think>...</think> BEFORE any tool calls or final response.\n"
    "\n"
    "Otherwise, output directly after </think> with tool calls or final response.\n"
    "\n"
    "### Available Tool Schemas\n"
    "\n";
constexpr std::string_view kToolsTail =
    "\n\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke tool "
    "calls.\n";
constexpr std::string_view kAbsMax =
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to "
    "resolve the root cause, rigorously stress-testing your logic against all potential paths, "
    "edge cases, and adversarial scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, "
    "considered alternative, and rejected hypothesis to ensure absolutely no assumption is left "
    "unchecked.\n"
    "\n";
constexpr std::string_view kBeyond =
    "Reasoning Effort: Beyond maximum — exhaustive, relentless, and uncompromising.\n"
    "You MUST reason with the utmost depth and rigor, leaving absolutely nothing to chance: "
    "exhaustively decompose the problem into its most fundamental components, trace every causal "
    "chain to its root, and resolve the underlying cause rather than any surface symptom.\n"
    "Do not stop reasoning until you have independently verified the solution from multiple angles "
    "and are certain that no assumption remains unchecked and no error remains undiscovered.\n"
    "\n";
constexpr std::string_view kResponseFormatHead =
    "\n\n## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n";

const std::map<std::string, std::string, std::less<>> kTaskTokens = {
    {"action", "<｜action｜>"}, {"query", "<｜query｜>"},   {"authority", "<｜authority｜>"},
    {"domain", "<｜domain｜>"}, {"title", "<｜title｜>"},   {"read_url", "<｜read_url｜>"}};

// ---------------------------------------------------------------------------------------------
// Normalised conversation (§3)
// ---------------------------------------------------------------------------------------------
struct Block {
  bool is_result = false;
  std::string text;
  std::string tool_call_id;
};

struct Item {
  std::string role;
  size_t source_idx = 0;           // index in the request's messages (for error messages)
  std::string content;
  std::vector<Block> blocks;       // user items only
  Json tools;                      // array of function objects (the inner "function"), or null
  Json response_format;            // or null
  Json tool_calls;                 // OpenAI tool_calls array, or null
  std::string reasoning;
  std::optional<std::string> task;
  bool wo_eos = false;
};

std::string where(size_t idx) { return "messages[" + std::to_string(idx) + "]"; }

// A content field: string, null, or a list of parts (text parts joined by "\n\n"; other parts
// become "[Unsupported <type>]", as the reference does for tool results).
std::string flatten_content(const Json& c, const std::string& at) {
  if (c.is_null()) return "";
  if (c.is_string()) return c.get<std::string>();
  V4RT_REQUIRE(c.is_array(), at << ".content must be a string, null or a list of parts");
  std::string out;
  bool first = true;
  for (const auto& part : c) {
    if (!first) out += "\n\n";
    first = false;
    const std::string type = part.is_object() ? part.value("type", "") : "";
    if (type == "text") {
      V4RT_REQUIRE(part.contains("text") && part["text"].is_string(),
                   at << ".content: a text part has no string \"text\"");
      out += part["text"].get<std::string>();
    } else {
      out += "[Unsupported " + (type.empty() ? std::string("None") : type) + "]";
    }
  }
  return out;
}

std::string string_field(const Json& m, const char* key, const std::string& at) {
  if (!m.contains(key) || m[key].is_null()) return "";
  V4RT_REQUIRE(m[key].is_string(), at << "." << key << " must be a string");
  return m[key].get<std::string>();
}

// Tool declarations: keep the inner function objects; names must be representable (§6.1).
Json function_list(const Json& tools, const std::string& at) {
  V4RT_REQUIRE(tools.is_array(), at << " must be an array of tools");
  Json out = Json::array();
  for (size_t i = 0; i < tools.size(); ++i) {
    const auto& t = tools[i];
    const std::string ti = at + "[" + std::to_string(i) + "]";
    V4RT_REQUIRE(t.is_object() && t.contains("function") && t["function"].is_object(),
                 ti << " must be {\"type\": \"function\", \"function\": {...}}");
    const auto& f = t["function"];
    V4RT_REQUIRE(f.contains("name") && f["name"].is_string(), ti << ".function.name is missing");
    V4RT_REQUIRE(f["name"].get<std::string>().find('"') == std::string::npos,
                 ti << ".function.name must not contain '\"'");
    out.push_back(f);
  }
  return out;
}

std::vector<Item> normalise(const Json& messages, const Json& request_tools) {
  V4RT_REQUIRE(messages.is_array(), "messages must be a JSON array");
  std::vector<Item> items;
  bool seen_non_system = false;
  for (size_t i = 0; i < messages.size(); ++i) {
    const Json& m = messages[i];
    const std::string at = where(i);
    V4RT_REQUIRE(m.is_object() && m.contains("role") && m["role"].is_string(),
                 at << " must be an object with a string \"role\"");
    const std::string role = m["role"].get<std::string>();
    if (role == "tool") {
      Block b;
      b.is_result = true;
      b.text = flatten_content(m.value("content", Json()), at);
      b.tool_call_id = string_field(m, "tool_call_id", at);
      if (!items.empty() && items.back().role == "user") {
        items.back().blocks.push_back(std::move(b));
      } else {
        Item it;
        it.role = "user";
        it.source_idx = i;
        it.blocks.push_back(std::move(b));
        items.push_back(std::move(it));
      }
      seen_non_system = true;
      continue;
    }
    Item it;
    it.role = role;
    it.source_idx = i;
    it.content = flatten_content(m.value("content", Json()), at);
    if (m.contains("task") && !m["task"].is_null()) {
      V4RT_REQUIRE(m["task"].is_string() && kTaskTokens.count(m["task"].get<std::string>()),
                   at << ".task must be one of action, query, authority, domain, title, read_url");
      it.task = m["task"].get<std::string>();
    }
    it.wo_eos = m.value("wo_eos", false);
    if (role == "user") {
      Block b;
      b.text = it.content;
      if (!items.empty() && items.back().role == "user" && !items.back().task) {
        items.back().blocks.push_back(std::move(b));
      } else {
        it.blocks.push_back(std::move(b));
        items.push_back(std::move(it));
      }
      seen_non_system = true;
      continue;
    }
    if (role == "system") {
      V4RT_REQUIRE(!seen_non_system, at << ": a system message after the conversation started "
                                        << "has no representation in the V4 format");
    } else if (role == "assistant") {
      V4RT_REQUIRE(items.empty() || items.back().role != "assistant",
                   at << ": two assistant messages in a row cannot be rendered");
      it.reasoning = m.contains("reasoning_content") ? string_field(m, "reasoning_content", at)
                                                     : string_field(m, "reasoning", at);
      if (m.contains("tool_calls") && !m["tool_calls"].is_null()) {
        V4RT_REQUIRE(m["tool_calls"].is_array(), at << ".tool_calls must be an array");
        it.tool_calls = m["tool_calls"];
      }
    } else if (role == "developer") {
      V4RT_REQUIRE(!it.content.empty(), at << ": a developer message needs non-empty content");
    } else if (role != "latest_reminder") {
      V4RT_FAIL(at << ".role \"" << role << "\" is not one of system, user, assistant, tool, "
                   << "developer, latest_reminder");
    }
    if (role != "system") seen_non_system = true;
    if (m.contains("tools") && !m["tools"].is_null()) it.tools = function_list(m["tools"], at + ".tools");
    if (m.contains("response_format") && !m["response_format"].is_null())
      it.response_format = m["response_format"];
    items.push_back(std::move(it));
  }

  // §3.6: request tools go on the first message (system/developer) or an inserted system message.
  if (request_tools.is_array() && !request_tools.empty()) {
    Json fns = function_list(request_tools, "tools");
    if (!items.empty() && (items[0].role == "system" || items[0].role == "developer")) {
      items[0].tools = std::move(fns);
    } else {
      Item sys;
      sys.role = "system";
      sys.tools = std::move(fns);
      items.insert(items.begin(), std::move(sys));
    }
  }

  // §3.4: tool results follow the call order of the latest assistant message with tool calls.
  std::map<std::string, size_t> order;
  for (auto& it : items) {
    if (it.role == "assistant" && it.tool_calls.is_array() && !it.tool_calls.empty()) {
      order.clear();
      for (size_t k = 0; k < it.tool_calls.size(); ++k) {
        const Json& tc = it.tool_calls[k];
        std::string id;
        if (tc.contains("id") && tc["id"].is_string()) {
          id = tc["id"].get<std::string>();
        } else if (tc.contains("function") && tc["function"].contains("id") &&
                   tc["function"]["id"].is_string()) {
          id = tc["function"]["id"].get<std::string>();
        }
        if (!id.empty()) order[id] = k;
      }
    } else if (it.role == "user" && !order.empty()) {
      std::vector<Block> results;
      for (const auto& b : it.blocks)
        if (b.is_result) results.push_back(b);
      if (results.size() < 2) continue;
      auto pos = [&](const Block& b) {
        auto f = order.find(b.tool_call_id);
        return f == order.end() ? size_t{0} : f->second;
      };
      std::stable_sort(results.begin(), results.end(),
                       [&](const Block& a, const Block& b) { return pos(a) < pos(b); });
      size_t r = 0;
      for (auto& b : it.blocks)
        if (b.is_result) b = results[r++];
    }
  }
  return items;
}

// ---------------------------------------------------------------------------------------------
// Rendering (§4)
// ---------------------------------------------------------------------------------------------
class Writer {
 public:
  void trusted(std::string_view s) { add(s, true); }
  void untrusted(std::string_view s) { add(s, false); }
  std::vector<PromptPiece> take() { return std::move(pieces_); }
  size_t size() const { return size_; }  // bytes written so far
  bool ends_with(std::string_view s) const {
    return !pieces_.empty() && pieces_.back().text.ends_with(s);
  }

 private:
  void add(std::string_view s, bool trusted) {
    if (s.empty()) return;
    size_ += s.size();
    if (!pieces_.empty() && pieces_.back().trusted == trusted) {
      pieces_.back().text.append(s);
    } else {
      pieces_.push_back({std::string(s), trusted});
    }
  }
  std::vector<PromptPiece> pieces_;
  size_t size_ = 0;
};

void render_tools(const Json& fns, Writer& w) {
  w.trusted("\n\n");
  w.trusted(kToolsHead);
  for (size_t i = 0; i < fns.size(); ++i) {
    if (i) w.trusted("\n");
    w.untrusted(json_dumps(fns[i]));
  }
  w.trusted(kToolsTail);
}

void render_suffixes(const Item& it, Writer& w) {
  if (it.tools.is_array() && !it.tools.empty()) render_tools(it.tools, w);
  if (!it.response_format.is_null()) {
    w.trusted(kResponseFormatHead);
    w.untrusted(json_dumps(it.response_format));
  }
}

// One DSML parameter line per argument (§6.1), or the raw-text fallback.
void render_arguments(const Json& tc, const std::string& at, Writer& w) {
  const Json fn = tc.value("function", Json::object());
  const Json args_field = fn.value("arguments", Json());
  Json args;
  std::string raw;
  bool parsed = false;
  if (args_field.is_object()) {
    args = args_field;
    parsed = true;
  } else if (args_field.is_null()) {
    args = Json::object();
    parsed = true;
  } else if (args_field.is_string()) {
    raw = args_field.get<std::string>();
    parsed = json_try_parse(raw, &args) && args.is_object();
  } else {
    raw = json_dumps(args_field);
  }
  auto param = [&](std::string_view key, bool is_string, std::string_view value) {
    w.trusted("<｜DSML｜parameter name=\"");
    w.untrusted(key);
    w.trusted(is_string ? "\" string=\"true\">" : "\" string=\"false\">");
    w.untrusted(value);
    w.trusted("</｜DSML｜parameter>");
  };
  if (!parsed) {
    param("arguments", true, raw);
    return;
  }
  bool first = true;
  for (const auto& [key, val] : args.items()) {
    V4RT_REQUIRE(key.find('"') == std::string::npos,
                 at << ".function.arguments: key " << json_quote(key) << " contains '\"'");
    if (!first) w.trusted("\n");
    first = false;
    if (val.is_string()) {
      param(key, true, val.get_ref<const std::string&>());
    } else {
      param(key, false, json_dumps(val));
    }
  }
}

void render_tool_calls(const Item& it, Writer& w) {
  w.trusted("\n\n<｜DSML｜tool_calls>\n");
  for (size_t k = 0; k < it.tool_calls.size(); ++k) {
    const Json& tc = it.tool_calls[k];
    const std::string at = where(it.source_idx) + ".tool_calls[" + std::to_string(k) + "]";
    V4RT_REQUIRE(tc.is_object() && tc.contains("function") && tc["function"].is_object() &&
                     tc["function"].contains("name") && tc["function"]["name"].is_string(),
                 at << " must have function.name");
    const std::string name = tc["function"]["name"].get<std::string>();
    V4RT_REQUIRE(name.find('"') == std::string::npos, at << ".function.name contains '\"'");
    if (k) w.trusted("\n");
    w.trusted("<｜DSML｜invoke name=\"");
    w.untrusted(name);
    w.trusted("\">\n");
    render_arguments(tc, at, w);
    w.trusted("\n</｜DSML｜invoke>");
  }
  w.trusted("\n</｜DSML｜tool_calls>");
}

int last_user_index(const std::vector<Item>& items) {
  for (int i = static_cast<int>(items.size()) - 1; i >= 0; --i)
    if (items[i].role == "user" || items[i].role == "developer") return i;
  return -1;
}

}  // namespace

EffortDialect parse_effort_dialect(std::string_view name) {
  if (name == "original") return EffortDialect::kOriginal;
  if (name == "v0731" || name == "0731") return EffortDialect::kV0731;
  V4RT_FAIL("effort dialect \"" << name << "\" is not one of original, v0731");
}

EffortPrefix effort_prefix_for(std::string_view effort, EffortDialect dialect) {
  if (effort.empty() || effort == "none") return EffortPrefix::kNone;
  if (dialect == EffortDialect::kV0731) {
    if (effort == "minimal" || effort == "low") return EffortPrefix::kNone;
    if (effort == "medium" || effort == "high" || effort == "xhigh") return EffortPrefix::kAbsMax;
    if (effort == "max" || effort == "ultra") return EffortPrefix::kBeyond;
  } else {
    if (effort == "minimal" || effort == "low" || effort == "medium" || effort == "high")
      return EffortPrefix::kNone;
    if (effort == "max" || effort == "xhigh" || effort == "ultra") return EffortPrefix::kAbsMax;
  }
  V4RT_FAIL("reasoning_effort \"" << effort << "\" is not one of minimal, low, medium, high, "
                                  << "xhigh, max, ultra, none");
}

std::string_view effort_prefix_text(EffortPrefix prefix) {
  switch (prefix) {
    case EffortPrefix::kAbsMax: return kAbsMax;
    case EffortPrefix::kBeyond: return kBeyond;
    case EffortPrefix::kNone: break;
  }
  return "";
}

std::string ChatPrompt::text() const {
  std::string out;
  for (const auto& p : pieces) out += p.text;
  return out;
}

std::vector<TextSpan> ChatPrompt::spans() const {
  std::vector<TextSpan> out;
  out.reserve(pieces.size());
  for (const auto& p : pieces) out.push_back({p.text, p.trusted});
  return out;
}

ChatPrompt chat_encode(const Json& messages, const Json& tools, const ChatOptions& options) {
  std::vector<Item> items = normalise(messages, tools);
  V4RT_REQUIRE(last_user_index(items) >= 0,
               "messages: the conversation has no user or developer message");
  const bool thinking = options.thinking;
  bool drop = options.drop_thinking;
  for (const auto& it : items)
    if (it.tools.is_array() && !it.tools.empty()) drop = false;  // §4.1 keep_all_reasoning

  if (thinking && drop) {  // drop mode: old reasoning and old developer messages go
    const int last = last_user_index(items);
    std::vector<Item> kept;
    for (int i = 0; i < static_cast<int>(items.size()); ++i) {
      Item& it = items[i];
      if (it.role != "assistant" && it.role != "developer") {
        kept.push_back(std::move(it));
      } else if (i >= last) {
        kept.push_back(std::move(it));
      } else if (it.role == "assistant") {
        it.reasoning.clear();
        kept.push_back(std::move(it));
      }
    }
    items = std::move(kept);
  }
  const int last = last_user_index(items);

  Writer w;
  std::vector<size_t> message_ends;
  if (options.add_bos) w.trusted(kBos);
  for (int i = 0; i < static_cast<int>(items.size()); ++i) {
    const Item& it = items[i];
    if (i == 0 && thinking) w.trusted(effort_prefix_text(options.effort));
    if (it.role == "system") {
      w.untrusted(it.content);
      render_suffixes(it, w);
    } else if (it.role == "developer") {
      w.trusted(kUser);
      w.untrusted(it.content);
      render_suffixes(it, w);
    } else if (it.role == "user") {
      w.trusted(kUser);
      for (size_t b = 0; b < it.blocks.size(); ++b) {
        if (b) w.trusted("\n\n");
        if (it.blocks[b].is_result) {
          w.trusted("<tool_result>");
          w.untrusted(it.blocks[b].text);
          w.trusted("</tool_result>");
        } else {
          w.untrusted(it.blocks[b].text);
        }
      }
    } else if (it.role == "latest_reminder") {
      w.trusted(kLatestReminder);
      w.untrusted(it.content);
    } else {  // assistant
      const bool prev_task = i > 0 && items[i - 1].task.has_value();
      if (thinking && !prev_task && (!drop || i > last)) {
        w.untrusted(it.reasoning);
        w.trusted(kThinkEnd);
      }
      w.untrusted(it.content);
      if (it.tool_calls.is_array() && !it.tool_calls.empty()) render_tool_calls(it, w);
      if (!it.wo_eos) w.trusted(kEos);
    }
    message_ends.push_back(w.size());  // before the transition: a user message's end is shared by
                                       // the next turn whatever the transition becomes

    // Transition (§4.2): only before an assistant/latest_reminder item or at the end.
    if (i + 1 < static_cast<int>(items.size()) && items[i + 1].role != "assistant" &&
        items[i + 1].role != "latest_reminder")
      continue;
    if (it.task) {
      const std::string& tok = kTaskTokens.find(*it.task)->second;
      if (*it.task != "action") {
        w.trusted(tok);
      } else {
        w.trusted(kAssistant);
        w.trusted(thinking ? kThinkStart : kThinkEnd);
        w.trusted(tok);
      }
    } else if (it.role == "user" || it.role == "developer") {
      w.trusted(kAssistant);
      w.trusted(thinking && (!drop || i >= last) ? kThinkStart : kThinkEnd);
    }
    message_ends.push_back(w.size());
  }

  ChatPrompt prompt;
  prompt.ends_in_reasoning = w.ends_with(std::string(kAssistant) + std::string(kThinkStart));
  prompt.generation_prompt =
      prompt.ends_in_reasoning || w.ends_with(std::string(kAssistant) + std::string(kThinkEnd));
  prompt.pieces = w.take();
  message_ends.erase(std::unique(message_ends.begin(), message_ends.end()), message_ends.end());
  prompt.message_ends = std::move(message_ends);
  return prompt;
}

}  // namespace v4rt::model::text
