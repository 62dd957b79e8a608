#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Writes the seed corpus of every fuzz target into tests/fuzz/corpus/<target>/ from the
# reference files in tests/data (release configs, official chat vectors, tokenizer cases) and small hand-made
# inputs. Deterministic; rerun after changing it:  python3 tests/fuzz/make_corpus.py
import json, os, struct, sys

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.abspath(os.path.join(here, "..", ".."))
shared = os.path.join(root, "tests", "data")  # the copies of the reference files (tests/data/README.md)
out = os.path.join(here, "corpus")


def put(target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def read(path):
    with open(path, "rb") as f:
        return f.read()


# ----- safetensors_header: whole small files ----------------------------------------------------
def shard(tensors, metadata=None, pad=True):
    header, data, off = {}, b"", 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, size in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + size]}
        data += bytes((i * 37 + 11) & 0xFF for i in range(size))
        off += size
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


put("safetensors_header", "one_f32", shard([("w", "F32", [2, 3], 24)], {"format": "pt"}))
put("safetensors_header", "mixed", shard([("a.weight", "F8_E4M3", [4, 8], 32), ("a.scale", "F8_E8M0", [1, 1], 1),
                                          ("b", "BF16", [3], 6), ("e", "I8", [2, 4], 8), ("ids", "I64", [2], 16)]))
put("safetensors_header", "empty_tensor", shard([("z", "F32", [0, 4], 0), ("x", "F16", [1], 2)], {}))
put("safetensors_header", "scalar", shard([("s", "F32", [], 4)], None, pad=False))
put("safetensors_header", "header_only", shard([], {"format": "pt"}))

# ----- token_ids: byte 0 = form (0 text list, 1 safetensors with input_ids) ----------------------
put("token_ids", "list.txt", b"\x00" + b"[0, 19923, 14, 2058, 3]\n")
put("token_ids", "spaces.txt", b"\x00" + b"1 2\n3\t4,5 -0 129279")


def shard_with_data(name, dtype, shape, raw):
    text = json.dumps({name: {"dtype": dtype, "shape": shape, "data_offsets": [0, len(raw)]}}).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + raw
put("token_ids", "ids_i64.safetensors", b"\x01" + shard_with_data("input_ids", "I64", [4], b"".join(struct.pack("<q", v) for v in (0, 1, 128803, 5))))
put("token_ids", "ids_i32.safetensors", b"\x01" + shard_with_data("input_ids", "I32", [2, 2], b"".join(struct.pack("<i", v) for v in (7, 8, 9, 10))))

# ----- model_config: the release configs, their reference-code form, the golden tiny model ------
for kind in ("flash", "pro"):
    put("model_config", kind + "_config.json", read(os.path.join(shared, "spec/release", kind, "config.json")))
    put("model_config", kind + "_inference_config.json",
        read(os.path.join(shared, "spec/release", kind, "inference/config.json")))
put("model_config", "tiny_a_config.json", read(os.path.join(shared, "golden/tiny-a/model/config.json")))

# ----- runtime_config: the shipped YAML files and a few edge forms --------------------------------
cfg = os.path.join(root, "configs")
for name in sorted(os.listdir(cfg)):
    if name.endswith(".yaml"):
        put("runtime_config", name, read(os.path.join(cfg, name)))
put("runtime_config", "empty.yaml", "")
put("runtime_config", "flow.yaml", "{model: m, parallel: {tp: 2, sp: 2}, debug: {check_finite: true}}\n")
put("runtime_config", "anchors.yaml", "sampling: &s {temperature: 0.5, top_p: 0.9}\nserver: {port: 0, api_key: k}\n")

# ----- plan_yaml: byte 0 = file kind (0 hardware table, 1 calibration) ---------------------------
hw = os.path.join(root, "configs", "hardware")
for name in sorted(os.listdir(hw)) if os.path.isdir(hw) else []:
    if name.endswith(".yaml"):
        put("plan_yaml", "gpu_" + name, b"\x00" + read(os.path.join(hw, name)))
put("plan_yaml", "calibration.yaml", b"\x01hbm_fraction: 0.7\nflop_fraction: 0.45\nlink_fraction: 0.6\n"
    b"all_to_all_gb_per_s: 80\nlaunch_overhead_us_per_layer: 12\ncollective_latency_us: 25\n"
    b"runtime_reserve_gib: 6\nprefill_chunk_tokens: 4096\n")
put("plan_yaml", "calibration_flow.yaml", b"\x01{hbm_fraction: 1, prefill_chunk_tokens: 1}\n")

# ----- tokenizer: byte 0 = mode (0 encode, 1 encode+specials, 2 decode ids, 3 spans) ------------
cases = [json.loads(l) for l in read(os.path.join(shared, "golden/tokenizer/cases.jsonl")).decode().splitlines() if l]
for i, c in enumerate(cases[:12]):
    put("tokenizer", "case%02d" % i, bytes([i % 2]) + c["text"].encode())
put("tokenizer", "specials", bytes([1]) + "<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜><think>x</think>｜DSML｜".encode())
put("tokenizer", "spans", bytes([3 | (5 << 2) | 0x40]) + "<｜User｜>hello <｜Assistant｜>".encode())
put("tokenizer", "ids", bytes([2]) + b"".join(struct.pack("<i", i) for i in (0, 1, 19923, 14, 128803, 128825, 129279)))

# ----- chat_encoder: the official vectors' inputs ------------------------------------------------
for i in range(1, 5):
    put("chat_encoder", "official_%d.json" % i, read(os.path.join(shared, "golden/chat/official/test_input_%d.json" % i)))
put("chat_encoder", "tool_round.json", json.dumps({
    "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
    "messages": [{"role": "user", "content": "Weather in Lyon?"},
                 {"role": "assistant", "content": "", "reasoning_content": "use the tool",
                  "tool_calls": [{"id": "c1", "type": "function",
                                  "function": {"name": "get_weather", "arguments": "{\"city\": \"Lyon\"}"}}]},
                 {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                 {"role": "user", "content": [{"type": "text", "text": "thanks"}]}]}, ensure_ascii=False))

# ----- output_parser: byte 0 = flags (1 thinking, 2 tools off, 4 declared tools, 8 length) ------
D = "｜DSML｜"
call = ("Let me check.\n\n<" + D + "tool_calls>\n<" + D + "invoke name=\"f\">\n<" + D +
        "parameter name=\"k\" string=\"true\">Lyon \"x\"</" + D + "parameter>\n<" + D +
        "parameter name=\"n\" string=\"false\">{\"a\": [1, 2.5e3]}</" + D + "parameter>\n</" + D +
        "invoke>\n</" + D + "tool_calls><｜end▁of▁sentence｜>")
put("output_parser", "reasoning_then_call", bytes([1 | 4]) + ("The user wants weather.</think>" + call).encode())
put("output_parser", "content_only", bytes([0]) + "Hello 数学 🤖<｜end▁of▁sentence｜>".encode())
put("output_parser", "wrapped_args", bytes([4]) + ("<" + D + "tool_calls>\n<" + D + "invoke name=\"wrap\">\n<" + D +
    "parameter name=\"arguments\" string=\"false\">{\"x\": \"y\"}</" + D + "parameter>\n</" + D +
    "invoke>\n</" + D + "tool_calls>").encode())
put("output_parser", "unfinished", bytes([1 | 8]) + ("thinking...</think>ok <" + D + "tool_calls>\n<" + D +
    "invoke name=\"f\">\n<" + D + "parameter name=\"k\" string=\"true\">par").encode())
put("output_parser", "tools_off", bytes([2]) + call.encode())
# ----- http_request: byte 0 = endpoint (0 chat, 1 completions), then the request body ------------
def req(name, chat, body):
    put("http_request", name, bytes([0 if chat else 1]) + json.dumps(body, ensure_ascii=False).encode())
req("chat_plain", True, {"model": "v4rt", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8})
req("chat_stream_tools", True, {
    "model": "v4rt", "stream": True, "stream_options": {"include_usage": True}, "temperature": 0.7, "top_p": 0.9,
    "seed": 3, "stop": ["\n\n"], "logprobs": True, "top_logprobs": 2, "reasoning_effort": "high",
    "tools": [{"type": "function", "function": {"name": "get_weather",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
    "tool_choice": "auto", "messages": [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "Weather in Lyon?"}]})
req("chat_no_thinking", True, {"messages": [{"role": "user", "content": "2+2?"}], "thinking": False,
                               "chat_template_kwargs": {"thinking": False}, "n": 1})
req("completion", False, {"model": "v4rt", "prompt": "The capital of France is", "max_tokens": 4, "logprobs": 2})
req("completion_ids", False, {"prompt": [0, 19923, 14], "max_tokens": 2, "temperature": 0})
put("http_request", "not_json", b"\x00{\"messages\": [")
print("corpus written to", out)
