// SPDX-License-Identifier: MIT
// `v4rt bench <what>`: the benchmarks, each registered from launch/bench/bench_<what>.cpp.
#include <CLI/CLI.hpp>

#include "launch/bench/bench.h"
#include "launch/commands.h"

namespace v4rt::launch {

void register_bench_mtp(CLI::App& bench);  // launch/bench/bench_mtp.cpp

void register_bench(CLI::App& app) {
  auto* bench = app.add_subcommand("bench", "Benchmarks (tokenizer, ...)");
  bench->require_subcommand(1);
  register_bench_tokenizer(*bench);
  register_bench_step(*bench);
  register_bench_prefill(*bench);
  register_bench_mtp(*bench);
  register_bench_serve(*bench);
  register_bench_moe_comm(*bench);
  register_bench_sample(*bench);
}

}  // namespace v4rt::launch
