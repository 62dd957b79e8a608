#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# The prefix cache's targets (docs/PREFIX_CACHE.md "Measured through serve") through a real
# `v4rt serve` and `v4rt batch` on the tiny model:
#   prefix_cache_targets.py <path/to/v4rt> <work dir> [--reps N] [--system-tokens N]
#                           [--batch-requests N] [--batch-prefix-tokens N] [--no-ttft-check]
# Per repetition (each with its own system prompt, so every repetition starts cold):
#   cold          another system prompt of the same length: nothing cached (the baseline TTFT);
#   agent turn    chat mode: the next turn of a conversation resends the previous prompt, the
#                 answer and a new user message;
#   second user   the same system prompt, another user message;
#   same prompt   the second user's request sent again;
#   thinking turn thinking mode without tools: the next turn drops the previous reasoning.
# TTFT is the wall time of a non-streaming request with max_tokens 1. Then a `v4rt batch` job of
# N requests sharing one system prompt. Prints a Markdown table and exits 1 when a target is
# missed: the second user >= system tokens - 10 cached and TTFT within 2x of the agent turn's;
# the same prompt cached up to its last token; the thinking turn cached past the end of the
# previous user message; the batch computing each shared prefix token once.
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request

WORDS = ("answer carefully cite sources keep replies short prefer plain words check arithmetic twice "
         "never invent facts ask when unsure respect privacy explain steps list options compare costs "
         "summarise long documents translate faithfully flag risks note assumptions").split()


def system_prompt(v4rt, tokens, tag):
    """A system prompt of exactly `tokens` tokens (checked with `v4rt tokenize`)."""
    sentences, i = [], 0
    while True:
        w = [WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(9)]
        sentences.append("Rule %s.%d: %s." % (tag, i, " ".join(w)))
        i += 1
        if i % 20 == 0 and count_tokens(v4rt, " ".join(sentences)) >= tokens:
            break
    text = " ".join(sentences)
    ids = json.loads(subprocess.check_output([v4rt, "tokenize", "--text", text]))
    out = subprocess.check_output([v4rt, "detokenize", "--ids", json.dumps(ids[:tokens])]).decode()
    assert count_tokens(v4rt, out) == tokens, "system prompt does not re-tokenize to %d tokens" % tokens
    return out


def count_tokens(v4rt, text):
    return len(json.loads(subprocess.check_output([v4rt, "tokenize", "--text", text])))


class Server:
    def __init__(self, v4rt, work, model):
        self.port_file = os.path.join(work, "port")
        if os.path.exists(self.port_file):
            os.remove(self.port_file)
        config = os.path.join(work, "serve.yaml")
        with open(config, "w") as f:
            f.write("model: %s\nserver: {max_queue: 256, prefix_cache: true}\n" % model)
        self.log = open(os.path.join(work, "serve.log"), "w")
        self.proc = subprocess.Popen([v4rt, "serve", "--config", config, "--port", "0", "--port-file", self.port_file],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            if os.path.exists(self.port_file) and open(self.port_file).read().strip():
                self.url = "http://127.0.0.1:%s" % open(self.port_file).read().strip()
                try:
                    if urllib.request.urlopen(self.url + "/health", timeout=5).status == 200:
                        return
                except OSError:
                    pass
            if self.proc.poll() is not None:
                sys.exit("serve exited: see %s" % self.log.name)
            time.sleep(0.2)
        sys.exit("serve did not become healthy in 120 s")

    def chat(self, messages, thinking, max_tokens=1):
        body = {"model": "tiny", "messages": messages, "max_tokens": max_tokens, "temperature": 0,
                "thinking": {"type": "enabled" if thinking else "disabled"}}
        req = urllib.request.Request(self.url + "/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=600) as r:
            j = json.loads(r.read())
        return j, time.perf_counter() - t0

    def metric(self, name):
        text = urllib.request.urlopen(self.url + "/metrics", timeout=30).read().decode()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def run_reps(server, v4rt, args):
    rows = {}
    for rep in range(args.reps):
        system = system_prompt(v4rt, args.system_tokens, "A%d" % rep)
        other = system_prompt(v4rt, args.system_tokens, "B%d" % rep)
        sys_msg = {"role": "system", "content": system}
        q = ["Question %d-%d: which rule covers %s?" % (rep, k, WORDS[k]) for k in range(6)]

        def record(name, j, t, prefill_before):
            u = j["usage"]
            computed = server.metric("v4rt_prefill_tokens_total") - prefill_before
            rows.setdefault(name, []).append((u["prompt_tokens"], u["prompt_tokens_details"]["cached_tokens"],
                                              int(computed), t * 1e3))

        def ask(name, messages, thinking, max_tokens=1):
            before = server.metric("v4rt_prefill_tokens_total")
            j, t = server.chat(messages, thinking, max_tokens)
            if name:
                record(name, j, t, before)
            return j

        ask("cold (another system prompt)", [{"role": "system", "content": other}, {"role": "user", "content": q[0]}],
            False)
        turn1 = [sys_msg, {"role": "user", "content": q[1]}]
        a1 = ask("", turn1, False, max_tokens=8)["choices"][0]["message"]["content"] or ""
        ask("chat-mode agent turn", turn1 + [{"role": "assistant", "content": a1}, {"role": "user", "content": q[2]}],
            False)
        second = [sys_msg, {"role": "user", "content": q[3]}]
        ask("second user, same system prompt", second, False)
        ask("same prompt sent again", second, False)
        think1 = [sys_msg, {"role": "user", "content": q[4]}]
        t1 = ask("thinking turn 1", think1, True)
        rows.setdefault("_think1_prompt", []).append(t1["usage"]["prompt_tokens"])
        ask("thinking next turn, no tools",
            think1 + [{"role": "assistant", "content": "Rule four.", "reasoning_content": "Looking at the rules."},
                      {"role": "user", "content": q[5]}], True)
    return rows


def run_batch(v4rt, work, model, args):
    system = system_prompt(v4rt, args.batch_prefix_tokens, "C")
    path = os.path.join(work, "batch.jsonl")
    with open(path, "w") as f:
        for i in range(args.batch_requests):
            body = {"model": "tiny", "max_tokens": 1, "temperature": 0, "thinking": {"type": "disabled"},
                    "messages": [{"role": "system", "content": system},
                                 {"role": "user", "content": "Request %d: apply rule %d." % (i, i)}]}
            f.write(json.dumps({"custom_id": "r%d" % i, "method": "POST", "url": "/v1/chat/completions",
                                "body": body}) + "\n")
    out = os.path.join(work, "batch_out.jsonl")
    for p in (out, out + ".journal"):
        if os.path.exists(p):
            os.remove(p)
    config = os.path.join(work, "batch.yaml")
    with open(config, "w") as f:
        f.write("model: %s\n" % model)
    t0 = time.perf_counter()
    err = subprocess.run([v4rt, "batch", "--config", config, "--input", path, "--output", out, "--progress", "log"],
                         stderr=subprocess.PIPE, check=True).stderr.decode()
    seconds = time.perf_counter() - t0
    prompt = sum(json.loads(l)["response"]["body"]["usage"]["prompt_tokens"] for l in open(out))
    line = [l for l in err.splitlines() if l.startswith("batch: prefix reuse:")]
    reused = int(line[0].split()[3]) if line else 0
    computed = int(line[0].rstrip(")").split()[-2]) if line else prompt
    shared = 1 + args.batch_prefix_tokens  # BOS + the system message
    return {"requests": args.batch_requests, "prompt": prompt, "reused": reused, "computed": computed,
            "once": prompt - (args.batch_requests - 1) * shared, "seconds": seconds}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("v4rt")
    ap.add_argument("work")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--system-tokens", type=int, default=1400)
    ap.add_argument("--batch-requests", type=int, default=100)
    ap.add_argument("--batch-prefix-tokens", type=int, default=1000)
    ap.add_argument("--no-ttft-check", action="store_true", help="token counts only (a loaded CI machine)")
    args = ap.parse_args()
    v4rt = os.path.realpath(args.v4rt)
    os.makedirs(args.work, exist_ok=True)
    work = os.path.realpath(args.work)
    model = os.path.join(work, "tiny")
    if not os.path.exists(os.path.join(model, "model.safetensors.index.json")):
        subprocess.check_call([v4rt, "init-model", "--preset", "tiny", "--mtp", "--out", model], stdout=subprocess.DEVNULL)

    server = Server(v4rt, work, model)
    try:
        rows = run_reps(server, v4rt, args)
    finally:
        server.stop()
    batch = run_batch(v4rt, work, model, args)

    print("| request | prompt tokens | cached tokens | computed | TTFT ms (median of %d) |" % args.reps)
    print("|---|---|---|---|---|")
    med = {}
    for name, r in rows.items():
        if name.startswith("_"):
            continue
        med[name] = statistics.median(x[3] for x in r)
        print("| %s | %s | %s | %s | %.0f |" % (name, "/".join(str(x[0]) for x in r), "/".join(str(x[1]) for x in r),
                                               "/".join(str(x[2]) for x in r), med[name]))
    print("\n| batch | requests | prompt tokens | reused | computed | each shared token once | wall s |")
    print("|---|---|---|---|---|---|---|")
    print("| `v4rt batch`, %d-token shared system prompt | %d | %d | %d | %d | %d | %.1f |" %
          (args.batch_prefix_tokens, batch["requests"], batch["prompt"], batch["reused"], batch["computed"],
           batch["once"], batch["seconds"]))

    failures = []
    for k in range(args.reps):
        second = rows["second user, same system prompt"][k]
        if second[1] < args.system_tokens - 10:
            failures.append("second user cached %d < %d" % (second[1], args.system_tokens - 10))
        same = rows["same prompt sent again"][k]
        if same[1] != same[0] - 1:
            failures.append("same prompt cached %d of %d" % (same[1], same[0]))
        think = rows["thinking next turn, no tools"][k]
        # The previous prompt ends with <｜Assistant｜><think>; the next turn keeps <｜Assistant｜>.
        if think[1] < rows["_think1_prompt"][k] - 2:
            failures.append("thinking turn cached %d, previous user message ends at %d" %
                            (think[1], rows["_think1_prompt"][k] - 2))
    if not args.no_ttft_check and med["second user, same system prompt"] > 2 * med["chat-mode agent turn"]:
        failures.append("second user TTFT %.0f ms > 2x the agent turn's %.0f ms" %
                        (med["second user, same system prompt"], med["chat-mode agent turn"]))
    if batch["computed"] != batch["once"]:
        failures.append("batch computed %d prompt tokens, %d when each shared token is computed once" %
                        (batch["computed"], batch["once"]))
    for f in failures:
        print("FAILED:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
