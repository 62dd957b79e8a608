// SPDX-License-Identifier: MIT
// Benchmarks of the CUDA backend at V4-Flash shapes: FP8 block-scaled GEMMs (cuBLASLt), the FP4
// grouped expert GEMM (single expert and decode-shaped groups; the CUDA-core kernel, the tensor-core
// tile kernel and the decode GEMV side by side, the GEMV's GB/s also against the nominal HBM
// bandwidth: 3.35 TB/s H100, 4.8 TB/s H200), sparse attention decode, indexer
// scores and top-k (decode, and prefill chunks on the tensor-core kernel), and a decode batch of
// 256 sequences as per-sequence calls against one batched call. Each line: time, bytes, FLOPs,
// achieved bandwidth / throughput and the roofline
// time max(bytes / BW, FLOPs / peak) with BW = measured device copy bandwidth (reported first),
// peak = 1580 TFLOP/s FP8 or 790 TFLOP/s bf16-class work; the decode GEMV (L2-cold) at the decode
// projections. Usage: bench_cuda [out.tsv|-] [SECTION...]
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/kv_format.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/fp4_gemm.h"
#include "kernels/cuda/fp8_gemm.h"
#include "kernels/cuda/gemv.h"

namespace v4rt::kernels::cuda {
namespace {

constexpr double kFp8Peak = 1580e12, kBf16Peak = 790e12;
double g_bw = 4.3e12;
double g_hbm_nominal = 0;  // the data-sheet HBM bandwidth of an H100 / H200 SXM, 0 for other devices
FILE* g_tsv = nullptr;

template <typename F>
double time_us(F&& f, cudaStream_t s, int iters = 20) {
  for (int i = 0; i < 3; ++i) f();
  Event a, b;
  a.record(s);
  for (int i = 0; i < iters; ++i) f();
  b.record(s);
  b.synchronize();
  return double(b.elapsed_ms_since(a)) * 1000.0 / iters;
}

void report(const std::string& name, double us, double bytes, double flops, double peak) {
  const double roof_us = std::max(bytes / g_bw, flops / peak) * 1e6;
  std::printf("%-48s %10.2f us %9.1f GB/s %8.1f TFLOP/s  roofline %9.2f us  (%5.1f%%)\n", name.c_str(), us,
              bytes / us * 1e-3, flops / us * 1e-6, roof_us, 100.0 * roof_us / us);
  if (g_tsv) std::fprintf(g_tsv, "%s\t%.3f\t%.0f\t%.0f\t%.3f\n", name.c_str(), us, bytes, flops, roof_us);
}

DeviceBuffer random_bytes(size_t n, std::mt19937& gen, int lo = 0, int hi = 255, uint8_t avoid_mask = 0) {
  std::vector<uint8_t> h(n);
  std::uniform_int_distribution<int> d(lo, hi);
  for (auto& b : h) {
    do b = uint8_t(d(gen));
    while (avoid_mask && (b & 0x7f) == avoid_mask);
  }
  DeviceBuffer buf(std::max<size_t>(n, 1));
  buf.copy_from_host(h.data(), n);
  return buf;
}

void bench_copy(cudaStream_t s) {
  const size_t n = size_t(2) << 30;
  DeviceBuffer a(n), b(n);
  a.fill_bytes(1);
  const double us = time_us([&] { CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), n, cudaMemcpyDeviceToDevice, s)); }, s, 10);
  g_bw = 2.0 * double(n) / (us * 1e-6);
  std::printf("device copy: %.2f TB/s (read + write of 2 GiB); used as the roofline bandwidth\n", g_bw * 1e-12);
  if (g_tsv) std::fprintf(g_tsv, "copy_bw_TBps\t%.4f\n", g_bw * 1e-12);
}

void bench_fp8(cudaStream_t s, std::mt19937& gen) {
  struct Shape { const char* name; int64_t n, k; };
  Fp8Gemm gemm;
  for (const Shape& sh : {Shape{"wq_a 1024x4096", 1024, 4096}, Shape{"wq_b 32768x1024", 32768, 1024},
                          Shape{"wkv 512x4096", 512, 4096}, Shape{"wo_b 4096x8192", 4096, 8192},
                          Shape{"shared w1 2048x4096", 2048, 4096}}) {
    DeviceBuffer w8 = random_bytes(size_t(sh.n * sh.k), gen, 0, 255, 0x7f);
    std::vector<float> wsh(size_t(((sh.n + 127) / 128) * fp8_scale_layout().weight_ld(sh.k)), 1.0f / 64);
    DeviceBuffer ws(wsh.size() * 4);
    ws.copy_from_host(wsh.data(), wsh.size() * 4);
    for (int64_t m : {1, 8, 32, 128, 512, 2048, 8192}) {
      DeviceBuffer x8 = random_bytes(size_t(m * sh.k), gen, 0, 255, 0x7f);
      std::vector<float> xsh(size_t((sh.k / 128) * fp8_scale_layout().act_ld(m)), 1.0f / 16);
      DeviceBuffer xs(xsh.size() * 4), out(size_t(m * sh.n) * 2);
      xs.copy_from_host(xsh.data(), xsh.size() * 4);
      Fp8GemmParams p;
      p.x8 = x8.as<uint8_t>();
      p.x_scale = xs.as<float>();
      p.w8 = w8.as<uint8_t>();
      p.w_scale = ws.as<float>();
      p.out = out.as<uint16_t>();
      p.m = m;
      p.n = sh.n;
      p.k = sh.k;
      p.stream = s;
      const double bytes = double(sh.n * sh.k) + double(m * sh.k) + double(m * sh.n) * 2 + double(wsh.size() + xsh.size()) * 4;
      const bool lt = gemm.cublas_supports(p);
      for (auto path : {Fp8Gemm::Path::kCublasLt, Fp8Gemm::Path::kSimt}) {
        if (path == Fp8Gemm::Path::kCublasLt && !lt) {
          std::printf("fp8 %s M=%lld: cuBLASLt has no algorithm\n", sh.name, (long long)m);
          continue;
        }
        if (path == Fp8Gemm::Path::kSimt && m > 256) continue;
        const double us = time_us([&] { gemm.run(p, path); }, s);
        report(std::string("fp8 ") + (path == Fp8Gemm::Path::kSimt ? "simt " : "cublaslt ") + sh.name + " M=" +
                   std::to_string(m), us, bytes, 2.0 * double(m * sh.n * sh.k), kFp8Peak);
      }
    }
  }
}

// The decode GEMV (gemv.h; FP8 projections also on tensor cores, gemv_mma.cu) at the Flash decode
// projections, 1-8 token rows, L2-cold: each call
// reads the next of enough weight copies to pass 256 MB. Bytes: the weights (and their scales)
// once; the activations and outputs are a rounding error next to them.
void bench_gemv(cudaStream_t s, std::mt19937& gen) {
  struct Shape { const char* name; int64_t n, k, groups; bool fp8; GemvParams::Input input; };
  using In = GemvParams::Input;
  for (const Shape& sh : {Shape{"wq_a 1024x4096", 1024, 4096, 1, true, In::kQuant},
                          Shape{"wq_b 32768x1024", 32768, 1024, 1, true, In::kQuant},
                          Shape{"wkv 512x4096", 512, 4096, 1, true, In::kQuant},
                          Shape{"indexer wq_b 8192x1024", 8192, 1024, 1, true, In::kQuant},
                          Shape{"wo_b 4096x8192", 4096, 8192, 1, true, In::kQuant},
                          Shape{"shared w1 2048x4096", 2048, 4096, 1, true, In::kQuant},
                          Shape{"shared w2 4096x2048", 4096, 2048, 1, true, In::kQuant},
                          Shape{"wo_a 8x1024x4096 (fp8)", 8 * 1024, 4096, 8, true, In::kBf16},
                          Shape{"compressor bf16 1024x4096", 1024, 4096, 1, false, In::kBf16},
                          Shape{"indexer compressor bf16 256x4096", 256, 4096, 1, false, In::kBf16}}) {
    const size_t wbytes = size_t(sh.n * sh.k) * (sh.fp8 ? 1 : 2);
    const int64_t w_ld = fp8_scale_layout().weight_ld(sh.k);
    const size_t sbytes = sh.fp8 ? size_t((sh.n + 127) / 128 * w_ld) * 4 : 0;
    const int copies = int(std::max<size_t>(2, (size_t(256) << 20) / wbytes + 1));
    std::vector<DeviceBuffer> w, ws;
    for (int c = 0; c < copies; ++c) {
      w.push_back(random_bytes(wbytes, gen, 0, 255, sh.fp8 ? 0x7f : 0));
      if (sh.fp8) {
        std::vector<float> h(sbytes / 4, 1.0f / 64);
        ws.emplace_back(sbytes);
        ws.back().copy_from_host(h.data(), sbytes);
      }
    }
    const int64_t k_act = sh.k * sh.groups;
    for (int64_t m : {1, 2, 4, 8}) {
      if (m > gemv_max_tokens(k_act)) continue;  // the grouped wo_a stages 32,768 columns a row
      std::vector<uint16_t> xh(size_t(m * k_act));
      std::normal_distribution<float> nd(0.f, 1.f);
      for (auto& v : xh) v = f32_to_bf16(nd(gen));
      DeviceBuffer x(xh.size() * 2), y(size_t(m * sh.n) * 2);
      x.copy_from_host(xh.data(), xh.size() * 2);
      GemvParams p;
      p.input = sh.input;
      p.x = x.data();
      p.x_stride = k_act;
      p.x_bf16 = true;
      p.w_ld = w_ld;
      p.out_group = sh.groups > 1 ? sh.n / sh.groups : 0;
      p.y = y.data();
      p.y_stride = sh.n;
      p.round_product = sh.fp8 && sh.input == In::kQuant;
      p.m = m;
      p.n = sh.n;
      p.k = sh.k;
      p.k_act = k_act;
      p.stream = s;
      // The CUDA-core kernel, then (FP8 weights and activations) the tensor-core one.
      for (bool tc : {false, true}) {
        p.tensor_cores = tc;
        p.w_scale = sh.fp8 ? ws[0].as<float>() : nullptr;
        if (tc && !gemv_mma_serves(p)) continue;
        int next = 0;
        const double us = time_us([&] {
          p.w = w[size_t(next)].data();
          p.w_scale = sh.fp8 ? ws[size_t(next)].as<float>() : nullptr;
          next = (next + 1) % copies;
          gemv(p);
        }, s, 40);
        report(std::string(tc ? "gemv mma " : "gemv ") + sh.name + " M=" + std::to_string(m), us,
               double(wbytes + sbytes), 2.0 * double(m * sh.n * sh.k), kFp8Peak);
      }
    }
  }
}

void bench_fp4(cudaStream_t s, std::mt19937& gen) {
  struct Shape { const char* name; int64_t n, k; };
  for (const Shape& sh : {Shape{"expert w1 2048x4096", 2048, 4096}, Shape{"expert w2 4096x2048", 4096, 2048}}) {
    // (a) one expert, M rows; (b) decode step: T tokens x top-6 over 256 experts; (c) the 8K
    // prefill (8192 tokens x top-6: about 192 rows per expert), the mma.sync tile kernel against
    // the FP8 wgmma one.
    const int num_experts = 256;
    std::vector<DeviceBuffer> w, wsc;
    std::vector<const uint8_t*> pw, pws;
    for (int e = 0; e < num_experts; ++e) {
      w.push_back(random_bytes(size_t(sh.n * sh.k / 2), gen));
      wsc.push_back(random_bytes(size_t(sh.n * sh.k / 32), gen, 118, 124));
      pw.push_back(w.back().as<uint8_t>());
      pws.push_back(wsc.back().as<uint8_t>());
    }
    DeviceBuffer dpw(pw.size() * 8), dpws(pws.size() * 8);
    dpw.copy_from_host(pw.data(), pw.size() * 8);
    dpws.copy_from_host(pws.data(), pws.size() * 8);
    // The up projection of a gate/up pair: expert e takes expert e + 128's weights (other bytes).
    std::rotate(pw.begin(), pw.begin() + num_experts / 2, pw.end());
    std::rotate(pws.begin(), pws.begin() + num_experts / 2, pws.end());
    DeviceBuffer dpw_up(pw.size() * 8), dpws_up(pws.size() * 8);
    dpw_up.copy_from_host(pw.data(), pw.size() * 8);
    dpws_up.copy_from_host(pws.data(), pws.size() * 8);
    // BENCH_FP4_MODES (digits, e.g. "1"): only those of the three parts (0 one expert, 1 decode
    // routings, 2 prefill); all by default.
    const char* modes_env = std::getenv("BENCH_FP4_MODES");
    for (int mode = 0; mode < 3; ++mode) {
      if (modes_env && !std::strchr(modes_env, char('0' + mode))) continue;
      const std::vector<int64_t> ms = mode == 0   ? std::vector<int64_t>{1, 2, 4, 8, 16, 64, 128, 256}
                                      : mode == 1 ? std::vector<int64_t>{1, 2, 4, 8, 16, 64, 128, 256, 512}
                                                  : std::vector<int64_t>{8192};
      for (int64_t m : ms) {
        std::vector<int32_t> counts(size_t(num_experts), 0);
        if (mode == 0) {
          counts[0] = int32_t(m);
        } else {
          std::uniform_int_distribution<int> d(0, num_experts - 1);
          for (int64_t t = 0; t < m; ++t) {
            std::vector<int> chosen;
            while (chosen.size() < 6) {
              const int e = d(gen);
              if (std::find(chosen.begin(), chosen.end(), e) == chosen.end()) chosen.push_back(e);
            }
            for (int e : chosen) counts[size_t(e)]++;
          }
        }
        // kRotations copies of the routing with the experts shifted by 16 each, taken in turn by the
        // timed calls: a few experts' weights (4.25 MB each) would otherwise stay in L2 (50 MB on
        // an H100) from one call to the next and the bandwidth would be L2's, not HBM's.
        constexpr int kRotations = 16;
        int active = 0;
        int64_t rows = 0;
        std::vector<DeviceBuffer> doffs;
        for (int rot = 0; rot < kRotations; ++rot) {
          std::vector<int32_t> off(size_t(num_experts) + 1, 0);
          for (int e = 0; e < num_experts; ++e) {
            off[size_t(e) + 1] = off[size_t(e)] + counts[size_t((e + num_experts - 16 * rot) % num_experts)];
          }
          doffs.emplace_back(off.size() * 4);
          doffs.back().copy_from_host(off.data(), off.size() * 4);
          rows = off.back();
        }
        for (int e = 0; e < num_experts; ++e) active += counts[size_t(e)] > 0;
        DeviceBuffer x8 = random_bytes(size_t(rows * sh.k), gen, 0, 255, 0x7f);
        int rot_next = 0;
        auto rotate = [&](Fp4GroupedGemmParams& q) {
          q.row_offsets = doffs[size_t(rot_next++ % kRotations)].as<int32_t>();
        };
        std::vector<float> xsh(size_t(rows * (sh.k / 128)), 1.0f / 16);
        DeviceBuffer xs(xsh.size() * 4), out(size_t(rows * sh.n) * 2);
        xs.copy_from_host(xsh.data(), xsh.size() * 4);
        Fp4GroupedGemmParams p;
        p.x8 = x8.as<uint8_t>();
        p.x_scale = xs.as<float>();
        p.row_offsets = doffs[0].as<int32_t>();
        p.w = dpw.as<const uint8_t*>();
        p.w_scale = dpws.as<const uint8_t*>();
        p.out = out.as<uint16_t>();
        p.num_groups = num_experts;
        p.n = sh.n;
        p.k = sh.k;
        p.max_rows = rows;
        p.stream = s;
        const double bytes = double(active) * double(sh.n * sh.k) * (0.5 + 1.0 / 32) + double(rows * sh.k) * 1.03 +
                             double(rows * sh.n) * 2;
        const std::string shape = std::string(sh.name) +
                                  (mode == 0 ? " 1 expert M=" : mode == 1 ? " decode T=" : " prefill T=") +
                                  std::to_string(m) + (mode == 0 ? "" : " (" + std::to_string(active) + " experts)");
        if (mode == 2) {
          const double flops = 2.0 * double(rows * sh.n * sh.k);
          const double us_tile = time_us([&] { rotate(p); fp4_grouped_gemm_mma(p); }, s);
          report("fp4 tc tile " + shape, us_tile, bytes, flops, kFp8Peak);
          const double us_wg = time_us([&] { rotate(p); fp4_grouped_gemm_wgmma(p); }, s);
          report("fp4 wgmma " + shape, us_wg, bytes, flops, kFp8Peak);
          std::printf("  %s: tile %.1f TFLOP/s, wgmma %.1f TFLOP/s (%.2fx)\n", shape.c_str(), flops / us_tile * 1e-6,
                      flops / us_wg * 1e-6, us_tile / us_wg);
          // The warp-specialized kernel in each form: its activation tiles by cp.async, TMA and TMA
          // multicast, the last two also with the weight ring.
          struct WsForm {
            int a_copy;
            bool ring;
            const char* how;
          };
          for (const WsForm f : {WsForm{0, false, "cp.async"}, WsForm{1, false, "TMA"}, WsForm{2, false, "TMA pairs"},
                                 WsForm{1, true, "TMA + weight ring"}, WsForm{2, true, "TMA pairs + weight ring"}}) {
            p.ws_a_copy = f.a_copy;
            p.ws_weight_ring = f.ring;
            const char* how = f.how;
            const double us_ws = time_us([&] { rotate(p); fp4_grouped_gemm_wgmma_ws(p); }, s);
            report(std::string("fp4 wgmma ws (") + how + ") " + shape, us_ws, bytes, flops, kFp8Peak);
            std::printf("  %s: wgmma ws, A by %s: %.1f TFLOP/s = %.1f%% of the %.0f TFLOP/s FP8 peak used here (%.2fx "
                        "the wgmma kernel)\n",
                        shape.c_str(), how, flops / us_ws * 1e-6, 100.0 * flops / (us_ws * 1e-6) / kFp8Peak,
                        kFp8Peak * 1e-12, us_wg / us_ws);
          }
          p.ws_a_copy = 0;
          p.ws_weight_ring = false;
          continue;
        }
        // The CUDA-core kernel, then the two tensor-core kernels side by side (the tensor-core entry
        // dispatches to the GEMV up to a mean of kFp4GemvMaxMeanRows rows per expert, 6 for gate/up).
        const double us = time_us([&] { rotate(p); fp4_grouped_gemm(p); }, s);
        report("fp4 cuda cores " + shape, us, bytes, 2.0 * double(rows * sh.n * sh.k), kFp8Peak);
        const double us_tile = time_us([&] { rotate(p); fp4_grouped_gemm_mma(p); }, s);
        report("fp4 tc tile " + shape, us_tile, bytes, 2.0 * double(rows * sh.n * sh.k), kFp8Peak);
        const double us_gemv = time_us([&] { rotate(p); fp4_grouped_gemv(p); }, s);
        report("fp4 tc gemv " + shape, us_gemv, bytes, 2.0 * double(rows * sh.n * sh.k), kFp8Peak);
        // The GEMV's launch shapes side by side (rows a pass x k split; the line above is the one
        // fp4_gemv_shape picks).
        const Fp4GemvShape shapes[] = {{8, 4}, {8, 2}, {8, 1}, {16, 4}, {16, 2}, {16, 1}};
        if (mode == 1) {
          const Fp4GemvShape picked = fp4_gemv_shape(rows, num_experts, sh.k);
          std::printf("  %s: fp4_gemv_shape picks %d rows a pass, k split %d\n", shape.c_str(), picked.rows,
                      picked.k_split);
          for (const Fp4GemvShape& g : shapes) {
            const double us_g = time_us([&] { rotate(p); fp4_grouped_gemv(p, g); }, s);
            report("fp4 tc gemv r" + std::to_string(g.rows) + " k" + std::to_string(g.k_split) + " " + shape, us_g,
                   bytes, 2.0 * double(rows * sh.n * sh.k), kFp8Peak);
          }
        }
        if (mode == 1) {
          for (const int pf : {0, 128, 256}) {  // the weight copies' L2 prefetch (gemv_l2_prefetch)
            Fp4GroupedGemmParams pp = p;
            pp.gemv_l2_prefetch = pf;
            const double us_pf = time_us([&] { rotate(pp); fp4_grouped_gemv(pp); }, s);
            report("fp4 tc gemv l2 prefetch " + std::to_string(pf) + " " + shape, us_pf, bytes,
                   2.0 * double(rows * sh.n * sh.k), kFp8Peak);
          }
        }
        if (g_hbm_nominal > 0) {
          std::printf("  %s: tile %.0f GB/s, gemv %.0f GB/s = %.1f%% of the nominal %.2f TB/s; dispatch takes the %s\n",
                      shape.c_str(), bytes / us_tile * 1e-3, bytes / us_gemv * 1e-3,
                      100.0 * bytes / (us_gemv * 1e-6) / g_hbm_nominal, g_hbm_nominal * 1e-12,
                      fp4_tc_use_gemv(rows, num_experts, sh.n, sh.k) ? "gemv" : "tile kernel");
        }
        if (mode == 1 && sh.k >= 2 * sh.n) {  // gate and up: two GEMV launches against the pair's one
          DeviceBuffer out_up(size_t(rows * sh.n) * 2);
          Fp4GroupedGemmParams q = p;
          q.w = dpw_up.as<const uint8_t*>();
          q.w_scale = dpws_up.as<const uint8_t*>();
          q.out = out_up.as<uint16_t>();
          const double flops2 = 4.0 * double(rows * sh.n * sh.k);
          const double us_two = time_us([&] { rotate(p); q.row_offsets = p.row_offsets; fp4_grouped_gemv(p); fp4_grouped_gemv(q); }, s);
          report("fp4 tc gemv x2 (gate, up) " + shape, us_two, 2 * bytes, flops2, kFp8Peak);
          const double us_pair = time_us([&] { rotate(p); q.row_offsets = p.row_offsets; fp4_grouped_gemv_pair(p, q); }, s);
          report("fp4 tc gemv pair (gate + up) " + shape, us_pair, 2 * bytes, flops2, kFp8Peak);
          for (const Fp4GemvShape& g : shapes) {
            const double us_g = time_us([&] { rotate(p); q.row_offsets = p.row_offsets; fp4_grouped_gemv_pair(p, q, g); }, s);
            report("fp4 tc gemv pair r" + std::to_string(g.rows) + " k" + std::to_string(g.k_split) + " " + shape, us_g,
                   2 * bytes, flops2, kFp8Peak);
          }
          for (const int pf : {0, 128, 256}) {  // the weight copies' L2 prefetch (gemv_l2_prefetch)
            Fp4GroupedGemmParams pp = p, qq = q;
            pp.gemv_l2_prefetch = qq.gemv_l2_prefetch = pf;
            const double us_pf = time_us(
                [&] {
                  rotate(pp);
                  qq.row_offsets = pp.row_offsets;
                  fp4_grouped_gemv_pair(pp, qq);
                },
                s);
            report("fp4 tc gemv pair l2 prefetch " + std::to_string(pf) + " " + shape, us_pf, 2 * bytes, flops2,
                   kFp8Peak);
          }
          std::printf("  %s: gate + up in one launch %.1f us against two %.1f us (%.2fx)\n", shape.c_str(), us_pair,
                      us_two, us_two / us_pair);
        }
      }
    }
  }
}

// Activation helpers for the op benchmarks.
TensorView dev_view(Buffer& b, DType dt, std::vector<int64_t> dims) {
  TensorView v;
  v.data = b.data();
  v.dtype = dt;
  v.device = Device::kCuda;
  v.ndim = int(dims.size());
  int64_t st = 1;
  for (int d = v.ndim - 1; d >= 0; --d) {
    v.shape[size_t(d)] = dims[size_t(d)];
    v.stride[size_t(d)] = st;
    st *= dims[size_t(d)];
  }
  return v;
}

void bench_ops(std::mt19937& gen) {
  auto be = make_cuda_backend(0);
  auto* cb = static_cast<CudaBackend*>(be.get());
  cudaStream_t s = cb->stream();
  auto fill_random = [&](Buffer& b) {
    std::vector<uint16_t> h(b.bytes() / 2);
    std::normal_distribution<float> d(0.f, 1.f);
    for (auto& v : h) v = f32_to_bf16(d(gen));
    be->copy_to_device(b.data(), h.data(), h.size() * 2);
  };
  // Attention decode: 64 heads, window 128 + CSA top-512 / HCA 8192 entries (1M context).
  const int heads = 64, dim = 512;
  for (int ncomp : {512, 8192}) {
    Buffer q(size_t(heads * dim) * 2, Device::kCuda), win(size_t(128 * dim) * 2, Device::kCuda),
        comp(size_t(ncomp) * dim * 2, Device::kCuda), out(size_t(heads * dim) * 2, Device::kCuda);
    fill_random(q);
    fill_random(win);
    fill_random(comp);
    std::vector<float> sink_h(heads, 0.5f);
    WeightSource ss;
    ss.name = "sink";
    ss.dtype = DType::kF32;
    ss.rows = 1;
    ss.cols = heads;
    ss.data = sink_h.data();
    SparseAttentionParams p;
    p.q = dev_view(q, DType::kBF16, {1, heads, dim});
    p.window_kv = dev_view(win, DType::kBF16, {128, dim});
    p.comp_kv = dev_view(comp, DType::kBF16, {ncomp, dim});
    p.sink = be->upload_weight(ss);
    p.out = dev_view(out, DType::kBF16, {1, heads, dim});
    p.pos_begin = int64_t(ncomp) * 128 - 1;
    p.window_pos0 = p.pos_begin - 127;
    p.comp_ratio = 128;
    p.softmax_scale = 1.0f / std::sqrt(512.f);
    const double us = time_us([&] { be->sparse_attention(p); }, s);
    const double cand = 128.0 + ncomp;
    report("attention decode H64 cand=" + std::to_string(128 + ncomp), us, cand * dim * 2 + 2.0 * heads * dim * 2,
           4.0 * heads * cand * dim, kBf16Peak);
  }
  // Indexer scores + top-k at 1M context (262144 keys), one decode token.
  const int64_t keys = 262144;
  Buffer iq(size_t(64 * 128) * 2, Device::kCuda), ik(size_t(keys * 128) * 2, Device::kCuda), iw(64 * 2, Device::kCuda),
      sc(size_t(keys) * 4, Device::kCuda), ti(512 * 4, Device::kCuda);
  fill_random(iq);
  fill_random(ik);
  fill_random(iw);
  IndexerScoresParams ip;
  ip.q = dev_view(iq, DType::kBF16, {1, 64, 128});
  ip.keys = dev_view(ik, DType::kBF16, {keys, 128});
  ip.w = dev_view(iw, DType::kBF16, {1, 64});
  ip.scores = dev_view(sc, DType::kF32, {1, keys});
  ip.pos_begin = keys * 4 - 1;
  const double us_i = time_us([&] { be->indexer_scores(ip); }, s);
  report("indexer_scores decode keys=262144 H64", us_i, double(keys) * 128 * 2 + double(keys) * 4,
         2.0 * 64 * 128 * double(keys), kBf16Peak);
  TopkParams tp;
  tp.scores = ip.scores;
  tp.out_idx = dev_view(ti, DType::kI32, {1, 512});
  tp.k = 512;
  const double us_t = time_us([&] { be->topk(tp); }, s);
  report("topk 1x262144 k=512", us_t, double(keys) * 4, 0, kBf16Peak);
}

// A decode batch of 256 sequences at 8K context (2048 CSA entries and indexer keys each), per layer:
// indexer scores and sparse attention (window 128 + top-512 list) as 256 calls, one per sequence,
// against one batched call (indexer_scores_batch, sparse_attention_batch).
void bench_decode_batch(std::mt19937& gen) {
  auto be = make_cuda_backend(0);
  cudaStream_t s = static_cast<CudaBackend*>(be.get())->stream();
  auto fill_random = [&](Buffer& b) {
    std::vector<uint16_t> h(b.bytes() / 2);
    std::normal_distribution<float> d(0.f, 1.f);
    for (auto& v : h) v = f32_to_bf16(d(gen));
    be->copy_to_device(b.data(), h.data(), h.size() * 2);
  };
  const int64_t seqs = 256, heads = 64, dim = 512, entries = 2048, cand = 512, ih = 64, id = 128;
  const int64_t pos = entries * 4 - 1;
  Buffer q(size_t(seqs * heads * dim) * 2, Device::kCuda), win(size_t(seqs * 128 * dim) * 2, Device::kCuda),
      comp(size_t(entries * dim) * 2, Device::kCuda), out(size_t(seqs * heads * dim) * 2, Device::kCuda),
      list(size_t(seqs * cand) * 4, Device::kCuda);
  fill_random(q);
  fill_random(win);
  fill_random(comp);
  std::vector<int32_t> list_h(size_t(seqs * cand));
  std::uniform_int_distribution<int32_t> pick(0, int32_t(entries - 1));
  for (auto& v : list_h) v = pick(gen);
  be->copy_to_device(list.data(), list_h.data(), list_h.size() * 4);
  std::vector<float> sink_h(size_t(heads), 0.5f);
  WeightSource ss;
  ss.name = "sink";
  ss.cols = heads;
  ss.data = sink_h.data();
  const WeightView sink = be->upload_weight(ss);
  std::vector<SparseAttentionParams> parts(static_cast<size_t>(seqs));
  for (int64_t i = 0; i < seqs; ++i) {
    SparseAttentionParams& p = parts[size_t(i)];
    p.q = view_rows(dev_view(q, DType::kBF16, {seqs, heads, dim}), i, i + 1);
    p.window_kv = view_rows(dev_view(win, DType::kBF16, {seqs * 128, dim}), i * 128, (i + 1) * 128);
    p.comp_kv = dev_view(comp, DType::kBF16, {entries, dim});
    p.comp_idx = view_rows(dev_view(list, DType::kI32, {seqs, cand}), i, i + 1);
    p.sink = sink;
    p.out = view_rows(dev_view(out, DType::kBF16, {seqs, heads, dim}), i, i + 1);
    p.pos_begin = pos;
    p.window_pos0 = pos - 127;
    p.softmax_scale = 1.0f / std::sqrt(512.f);
    p.bf16_probs = p.out_bf16 = true;
  }
  const double attn_bytes = double(seqs) * ((128.0 + cand) * dim * 2 + 2.0 * heads * dim * 2);
  const double attn_flops = 4.0 * double(seqs) * heads * (128.0 + cand) * dim;
  const double us_each = time_us([&] { for (const auto& p : parts) be->sparse_attention(p); }, s, 5);
  report("attention decode x256 (256 calls)", us_each, attn_bytes, attn_flops, kBf16Peak);
  const double us_batch = time_us([&] { be->sparse_attention_batch({parts.data(), seqs}); }, s, 5);
  report("attention decode x256 (one batch)", us_batch, attn_bytes, attn_flops, kBf16Peak);

  Buffer iq(size_t(seqs * ih * id) * 2, Device::kCuda), ik(size_t(seqs * entries * id) * 2, Device::kCuda),
      iw(size_t(seqs * ih) * 2, Device::kCuda), sc(size_t(seqs * entries) * 4, Device::kCuda);
  fill_random(iq);
  fill_random(ik);
  fill_random(iw);
  std::vector<IndexerScoresParams> iparts(static_cast<size_t>(seqs));
  for (int64_t i = 0; i < seqs; ++i) {
    IndexerScoresParams& p = iparts[size_t(i)];
    p.q = view_rows(dev_view(iq, DType::kBF16, {seqs, ih, id}), i, i + 1);
    p.keys = view_rows(dev_view(ik, DType::kBF16, {seqs * entries, id}), i * entries, (i + 1) * entries);
    p.w = view_rows(dev_view(iw, DType::kBF16, {seqs, ih}), i, i + 1);
    p.scores = view_rows(dev_view(sc, DType::kF32, {seqs, entries}), i, i + 1);
    p.pos_begin = pos;
    p.bf16_arith = true;
  }
  const double idx_bytes = double(seqs) * entries * (id * 2 + 4), idx_flops = 2.0 * double(seqs) * ih * id * entries;
  const double us_i_each = time_us([&] { for (const auto& p : iparts) be->indexer_scores(p); }, s, 5);
  report("indexer_scores decode x256 (256 calls)", us_i_each, idx_bytes, idx_flops, kBf16Peak);
  const double us_i_batch = time_us([&] { be->indexer_scores_batch({iparts.data(), seqs}); }, s, 5);
  report("indexer_scores decode x256 (one batch)", us_i_batch, idx_bytes, idx_flops, kBf16Peak);
}

// Indexer scores of prefill chunks under the official numerics (the tensor-core kernel): the first
// 8K chunk (8192 queries x 2048 keys, pos 0: causal, about half the pairs visible) with F32 and
// compact FP4 keys, and a chunk of 1024 queries at the end of a 1M context (262,144 keys, all
// visible). TFLOP/s counts 2 x 64 x 128 flops per (query, key) of the call, masked or not.
void bench_indexer_prefill(std::mt19937& gen) {
  auto be = make_cuda_backend(0);
  auto* cb = static_cast<CudaBackend*>(be.get());
  cudaStream_t s = cb->stream();
  auto fill = [&](Buffer& b, DType dt) {
    std::normal_distribution<float> d(0.f, 1.f);
    if (dt == DType::kF32) {
      std::vector<float> h(b.bytes() / 4);
      for (auto& v : h) v = round_bf16(d(gen));
      be->copy_to_device(b.data(), h.data(), h.size() * 4);
    } else {
      std::vector<uint16_t> h(b.bytes() / 2);
      for (auto& v : h) v = f32_to_bf16(d(gen));
      be->copy_to_device(b.data(), h.data(), h.size() * 2);
    }
  };
  struct Shape { const char* name; int64_t n, keys, pos0; bool compact; };
  for (const Shape& sh : {Shape{"indexer_scores prefill 8192x2048 pos 0 F32 keys", 8192, 2048, 0, false},
                          Shape{"indexer_scores prefill 8192x2048 pos 0 FP4 keys", 8192, 2048, 0, true},
                          Shape{"indexer_scores prefill 1024x262144 F32 keys", 1024, 262144, 4 * 262144 - 1024, false}}) {
    const KvRowLayout fp4 = fp4_kv_layout(128);
    Buffer q(size_t(sh.n * 64 * 128) * 2, Device::kCuda), w(size_t(sh.n * 64) * 2, Device::kCuda),
        sc(size_t(sh.n * sh.keys) * 4, Device::kCuda);
    fill(q, DType::kBF16);
    fill(w, DType::kBF16);
    DeviceBuffer ck;
    Buffer k;
    IndexerScoresParams p;
    if (sh.compact) {
      ck = random_bytes(size_t(sh.keys * fp4.row_bytes), gen, 0, 126);  // scales below 2^0: finite
      p.keys = TensorView(ck.data(), DType::kU8, {sh.keys, fp4.row_bytes}, Device::kCuda);
      p.key_layout = fp4;
    } else {
      k = Buffer(size_t(sh.keys * 128) * 4, Device::kCuda);
      fill(k, DType::kF32);
      p.keys = dev_view(k, DType::kF32, {sh.keys, 128});
    }
    p.q = dev_view(q, DType::kBF16, {sh.n, 64, 128});
    p.w = dev_view(w, DType::kBF16, {sh.n, 64});
    p.scores = dev_view(sc, DType::kF32, {sh.n, sh.keys});
    p.weight_scale = 1.0f / std::sqrt(8192.f);
    p.pos_begin = sh.pos0;
    p.bf16_arith = true;
    const double us = time_us([&] { be->indexer_scores(p); }, s, 5);
    const double key_bytes = double(sh.keys) * (sh.compact ? double(fp4.row_bytes) : 512.0);
    report(sh.name, us, double(sh.n) * 64 * 128 * 2 + key_bytes + double(sh.n) * double(sh.keys) * 4,
           2.0 * 64 * 128 * double(sh.n) * double(sh.keys), kBf16Peak);
  }
}

}  // namespace
}  // namespace v4rt::kernels::cuda

int main(int argc, char** argv) {
  using namespace v4rt::kernels::cuda;
  if (device_count() == 0) {
    std::printf("bench_cuda: no CUDA device\n");
    return 0;
  }
  // bench_cuda [TSV] [SECTION...]: the sections named (copy fp8 gemv fp4 ops indexer decode), or all.
  if (argc > 1 && std::string(argv[1]) != "-") g_tsv = std::fopen(argv[1], "w");
  std::vector<std::string> only(argv + std::min(argc, 2), argv + argc);
  auto run = [&](const char* name) { return only.empty() || std::find(only.begin(), only.end(), name) != only.end(); };
  CUDA_CHECK(cudaSetDevice(0));
  install_device_allocator();
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
  const std::string dev_name = prop.name;
  g_hbm_nominal = dev_name.find("H200") != std::string::npos   ? 4.8e12
                  : dev_name.find("H100") != std::string::npos ? 3.35e12
                                                               : 0;
  std::mt19937 gen(42);
  Stream stream;
  bench_copy(stream.get());  // always: the roofline bandwidth of every other figure
  if (run("fp8")) bench_fp8(stream.get(), gen);
  if (run("gemv")) bench_gemv(stream.get(), gen);
  if (run("fp4")) bench_fp4(stream.get(), gen);
  if (run("ops")) bench_ops(gen);
  if (run("indexer")) bench_indexer_prefill(gen);
  if (run("decode")) bench_decode_batch(gen);
  if (g_tsv) std::fclose(g_tsv);
  return 0;
}
