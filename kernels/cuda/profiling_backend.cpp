// SPDX-License-Identifier: MIT
// ProfilingBackend: forwards every call to the inner CUDA backend; when enabled, brackets each op
// with a pair of events on the inner stream and books its ideal bytes / FLOPs under a family name.
#include "kernels/cuda/profiling_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <set>
#include <vector>

#include "common/check.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"

namespace v4rt::kernels::cuda {

namespace {

constexpr double kPeakBf16 = 790e12;
constexpr double kPeakFp8 = 1580e12;

double view_bytes(const TensorView& v) {
  if (!v.data) return 0;
  double n = 1;
  for (int i = 0; i < v.ndim; ++i) n *= double(v.shape[i]);
  return n * double(dtype_size(v.dtype));
}

double weight_bytes(const WeightView& w) {
  const double n = double(w.rows) * double(w.cols);
  switch (w.dtype) {
    case DType::kF8E4M3: return n + double((w.rows + 127) / 128) * double((w.cols + 127) / 128);
    case DType::kFP4: return n / 2 + n / 32;
    case DType::kBF16: return 2 * n;
    default: return 4 * n;
  }
}

const char* dtype_tag(DType d) {
  switch (d) {
    case DType::kF8E4M3: return "fp8";
    case DType::kFP4: return "fp4";
    case DType::kBF16: return "bf16";
    default: return "f32";
  }
}

// The ideal bytes moved and FLOPs of one op call.
struct Cost {
  double bytes = 0, flops = 0;
  Cost& operator+=(const Cost& o) {
    bytes += o.bytes;
    flops += o.flops;
    return *this;
  }
};

// FLOPs of the (query, key) pairs the query sees (Backend::indexer_scores: keys below
// (pos + 1) / ratio); the kernels skip the tiles no query of a block sees.
Cost indexer_cost(const IndexerScoresParams& p) {
  const int64_t key_end = p.key_end < 0 ? p.keys.shape[0] : p.key_end, keys = key_end - p.key_begin;
  const int64_t heads = (p.h_end < 0 ? p.q.shape[1] : p.h_end) - p.h_begin;
  const double kb = view_bytes(p.keys) * double(keys) / double(std::max<int64_t>(p.keys.shape[0], 1));
  double pairs = 0;
  for (int64_t t = 0; t < p.q.shape[0]; ++t) {
    const int64_t seen = std::min(key_end, (p.pos_begin + t + 1) / std::max(p.ratio, 1)) - p.key_begin;
    pairs += double(std::clamp<int64_t>(seen, 0, keys));
  }
  return {kb + view_bytes(p.q) + view_bytes(p.scores), 2.0 * pairs * double(heads) * double(p.q.shape[2])};
}

// The peak of the kernel that serves an indexer call by default: compact FP4 keys under the
// official numerics run on FP8 tensor cores (CudaBackendOptions::indexer_fp8), others on bf16.
double indexer_peak(const IndexerScoresParams& p) {
  return p.bf16_arith && p.key_layout.format == KvFormat::kFp4 ? kPeakFp8 : kPeakBf16;
}

Cost attention_cost(const SparseAttentionParams& p) {
  const int64_t n = p.q.shape[0], heads = (p.h_end < 0 ? p.q.shape[1] : p.h_end) - p.h_begin, dim = p.q.shape[2];
  double win = 0, comp = 0;  // candidates read per query token, summed
  const int64_t num_comp = p.comp_kv.data ? p.comp_kv.shape[0] : 0;
  for (int64_t t = 0; t < n; ++t) {
    const int64_t pos = p.pos_begin + t;
    win += double(std::min<int64_t>(pos + 1, p.window));
    if (p.comp_idx.data) comp += double(p.comp_idx.shape[1]);
    else if (p.comp_ratio > 0) comp += double(std::min<int64_t>(num_comp, (pos + 1) / p.comp_ratio));
  }
  const double cand = win + comp;
  const double win_row = double(dim) * double(dtype_size(p.window_kv.dtype));
  const double comp_row = p.comp_layout.compact() ? double(p.comp_layout.row_bytes)  // compact rows as stored
                                                  : double(dim) * double(dtype_size(p.comp_kv.dtype));
  return {win * win_row + comp * comp_row + view_bytes(p.q) + view_bytes(p.out), 4.0 * cand * double(heads) * double(dim)};
}

class Profiler final : public ProfilingBackend {
 public:
  explicit Profiler(Backend& inner) : inner_(inner) {
    auto* cb = dynamic_cast<CudaBackend*>(&inner);
    CHECK(cb) << "make_profiling_backend: the inner backend is not the CUDA backend";
    stream_ = cb->stream();
  }
  ~Profiler() override {
    for (auto& c : calls_) {
      (void)cudaEventDestroy(c.begin);
      (void)cudaEventDestroy(c.end);
    }
    for (cudaEvent_t e : pool_) (void)cudaEventDestroy(e);
  }

  void set_enabled(bool on) override { enabled_ = on; }
  void reset() override {
    synchronize();
    for (auto& c : calls_) {
      pool_.push_back(c.begin);
      pool_.push_back(c.end);
    }
    calls_.clear();
  }
  std::map<std::string, OpStat> stats() override {
    synchronize();
    std::map<std::string, OpStat> out;
    for (const Call& c : calls_) {
      float ms = 0;
      CUDA_CHECK(cudaEventElapsedTime(&ms, c.begin, c.end));
      OpStat& s = out[c.family];
      s.calls++;
      s.ms += ms;
      s.bytes += c.bytes;
      s.flops += c.flops;
      s.peak_flops = c.peak;
    }
    return out;
  }

  std::string name() const override { return inner_.name(); }
  Device device() const override { return inner_.device(); }
  void* stream_handle() const override { return inner_.stream_handle(); }
  int device_index() const override { return inner_.device_index(); }
  DType act_dtype() const override { return inner_.act_dtype(); }
  bool supports(Op op) const override { return inner_.supports(op); }
  bool supports_kv_format(KvFormat f) const override { return inner_.supports_kv_format(f); }
  WeightView upload_weight(const WeightSource& s) override { return inner_.upload_weight(s); }
  void copy_to_device(void* d, const void* s, size_t b) override { inner_.copy_to_device(d, s, b); }
  void copy_to_host(void* d, const void* s, size_t b) override { inner_.copy_to_host(d, s, b); }
  void copy_rows(const TensorView& d, const TensorView& s) override {
    timed("copy_rows", 2 * view_bytes(s), 0, kPeakBf16, [&] { inner_.copy_rows(d, s); });
  }
  void copy_rows_batch(const RowCopy* c, size_t n) override {
    double bytes = 0;
    for (size_t i = 0; i < n; ++i) bytes += 2 * view_bytes(c[i].src);
    timed("copy_rows_batch", bytes, 0, kPeakBf16, [&] { inner_.copy_rows_batch(c, n); });
  }
  void fill(const TensorView& d, float v) override {
    timed("fill", view_bytes(d), 0, kPeakBf16, [&] { inner_.fill(d, v); });
  }
  void synchronize() override { inner_.synchronize(); }
  // While timing, every op runs at once between its own events: no step graph.
  bool graphs() const override { return !enabled_ && inner_.graphs(); }
  void begin_graph() override {
    if (!enabled_) inner_.begin_graph();
  }
  void end_graph() override {
    if (!enabled_) inner_.end_graph();
  }
  void abort_graph() override {
    if (!enabled_) inner_.abort_graph();
  }
  void graph_segment() override {
    if (!enabled_) inner_.graph_segment();
  }
  GraphStats graph_stats() const override { return inner_.graph_stats(); }
  void profile_range(bool begin) override { inner_.profile_range(begin); }

  void rms_norm(const RmsNormParams& p) override {
    timed("rms_norm", 2 * view_bytes(p.x), 0, kPeakBf16, [&] { inner_.rms_norm(p); });
  }
  void rope(const RopeParams& p) override { timed("rope", 2 * view_bytes(p.x), 0, kPeakBf16, [&] { inner_.rope(p); }); }
  void hc_pre(const HcPreParams& p) override {
    const double t = double(p.x.shape[0]);
    timed("hc_pre", view_bytes(p.x) + weight_bytes(p.fn) + view_bytes(p.a),
          2 * t * double(p.fn.rows) * double(p.fn.cols), kPeakBf16, [&] { inner_.hc_pre(p); });
  }
  void hc_post(const HcPostParams& p) override {
    timed("hc_post", view_bytes(p.o) + view_bytes(p.x_old) + view_bytes(p.x_new), 0, kPeakBf16,
          [&] { inner_.hc_post(p); });
  }
  void hc_head(const HcHeadParams& p) override {
    const double t = double(p.x.shape[0]);
    timed("hc_head", view_bytes(p.x) + weight_bytes(p.fn) + view_bytes(p.y),
          2 * t * double(p.fn.rows) * double(p.fn.cols), kPeakBf16, [&] { inner_.hc_head(p); });
  }
  void linear(const LinearParams& p) override {
    const bool fp8 = p.w.dtype == DType::kF8E4M3 && p.act_quant_fp8;
    // FP8 weights without act quant run as bf16 copies (cuda_backend.cu).
    const double wb = (p.w.dtype == DType::kF8E4M3 && !fp8) ? 2.0 * double(p.w.rows) * double(p.w.cols) : weight_bytes(p.w);
    const std::string fam = std::string("linear ") + (p.w.dtype == DType::kF8E4M3 && !fp8 ? "bf16(fp8)" : dtype_tag(p.w.dtype)) +
                            " " + std::to_string(p.w.rows) + "x" + std::to_string(p.w.cols);
    timed(fam, wb + view_bytes(p.x) + view_bytes(p.y), 2.0 * double(p.x.shape[0]) * double(p.w.rows) * double(p.w.cols),
          fp8 ? kPeakFp8 : kPeakBf16, [&] { inner_.linear(p); });
  }
  void grouped_linear(const GroupedLinearParams& p) override {
    const int64_t groups = p.x.shape[1];
    const int g0 = p.g_begin, g1 = p.g_end < 0 ? int(groups) : p.g_end;
    const double frac = double(g1 - g0) / double(groups);
    const double wb = 2.0 * double(p.w.rows) * double(p.w.cols) * frac;  // bf16 copy
    timed("grouped_linear (wo_a)", wb + view_bytes(p.x) + view_bytes(p.y),
          2.0 * double(p.x.shape[0]) * double(p.w.rows) * double(p.w.cols) * frac, kPeakBf16,
          [&] { inner_.grouped_linear(p); });
  }
  void compressor_pool(const CompressorPoolParams& p) override {
    timed("compressor_pool", view_bytes(p.kv) + view_bytes(p.score) + view_bytes(p.out), 0, kPeakBf16,
          [&] { inner_.compressor_pool(p); });
  }
  void compressor_pool_batch(const CompressorPoolBatchParams& p) override {
    double bytes = 0;
    for (int64_t i = 0; i < p.num_parts; ++i)
      bytes += view_bytes(p.parts[i].kv) + view_bytes(p.parts[i].score) + view_bytes(p.parts[i].out);
    timed("compressor_pool_batch", bytes, 0, kPeakBf16, [&] { inner_.compressor_pool_batch(p); });
  }
  void hadamard(const HadamardParams& p) override {
    timed("hadamard", 2 * view_bytes(p.x), 0, kPeakBf16, [&] { inner_.hadamard(p); });
  }
  void indexer_scores(const IndexerScoresParams& p) override {
    const Cost c = indexer_cost(p);
    timed("indexer_scores", c.bytes, c.flops, indexer_peak(p), [&] { inner_.indexer_scores(p); });
  }
  void indexer_scores_batch(const IndexerScoresBatchParams& p) override {
    Cost c;
    for (int64_t i = 0; i < p.num_parts; ++i) c += indexer_cost(p.parts[i]);
    const double peak = p.num_parts > 0 ? indexer_peak(p.parts[0]) : kPeakBf16;
    timed("indexer_scores_batch", c.bytes, c.flops, peak, [&] { inner_.indexer_scores_batch(p); });
  }
  void topk(const TopkParams& p) override {
    timed("topk", view_bytes(p.scores) + view_bytes(p.out_idx), 0, kPeakBf16, [&] { inner_.topk(p); });
  }
  void sparse_attention(const SparseAttentionParams& p) override {
    const Cost c = attention_cost(p);
    timed("sparse_attention", c.bytes, c.flops, kPeakBf16, [&] { inner_.sparse_attention(p); });
  }
  void sparse_attention_batch(const SparseAttentionBatchParams& p) override {
    Cost c;
    for (int64_t i = 0; i < p.num_parts; ++i) c += attention_cost(p.parts[i]);
    timed("sparse_attention_batch", c.bytes, c.flops, kPeakBf16, [&] { inner_.sparse_attention_batch(p); });
  }
  void moe_gate(const MoeGateParams& p) override {
    timed("moe_gate", weight_bytes(p.gate) + view_bytes(p.x), 2.0 * double(p.x.shape[0]) * double(p.gate.rows) * double(p.gate.cols),
          kPeakBf16, [&] { inner_.moe_gate(p); });
  }
  void moe_experts(const MoeExpertsParams& p) override {
    double bytes = 0, flops = 0;
    if (enabled_ && p.idx.data) {  // the experts actually touched (reads the routing back: profiling only)
      inner_.synchronize();
      std::vector<int32_t> idx(size_t(p.idx.shape[0] * p.idx.shape[1]));
      CHECK_EQ(p.idx.stride[0], p.idx.shape[1]);
      inner_.copy_to_host(idx.data(), p.idx.data, idx.size() * 4);
      std::set<int32_t> used;
      int64_t rows = 0;
      for (int32_t e : idx)
        if (e >= p.e_begin && e < p.e_end) {
          used.insert(e);
          ++rows;
        }
      for (int32_t e : used) bytes += weight_bytes(p.w1[e]) + weight_bytes(p.w2[e]) + weight_bytes(p.w3[e]);
      if (!used.empty()) {
        const WeightView& w1 = p.w1[*used.begin()];
        flops = 2.0 * double(rows) * 3.0 * double(w1.rows) * double(w1.cols);
      }
      bytes += view_bytes(p.x) + view_bytes(p.out);
    }
    timed("moe_experts (fp4)", bytes, flops, p.official ? kPeakFp8 : kPeakBf16, [&] { inner_.moe_experts(p); });
  }
  void swiglu(const SwigluParams& p) override {
    timed("swiglu", view_bytes(p.gate) + view_bytes(p.up) + view_bytes(p.h), 0, kPeakBf16, [&] { inner_.swiglu(p); });
  }
  void embedding(const EmbeddingParams& p) override {
    timed("embedding", 2 * view_bytes(p.out), 0, kPeakBf16, [&] { inner_.embedding(p); });
  }
  void add(const AddParams& p) override {
    timed("add", view_bytes(p.a) + view_bytes(p.b) + view_bytes(p.out), 0, kPeakBf16, [&] { inner_.add(p); });
  }
  void qdq(const QdqParams& p) override { timed("qdq", 2 * view_bytes(p.x), 0, kPeakBf16, [&] { inner_.qdq(p); }); }
  void kv_pack(const KvPackParams& p) override {
    timed("kv_pack", view_bytes(p.x) + view_bytes(p.out), 0, kPeakBf16, [&] { inner_.kv_pack(p); });
  }
  // Ideal traffic: the logits read once; ids and logprobs are negligible.
  void sample(const SampleParams& p) override {
    timed("sample", view_bytes(p.logits), 0, kPeakBf16, [&] { inner_.sample(p); });
  }

 private:
  struct Call {
    std::string family;
    cudaEvent_t begin, end;
    double bytes, flops, peak;
  };
  cudaEvent_t event() {
    if (!pool_.empty()) {
      cudaEvent_t e = pool_.back();
      pool_.pop_back();
      return e;
    }
    cudaEvent_t e;
    CUDA_CHECK(cudaEventCreate(&e));
    return e;
  }
  template <typename F>
  void timed(const std::string& family, double bytes, double flops, double peak, F&& f) {
    if (!enabled_) {
      f();
      return;
    }
    Call c{family, event(), event(), bytes, flops, peak};
    CUDA_CHECK(cudaEventRecord(c.begin, stream_));
    f();
    CUDA_CHECK(cudaEventRecord(c.end, stream_));
    calls_.push_back(std::move(c));
  }

  Backend& inner_;
  cudaStream_t stream_ = nullptr;
  bool enabled_ = false;
  std::vector<Call> calls_;
  std::vector<cudaEvent_t> pool_;
};

}  // namespace

std::unique_ptr<ProfilingBackend> make_profiling_backend(Backend& inner) { return std::make_unique<Profiler>(inner); }

DeviceInfo device_info() {
  DeviceInfo d;
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  d.name = prop.name;
  d.sms = prop.multiProcessorCount;
  size_t free_b = 0, total_b = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  d.free_bytes = free_b;
  d.total_bytes = total_b;
  return d;
}

}  // namespace v4rt::kernels::cuda
