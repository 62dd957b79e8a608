// SPDX-License-Identifier: MIT
// `v4rt bench <what>` subcommands. Each benchmark registers itself under the `bench` command
// through one function declared here and defined in launch/bench/bench_<what>.cpp.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

namespace CLI {
class App;
}

namespace v4rt::kernels {
class Backend;
}

namespace v4rt::model {
struct ModelConfig;
class Checkpoint;
class Model;
}

namespace v4rt::launch {

void register_bench_tokenizer(CLI::App& bench);  // bench_tokenizer.cpp
void register_bench_step(CLI::App& bench);       // bench_step.cpp: `bench step` and `bench indexer`
void register_bench_moe_comm(CLI::App& bench);   // bench_moe_comm.cpp: EP dispatch + combine vs raw all-to-all
void register_bench_serve(CLI::App& bench);      // bench_serve.cpp: against a running `v4rt serve`
void register_bench_prefill(CLI::App& bench);    // bench_prefill.cpp
void register_bench_sample(CLI::App& bench);     // bench_sample.cpp: Backend::sample

// The synthetic bench model of bench_step.cpp, shared by the benchmarks that load it: the preset's
// dimensions on `layers` layers (alternating CSA / HCA, score routing), and its checkpoint written
// from `seed` into `dir`, or when `dir` is empty into /dev/shm/<name> (the temporary directory when
// /dev/shm lacks room); prints the checkpoint's size and write time and returns the directory.
model::ModelConfig bench_model_config(const std::string& preset, int layers);
std::string write_bench_model(const model::ModelConfig& cfg, const std::string& dir, const std::string& name,
                              uint64_t seed);

// The bench checkpoint in `dir` loaded on `be` under the official numerics (the production path:
// FP8 act quant, FP8/FP4 GEMMs), with its load time printed.
struct BenchModel {
  std::unique_ptr<model::Checkpoint> ckpt;  // the model reads it; it lives as long
  std::unique_ptr<model::Model> model;
};
BenchModel load_bench_model(const std::string& dir, kernels::Backend& be);
// `path` opened for appending (nullptr when empty); a new file first gets `header` (its comment
// and column lines). `what` ("bench step") names the command in the error.
FILE* open_bench_csv(const std::string& path, const std::string& what, const char* header);

}  // namespace v4rt::launch
