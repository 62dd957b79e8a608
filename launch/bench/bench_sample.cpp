// SPDX-License-Identifier: MIT
// `v4rt bench sample`: Backend::sample over [batch, vocab] logits resident on the backend, per
// batch size and sampling mode (greedy; temperature + top-p; temperature + top-k + top-p with 5 top
// logprobs). Reports the median time of one call and, for the GPU, the roofline: the logits read
// once at 4.3 TB/s (H200 HBM3e, achievable). Random logits (normal, sd 2, seeded) with a peaked
// head of 8 tokens (logits 20 .. 16.5), so the nuclei are small, as in decoding.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <sstream>
#include <memory>
#include <string>
#include <vector>

#include "common/check.h"
#include "launch/backend_option.h"
#include "launch/bench/bench.h"

namespace v4rt::launch {
namespace {

struct SampleBenchOptions {
  std::string batches = "1,64,256";
  int64_t vocab = 129280;
  int iters = 5;
  std::string backend = "cpu";
  int device = 0;
};

struct Mode {
  const char* name;
  float temperature;
  float top_p;
  int top_k;
  int n_logprobs;
};

std::vector<int64_t> parse_list(const std::string& s, const char* flag) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      out.push_back(std::stoll(item));
    } catch (const std::exception&) {
      V4RT_REQUIRE(false, flag << ": '" << item << "' is not an integer");
    }
    V4RT_REQUIRE(out.back() > 0, flag << ": " << out.back() << " must be positive");
  }
  V4RT_REQUIRE(!out.empty(), flag << ": empty list");
  return out;
}

void run_bench_sample(const SampleBenchOptions& o) {
  V4RT_REQUIRE(o.vocab > 0 && o.iters > 0, "--vocab and --iters must be positive");
  const std::vector<int64_t> batches = parse_list(o.batches, "--batch");
  std::unique_ptr<kernels::Backend> be = make_selected_backend(o.backend, o.device);
  const Mode modes[] = {{"greedy", 0.0f, 1.0f, 0, 0}, {"T 1.0 top-p 0.9", 1.0f, 0.9f, 0, 0},
                        {"T 0.7 top-k 50 top-p 0.95 +5 logprobs", 0.7f, 0.95f, 50, 5}};
  constexpr double kHbmBytesPerS = 4.3e12;
  std::printf("bench sample: backend %s, vocab %lld, F32 logits, median of %d calls\n", be->name().c_str(),
              (long long)o.vocab, o.iters);
  std::printf("%-40s %6s %12s %12s %14s\n", "mode", "batch", "ms/call", "GB/s", "GPU roofline");
  for (const int64_t batch : batches) {
    std::vector<float> host(size_t(batch * o.vocab));
    std::mt19937_64 rng{uint64_t(batch)};
    std::normal_distribution<float> nd(0.f, 2.f);
    for (float& v : host) v = nd(rng);
    for (int64_t r = 0; r < batch; ++r)
      for (int h = 0; h < 8; ++h) host[size_t(r * o.vocab + (r * 7919 + h * 16001) % o.vocab)] = 20.0f - 0.5f * float(h);
    const DType dt = DType::kF32;
    Buffer logits = be->alloc(host.size() * 4), ids = be->alloc(size_t(batch) * 4), lp = be->alloc(size_t(batch) * 4);
    Buffer top_ids = be->alloc(size_t(batch) * 5 * 4), top_lp = be->alloc(size_t(batch) * 5 * 4);
    Buffer rows = be->alloc(size_t(batch) * sizeof(kernels::SampleRow));
    be->copy_to_device(logits.data(), host.data(), host.size() * 4);
    for (const Mode& m : modes) {
      std::vector<kernels::SampleRow> sr(static_cast<size_t>(batch));
      for (int64_t r = 0; r < batch; ++r) {
        sr[size_t(r)].seed = uint64_t(r + 1);
        sr[size_t(r)].position = 4096 + r;
        sr[size_t(r)].temperature = m.temperature;
        sr[size_t(r)].top_p = m.top_p;
        sr[size_t(r)].top_k = m.top_k;
        sr[size_t(r)].n_logprobs = m.n_logprobs;
      }
      be->copy_to_device(rows.data(), sr.data(), sr.size() * sizeof(kernels::SampleRow));
      kernels::SampleParams p;
      p.logits = TensorView(logits.data(), dt, {batch, o.vocab}, be->device());
      p.rows = static_cast<const kernels::SampleRow*>(rows.data());
      p.out_ids = TensorView(ids.data(), DType::kI32, {batch}, be->device());
      if (m.n_logprobs > 0) {  // logprobs only where asked for, as the server does
        p.out_logprob = TensorView(lp.data(), DType::kF32, {batch}, be->device());
        p.out_top_ids = TensorView(top_ids.data(), DType::kI32, {batch, 5}, be->device());
        p.out_top_logprobs = TensorView(top_lp.data(), DType::kF32, {batch, 5}, be->device());
      }
      be->sample(p);  // warm-up
      be->synchronize();
      std::vector<double> ms;
      for (int i = 0; i < o.iters; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        be->sample(p);
        be->synchronize();
        ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      }
      std::sort(ms.begin(), ms.end());
      const double med = ms[ms.size() / 2];
      const double bytes = double(batch) * double(o.vocab) * 4.0;
      std::printf("%-40s %6lld %12.3f %12.2f %11.2f us\n", m.name, (long long)batch, med, bytes / (med * 1e-3) / 1e9,
                  bytes / kHbmBytesPerS * 1e6);
    }
  }
}

}  // namespace

void register_bench_sample(CLI::App& bench) {
  auto opts = std::make_shared<SampleBenchOptions>();
  auto* c = bench.add_subcommand("sample", "Backend::sample (greedy / top-p / top-k + logprobs) per batch size, with the GPU roofline");
  c->add_option("--batch", opts->batches, "comma-separated batch sizes")->capture_default_str();
  c->add_option("--vocab", opts->vocab, "vocabulary size (logits per row)")->capture_default_str();
  c->add_option("--iters", opts->iters, "timed calls per case (the median is reported)")->capture_default_str();
  add_backend_option(c, &opts->backend, &opts->device);
  c->callback([opts] { run_bench_sample(*opts); });
}

}  // namespace v4rt::launch
