// SPDX-License-Identifier: MIT
// `v4rt bench <what>` subcommands. Each benchmark registers itself under the `bench` command
// through one function declared here and defined in launch/bench/bench_<what>.cpp.
#pragma once

namespace CLI {
class App;
}

namespace v4rt::launch {

void register_bench_tokenizer(CLI::App& bench);  // bench_tokenizer.cpp
void register_bench_step(CLI::App& bench);       // bench_step.cpp: `bench step` and `bench indexer`
void register_bench_moe_comm(CLI::App& bench);   // bench_moe_comm.cpp: EP dispatch + combine vs raw all-to-all

}  // namespace v4rt::launch
