// SPDX-License-Identifier: MIT
// CudaBackend: weight upload (FP8/FP4 kept in place, fp32 block scales for cuBLASLt made once),
// memory movement on the backend's stream, and the dispatch of every op to its launcher. The
// projections pick their GEMM by weight dtype: FP8 -> act_quant + cuBLASLt block-scaled FP8,
// FP4 -> act_quant + grouped FP4 kernel, BF16/F32 -> cuBLASLt dense with fp32 accumulate. Without
// the official flags (act_quant_fp8 / MoeExpertsParams::official) FP8 weights run as bf16 copies;
// CudaBackendOptions::reference says how fp32 activations enter the bf16 GEMMs (hi + lo split by
// default) and whether the routed experts run in fp32 or bf16 (see factory.h).
#include "kernels/cuda/cuda_backend.h"

#include <cuda_profiler_api.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "common/check.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/fp4_gemm.h"
#include "kernels/cuda/gemv.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ops.h"

namespace v4rt::kernels::cuda {

namespace {

size_t align_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

Act dense_act(void* data, int64_t stride, bool bf16) {
  Act a;
  a.data = data;
  a.stride = stride;
  a.bf16 = bf16;
  return a;
}

// The one-group table of a plain FP4 linear run through the grouped expert GEMM.
struct Fp4Table {
  int32_t offsets[4];
  const void* w;
  const void* scale;
};

// Writes a small host value (a pointer table) into device memory in stream order: the value
// travels as the kernel's argument, so the host frame that held it may end at once (a
// cudaMemcpyAsync from it would need a synchronization first) and the write can sit in a graph.
template <class T>
__global__ void store_value_kernel(T* dst, T value) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  *dst = value;
}

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(int device, const CudaBackendOptions& options) {
  const int count = device_count();
  V4RT_REQUIRE(count > 0, "cuda backend: no CUDA device is present");
  if (device >= 0) {
    V4RT_REQUIRE(device < count, "cuda backend: device " << device << " of " << count);
    CUDA_CHECK(cudaSetDevice(device));
  }
  install_device_allocator();
  return std::make_unique<CudaBackend>(options);
}

CudaBackend::CudaBackend(const CudaBackendOptions& options) : scratch_(kNumSlots), options_(options) {
  // The model allocates its scratch tensors per op through common Buffer: without stream-ordered
  // allocation every free would synchronize the device (cudaFree). All of this backend's work is
  // on its one stream, so the first backend makes the allocator ordered on it.
  if (!allocation_stream() && !options.sync_alloc) set_allocation_stream(stream_.get());
  if (options.sync_each_kernel) set_sync_after_ops(true);
  graph_.set_replay(options.graph_replay);
  graph_.set_segments(options.graph_segments);
  set_programmatic_launch(options.pdl);
  CUDA_CHECK(cudaGetDevice(&device_));
  V4RT_REQUIRE(options_.expert_tc_min_rows >= 0,
               "CudaBackendOptions::expert_tc_min_rows (debug.cuda_expert_tc_min_rows) must be >= 0, got "
                   << options_.expert_tc_min_rows);
}

bool CudaBackend::expert_tensor_cores(int64_t max_rows, int64_t groups) const {
  const int64_t min_rows = options_.expert_tc_min_rows;
  return min_rows > 0 && max_rows >= min_rows * std::max<int64_t>(1, std::min(groups, max_rows));
}

CudaBackend::~CudaBackend() {
  (void)cudaStreamSynchronize(stream_.get());
  if (allocation_stream() == stream_.get()) set_allocation_stream(nullptr);
}

bool CudaBackend::supports(Op op) const {
  (void)op;
  return true;
}

void* CudaBackend::scratch(Slot slot, size_t bytes) {
  DeviceBuffer& b = scratch_[size_t(slot)];
  if (b.bytes() < bytes) {
    if (graph_.recording()) graph_.retire(std::move(b));  // the step's recorded ops still use it
    b = DeviceBuffer(align_up(bytes + bytes / 4, 256));
  }
  return b.data();
}

// --- step graphs ---------------------------------------------------------------------------------

bool CudaBackend::graphs() const { return options_.graphs && !options_.sync_each_kernel && !sync_after_ops(); }
void CudaBackend::begin_graph() {
  if (graphs()) graph_.begin();
}
void CudaBackend::end_graph() { graph_.end(); }
void CudaBackend::abort_graph() { graph_.abort(); }
void CudaBackend::graph_segment() { graph_.segment(); }

void CudaBackend::profile_range(bool begin) {
  CUDA_CHECK(cudaSetDevice(device_));
  if (begin)
    CUDA_CHECK(cudaProfilerStart());
  else
    CUDA_CHECK(cudaProfilerStop());
}

// --- memory --------------------------------------------------------------------------------------

WeightView CudaBackend::upload_weight(const WeightSource& s) {
  const int64_t row_end = s.row_end < 0 ? s.rows : s.row_end;
  V4RT_REQUIRE(s.row_begin >= 0 && s.row_begin <= row_end && row_end <= s.rows,
               "weight " << s.name << ": row range [" << s.row_begin << ", " << row_end << ") outside " << s.rows);
  V4RT_REQUIRE(s.data != nullptr, "weight " << s.name << ": no data");
  const int64_t rows = row_end - s.row_begin, cols = s.cols;
  WeightView w;
  w.rows = rows;
  w.cols = cols;
  w.device = Device::kCuda;
  auto upload = [&](const void* src, size_t bytes) -> void* {
    weights_.emplace_back(std::max<size_t>(bytes, 1));
    if (bytes) copy_to_device(weights_.back().data(), src, bytes);
    return weights_.back().data();
  };
  switch (s.dtype) {
    case DType::kF32:
    case DType::kBF16: {
      const size_t es = dtype_size(s.dtype);
      w.dtype = s.dtype;
      w.data = upload(static_cast<const char*>(s.data) + size_t(s.row_begin * cols) * es, size_t(rows * cols) * es);
      break;
    }
    case DType::kI64:
    case DType::kI32: {
      std::vector<int32_t> v(size_t(rows * cols));
      for (int64_t i = 0; i < rows * cols; ++i) {
        const int64_t j = s.row_begin * cols + i;
        v[size_t(i)] = s.dtype == DType::kI64 ? int32_t(static_cast<const int64_t*>(s.data)[j])
                                              : static_cast<const int32_t*>(s.data)[j];
      }
      w.dtype = DType::kI32;
      w.data = upload(v.data(), v.size() * 4);
      break;
    }
    case DType::kF8E4M3: {
      V4RT_REQUIRE(s.scale != nullptr, "weight " << s.name << ": FP8 without scale");
      V4RT_REQUIRE(s.row_begin % 128 == 0, "weight " << s.name << ": FP8 rows must start on a 128-row block");
      const int64_t scols = (cols + 127) / 128, rb0 = s.row_begin / 128, nrb = (rows + 127) / 128;
      w.dtype = DType::kF8E4M3;
      w.data = upload(static_cast<const uint8_t*>(s.data) + s.row_begin * cols, size_t(rows * cols));
      const uint8_t* sc = static_cast<const uint8_t*>(upload(s.scale + rb0 * scols, size_t(nrb * scols)));
      w.scale = sc;
      Fp8ScaleEntry e;
      e.bytes = size_t(nrb * scols);
      e.scale_cols = scols;
      e.ld = fp8_scale_layout().weight_ld(cols);
      weights_.emplace_back(size_t(nrb * e.ld) * 4);
      e.f32 = weights_.back().as<float>();
      e8m0_to_f32_scales(sc, nrb, scols, e.f32, e.ld, stream_.get());
      fp8_scales_[sc] = e;
      break;
    }
    case DType::kFP4: {
      V4RT_REQUIRE(s.scale != nullptr, "weight " << s.name << ": FP4 without scale");
      V4RT_REQUIRE(cols % 128 == 0, "weight " << s.name << ": FP4 columns " << cols << " not a multiple of 128");
      w.dtype = DType::kFP4;
      w.data = upload(static_cast<const uint8_t*>(s.data) + s.row_begin * (cols / 2), size_t(rows * cols / 2));
      w.scale = static_cast<const uint8_t*>(upload(s.scale + s.row_begin * (cols / 32), size_t(rows * cols / 32)));
      break;
    }
    default:
      V4RT_FAIL("weight " << s.name << ": dtype " << dtype_name(s.dtype) << " not supported by the cuda backend");
  }
  synchronize();
  return w;
}

const float* CudaBackend::fp8_weight_scale_f32(const WeightView& w) const {
  CHECK(w.dtype == DType::kF8E4M3 && w.scale) << "not an FP8 weight";
  auto it = fp8_scales_.upper_bound(w.scale);
  CHECK(it != fp8_scales_.begin()) << "FP8 weight was not uploaded by this backend";
  --it;
  const size_t off = size_t(w.scale - it->first);
  CHECK_LT(off, it->second.bytes) << "FP8 weight was not uploaded by this backend";
  CHECK_EQ(off % size_t(it->second.scale_cols), 0u);
  CHECK_EQ(it->second.ld, fp8_scale_layout().weight_ld(w.cols)) << "FP8 scale layout changed after upload";
  return it->second.f32 + int64_t(off / size_t(it->second.scale_cols)) * it->second.ld;
}

const void* CudaBackend::bf16_copy_of_fp8(const WeightView& w) {
  auto it = bf16_copies_.find(w.data);
  if (it != bf16_copies_.end()) return it->second;
  weights_.emplace_back(size_t(w.rows * w.cols) * 2);
  uint16_t* out = weights_.back().as<uint16_t>();
  dequant_fp8_to_bf16(static_cast<const uint8_t*>(w.data), w.scale, w.rows, w.cols, out, stream_.get());
  bf16_copies_[w.data] = out;
  return out;
}

const void* CudaBackend::f32_copy(const WeightView& w) {
  auto it = f32_copies_.find(w.data);
  if (it != f32_copies_.end()) return it->second;
  const void* src = w.dtype == DType::kF8E4M3 ? bf16_copy_of_fp8(w) : w.data;
  CHECK(w.dtype == DType::kF8E4M3 || w.dtype == DType::kBF16) << "f32_copy of " << dtype_name(w.dtype);
  weights_.emplace_back(size_t(w.rows * w.cols) * 4);
  float* out = weights_.back().as<float>();
  launch_convert(dense_act(const_cast<void*>(src), w.cols, true), dense_act(out, w.cols, false), w.rows, w.cols, false,
                 stream_.get());
  f32_copies_[w.data] = out;
  return out;
}

void CudaBackend::copy_to_device(void* dst, const void* src_host, size_t bytes) {
  if (!bytes) return;
  if (graph_.recording()) {  // the graph copies from staging when it runs; the caller's memory is free now
    copy_async(dst, graph_.stage(src_host, bytes), bytes, cudaMemcpyHostToDevice, stream_.get());
    return;
  }
  CUDA_CHECK(cudaMemcpyAsync(dst, src_host, bytes, cudaMemcpyHostToDevice, stream_.get()));
  stream_.synchronize();
}

namespace {
// A host read inside a recorded step would read memory no op has written yet.
void require_not_recording(const StepGraph& graph, const char* what) {
  V4RT_REQUIRE(!graph.recording(), "cuda backend: " << what
                                                    << " while a decode step is recorded as a CUDA graph (the step reads "
                                                       "device results on the host before its ops have run); `--no-graphs` "
                                                       "(runtime YAML cuda_graphs: false) runs steps without graphs");
}
}  // namespace

void CudaBackend::copy_to_host(void* dst_host, const void* src, size_t bytes) {
  if (!bytes) return;
  require_not_recording(graph_, "copy_to_host");
  CUDA_CHECK(cudaMemcpyAsync(dst_host, src, bytes, cudaMemcpyDeviceToHost, stream_.get()));
  stream_.synchronize();
}

void CudaBackend::copy_rows(const TensorView& dst, const TensorView& src) {
  CHECK(dst.dtype == src.dtype) << "copy_rows dtype mismatch";
  CHECK_EQ(dst.shape[0], src.shape[0]);
  const int64_t w = act_row_width(dst);
  CHECK_EQ(w, act_row_width(src));
  const size_t es = dtype_size(dst.dtype);
  if (dst.shape[0] == 0 || w == 0) return;
  if (LaunchLog::active_for(stream_.get()) && dst.device == Device::kCuda && src.device == Device::kCuda) {
    // a 2-D copy node cannot be updated: a kernel can
    const RowCopy c{dst, src};
    launch_copy_rows_batch(&c, 1, stream_.get());
    return;
  }
  const size_t dpitch = size_t(dst.ndim == 1 ? w : dst.stride[0]) * es;
  const size_t spitch = size_t(src.ndim == 1 ? w : src.stride[0]) * es;
  CUDA_CHECK(cudaMemcpy2DAsync(dst.data, dpitch, src.data, spitch, size_t(w) * es, size_t(dst.shape[0]),
                               cudaMemcpyDefault, stream_.get()));
}

void CudaBackend::copy_rows_batch(const RowCopy* copies, size_t num_copies) {
  launch_copy_rows_batch(copies, num_copies, stream_.get());
}

void CudaBackend::fill(const TensorView& dst, float value) {
  launch_fill(make_act(dst, "fill"), dst.shape[0], dst.ndim == 1 ? 1 : act_row_width(dst), value, stream_.get());
}

void CudaBackend::synchronize() {
  require_not_recording(graph_, "synchronize");
  stream_.synchronize();
}

// --- simple ops ----------------------------------------------------------------------------------

void CudaBackend::rms_norm(const RmsNormParams& p) { launch_rms_norm(p, stream_.get()); }
void CudaBackend::rope(const RopeParams& p) { launch_rope(p, stream_.get()); }
void CudaBackend::hc_post(const HcPostParams& p) { launch_hc_post(p, stream_.get()); }
void CudaBackend::hc_head(const HcHeadParams& p) { launch_hc_head(p, stream_.get()); }
void CudaBackend::compressor_pool(const CompressorPoolParams& p) { launch_compressor_pool(p, stream_.get()); }
void CudaBackend::compressor_pool_batch(const CompressorPoolBatchParams& p) {
  launch_compressor_pool_batch(p, stream_.get());
}
void CudaBackend::hadamard(const HadamardParams& p) { launch_hadamard(p, stream_.get()); }
void CudaBackend::indexer_scores(const IndexerScoresParams& p) {
  launch_indexer_scores(p, stream_.get(), indexer_kernels());
}
void CudaBackend::topk(const TopkParams& p) { launch_topk(p, stream_.get()); }
void CudaBackend::sample(const SampleParams& p) { launch_sample(p, stream_.get()); }
void CudaBackend::sparse_attention(const SparseAttentionParams& p) {
  launch_sparse_attention(p, stream_.get(), attention_kernels());
}
void CudaBackend::indexer_scores_batch(const IndexerScoresBatchParams& p) {
  launch_indexer_scores_batch(p, stream_.get(), indexer_kernels());
}
void CudaBackend::sparse_attention_batch(const SparseAttentionBatchParams& p) {
  launch_sparse_attention_batch(p, stream_.get(), attention_kernels());
}
void CudaBackend::swiglu(const SwigluParams& p) { launch_swiglu(p, stream_.get()); }
void CudaBackend::embedding(const EmbeddingParams& p) { launch_embedding(p, stream_.get()); }
void CudaBackend::add(const AddParams& p) { launch_add(p, stream_.get()); }
void CudaBackend::qdq(const QdqParams& p) { launch_qdq(p, stream_.get()); }
void CudaBackend::kv_pack(const KvPackParams& p) { launch_kv_pack(p, stream_.get()); }

// --- the mixes of hc_pre and the router: GEMMs past a few tokens -----------------------------------
// Both are fp32 dot products of every token with a few dozen (hc_pre) or a few hundred (router)
// weight rows. Decode-sized calls keep their GEMV kernels; larger ones run one cuBLASLt GEMM with
// fp32 accumulation (compute 32F, no TF32: the products of bf16 or fp32 inputs are those of the
// kernels, only the order of the fp32 additions differs) and hand its result to the same finishing
// kernels. The GEMV kernels re-read the weight rows (hc_pre) or x (router) for every token tile and
// ran below 1% of the roofline on an 8K prefill (docs/PERFORMANCE.md).
constexpr int64_t kMixGemmMinTokens = 32;

void CudaBackend::hc_pre(const HcPreParams& p) {
  const int64_t n = p.x.shape[0], mixes = p.fn.rows, len = p.fn.cols;
  if (n < kMixGemmMinTokens || p.x.dtype != DType::kF32 || p.fn.dtype != DType::kF32 || p.x.ndim != 3 ||
      p.x.shape[1] * p.x.shape[2] != len) {
    launch_hc_pre(p, stream_.get());
    return;
  }
  const Act x = make_act(p.x, "hc_pre x");
  auto* mix = static_cast<float*>(stream_alloc(size_t(n * (mixes + 1)) * 4, stream_.get()));
  DenseGemmParams g;
  g.ab_type = CUDA_R_32F;
  g.d_type = CUDA_R_32F;
  g.w = p.fn.data;
  g.ldw = len;
  g.x = x.data;
  g.ldx = x.stride;
  g.y = mix;
  g.ldy = mixes + 1;  // launch_hc_pre's [n][mixes + 1] layout: the sum of squares goes last
  g.m = n;
  g.n = mixes;
  g.k = len;
  g.stream = stream_.get();
  dense_gemm_.run(g);
  launch_hc_pre(p, stream_.get(), mix, options_.hc_fused_sumsq);
  stream_free(mix, stream_.get());
}

void CudaBackend::moe_gate(const MoeGateParams& p) {
  const int64_t n = p.x.shape[0], experts = p.gate.rows;
  const bool plain = p.gate.dtype == DType::kBF16 || p.gate.dtype == DType::kF32;
  if (n < kMixGemmMinTokens || !plain) {
    launch_moe_gate(p, stream_.get());
    return;
  }
  auto* logits = static_cast<float*>(stream_alloc(size_t(n * experts) * 4, stream_.get()));
  LinearParams lp;
  lp.x = p.x;
  lp.w = p.gate;
  if (p.x.dtype == DType::kF32 && p.gate.dtype == DType::kBF16) {  // fp32 x: fp32 rows, no input rounds
    lp.w.data = f32_copy(p.gate);
    lp.w.dtype = DType::kF32;
  }
  lp.y = TensorView(logits, DType::kF32, {n, experts}, Device::kCuda);
  linear_dense(lp);
  launch_moe_gate(p, stream_.get(), logits);
  stream_free(logits, stream_.get());
}

// --- projections ---------------------------------------------------------------------------------

void CudaBackend::linear(const LinearParams& p) {
  CHECK(p.w.device == Device::kCuda && p.w.data) << "linear: weight not on the device";
  CHECK_EQ(act_row_width(p.x), p.w.cols) << "linear x " << p.x.shape_str() << " vs weight cols " << p.w.cols;
  CHECK_EQ(act_row_width(p.y), p.w.rows) << "linear y " << p.y.shape_str() << " vs weight rows " << p.w.rows;
  if (options_.reference == ReferencePrecision::kF32 && !p.act_quant_fp8 && p.x.dtype == DType::kF32 &&
      (p.w.dtype == DType::kF8E4M3 || p.w.dtype == DType::kBF16)) {
    LinearParams q = p;
    q.w.data = f32_copy(p.w);
    q.w.dtype = DType::kF32;
    q.w.scale = nullptr;
    linear_dense(q);
    return;
  }
  switch (p.w.dtype) {
    case DType::kF8E4M3:
      if (p.act_quant_fp8) {
        linear_fp8(p);
      } else {  // no activation quantization asked for: bf16 GEMM on the (exact) bf16 copy
        LinearParams q = p;
        q.w.data = bf16_copy_of_fp8(p.w);
        q.w.dtype = DType::kBF16;
        q.w.scale = nullptr;
        linear_dense(q);
      }
      break;
    case DType::kFP4: linear_fp4(p); break;
    case DType::kBF16:
    case DType::kF32: linear_dense(p); break;
    default: LOG(FATAL) << "linear: weight dtype " << dtype_name(p.w.dtype);
  }
}

namespace {
// Output channels up to which a decode-sized bf16 linear takes the GEMV (the LM head does not).
constexpr int64_t kGemvMaxDenseRows = 65536;
// Whether rows [0, m) of a (width wa) and of b (width wb) share any byte.
bool views_overlap(const Act& a, int64_t m, int64_t wa, const Act& b, int64_t wb) {
  const auto span = [m](const Act& v, int64_t w) {
    const auto* p = static_cast<const char*>(v.data);
    const int64_t es = v.bf16 ? 2 : 4;
    return std::pair{p, p + ((m - 1) * v.stride + w) * es};
  };
  const auto [a0, a1] = span(a, wa);
  const auto [b0, b1] = span(b, wb);
  return a0 < b1 && b0 < a1;
}

// The decode GEMV of a linear: its rows, weight and output (weights taken as bf16 unless the
// caller sets the FP8 scales).
GemvParams gemv_linear(const LinearParams& p, const Act& x, const Act& y, GemvParams::Input input, cudaStream_t s) {
  GemvParams g;
  g.input = input;
  g.x = x.data;
  g.x_stride = x.stride;
  g.x_bf16 = x.bf16;
  g.w = p.w.data;
  g.y = y.data;
  g.y_stride = y.stride;
  g.y_bf16 = y.bf16;
  g.accumulate = p.accumulate;
  g.round = p.out_bf16;
  g.m = p.x.shape[0];
  g.n = p.w.rows;
  g.k = g.k_act = p.w.cols;
  g.stream = s;
  return g;
}
}  // namespace

void CudaBackend::linear_fp8(const LinearParams& p) {
  const int64_t m = p.x.shape[0], n = p.w.rows, k = p.w.cols;
  if (m == 0) return;
  const Act x = make_act(p.x, "linear x"), y = make_act(p.y, "linear y");
  const Fp8ScaleLayout& layout = fp8_scale_layout();
  // Decode-sized calls take the CUDA-core GEMV with act_quant and the output add fused in (gemv.h):
  // one launch, no padding; cuBLASLt costs ~14 us per call below 128 tokens (docs/CUDA.md,
  // Benchmarks).
  // cuBLASLt's block-scaled FP8 takes M % 4 == 0 only: pad the token rows with zero rows (zero
  // codes and zero scales; GEMM rows are independent) and keep the first m output rows.
  const bool decode = m <= gemv_max_tokens(k);
  if (decode && !views_overlap(x, m, k, y, n)) {  // one launch: act_quant, GEMV and the output add
    GemvParams g = gemv_linear(p, x, y, GemvParams::Input::kQuant, stream_.get());
    g.w_scale = fp8_weight_scale_f32(p.w);
    g.w_ld = layout.weight_ld(k);
    g.round_product = true;
    g.tensor_cores = options_.gemv_tensor_cores;
    gemv(g);
    return;
  }
  const int64_t m_pad = decode ? m : (m + 3) / 4 * 4;
  const int64_t act_ld = layout.act_ld(m_pad);
  uint8_t* x8 = static_cast<uint8_t*>(scratch(kSlotX8, size_t(m_pad * k)));
  float* xs = static_cast<float*>(scratch(kSlotXScale, size_t((k / 128) * act_ld) * 4));
  if (m_pad != m) {
    memset_async(x8 + m * k, 0, size_t((m_pad - m) * k), stream_.get());
    memset_async(xs, 0, size_t((k / 128) * act_ld) * 4, stream_.get());
  }
  ActQuantParams q;
  q.x = x.data;
  q.x_stride = x.stride;
  q.x_bf16 = x.bf16;
  q.x8 = x8;
  q.scale = xs;
  q.scale_m_stride = 1;
  q.scale_kb_stride = act_ld;
  q.num_tokens = m;
  q.k = k;
  q.stream = stream_.get();
  act_quant_fp8(q);
  const bool direct = y.bf16 && !p.accumulate && m_pad == m;
  Fp8GemmParams g;
  g.x8 = x8;
  g.x_scale = xs;
  g.w8 = static_cast<const uint8_t*>(p.w.data);
  g.w_scale = fp8_weight_scale_f32(p.w);
  g.out = direct ? static_cast<uint16_t*>(y.data) : static_cast<uint16_t*>(scratch(kSlotTmp, size_t(m_pad * n) * 2));
  g.out_ld = direct ? y.stride : n;
  g.m = m_pad;
  g.n = n;
  g.k = k;
  g.stream = stream_.get();
  if (decode) {
    fp8_gemm_simt(g);
  } else {
    fp8_gemm_.run(g);
  }
  if (!direct) launch_add_into(dense_act(g.out, n, true), y, m, n, p.accumulate, p.out_bf16, stream_.get());
}

void CudaBackend::linear_fp4(const LinearParams& p) {
  const int64_t m = p.x.shape[0], n = p.w.rows, k = p.w.cols;
  if (m == 0) return;
  const Act x = make_act(p.x, "linear x"), y = make_act(p.y, "linear y");
  uint8_t* x8 = static_cast<uint8_t*>(scratch(kSlotX8, size_t(m * k)));
  float* xs = static_cast<float*>(scratch(kSlotXScale, size_t(m * (k / 128)) * 4));
  ActQuantParams q;
  q.x = x.data;
  q.x_stride = x.stride;
  q.x_bf16 = x.bf16;
  q.x8 = x8;
  q.scale = xs;
  q.scale_m_stride = k / 128;
  q.scale_kb_stride = 1;
  q.num_tokens = m;
  q.k = k;
  q.stream = stream_.get();
  act_quant_fp8(q);
  const Fp4Table table{{0, int32_t(m), 0, 0}, p.w.data, p.w.scale};
  auto* dev = static_cast<Fp4Table*>(scratch(kSlotPtrs, sizeof(Fp4Table)));
  launch(store_value_kernel<Fp4Table>, 1, 1, 0, stream_.get())(dev, table);
  launch_check("linear (fp4 table)", stream_.get());
  const bool direct = y.bf16 && !p.accumulate && y.stride == n;
  Fp4GroupedGemmParams g;
  g.x8 = x8;
  g.x_scale = xs;
  g.row_offsets = dev->offsets;
  g.w = reinterpret_cast<const uint8_t* const*>(&dev->w);
  g.w_scale = reinterpret_cast<const uint8_t* const*>(&dev->scale);
  g.out = direct ? static_cast<uint16_t*>(y.data) : static_cast<uint16_t*>(scratch(kSlotTmp, size_t(m * n) * 2));
  g.num_groups = 1;
  g.n = n;
  g.k = k;
  g.tensor_cores = expert_tensor_cores(m, 1);
  g.wgmma = options_.expert_wgmma;
  g.wgmma_ws = options_.expert_wgmma_ws;
  g.ws_persistent = options_.expert_ws_persistent;
  g.ws_a_copy = options_.expert_ws_a_copy;
  g.ws_weight_ring = options_.expert_ws_weight_ring;
  g.max_rows = m;
  g.stream = stream_.get();
  fp4_grouped_gemm(g);
  if (!direct) launch_add_into(dense_act(g.out, n, true), y, m, n, p.accumulate, p.out_bf16, stream_.get());
}

void CudaBackend::linear_dense(const LinearParams& p) {
  const int64_t m = p.x.shape[0], n = p.w.rows, k = p.w.cols;
  if (m == 0) return;
  Act x = make_act(p.x, "linear x");
  const Act y = make_act(p.y, "linear y");
  const bool w_bf16 = p.w.dtype == DType::kBF16;
  DenseGemmParams g;
  g.ab_type = w_bf16 ? CUDA_R_16BF : CUDA_R_32F;
  g.w = p.w.data;
  g.ldw = k;
  g.n = n;
  g.k = k;
  g.stream = stream_.get();
  if (w_bf16 && !x.bf16 && options_.reference == ReferencePrecision::kBf16Split && !p.x_bf16_exact) {
    // fp32 x as hi + lo bf16 rows of one GEMM (weights read once), summed in fp32. With
    // x_bf16_exact the lo rows are zero: x converted (exactly) and one GEMM of m rows below.
    auto* x2 = static_cast<uint16_t*>(scratch(kSlotTmp2, size_t(2 * m * k) * 2));
    launch_split_bf16(x, x2, m, k, stream_.get());
    g.x = x2;
    g.ldx = k;
    g.m = 2 * m;
    g.d_type = CUDA_R_32F;
    g.y = scratch(kSlotTmp, size_t(2 * m * n) * 4);
    g.ldy = n;
    dense_gemm_.run(g);
    launch_add_split(static_cast<const float*>(g.y), n, y, m, n, p.accumulate, p.out_bf16, stream_.get());
    return;
  }
  // Decode-sized bf16 projections (not the LM head, which cuBLASLt streams at ~87% of the
  // bandwidth) take the GEMV: x to bf16, the GEMM and the output rounding in one launch.
  if (w_bf16 && m <= gemv_max_tokens(k) && n <= kGemvMaxDenseRows && k % 16 == 0 && !views_overlap(x, m, k, y, n)) {
    gemv(gemv_linear(p, x, y, GemvParams::Input::kBf16, stream_.get()));
    return;
  }
  if (x.bf16 != w_bf16) {  // bring x to the weight's type
    Act t = dense_act(scratch(kSlotTmp2, size_t(m * k) * (w_bf16 ? 2 : 4)), k, w_bf16);
    launch_convert(x, t, m, k, false, stream_.get());
    x = t;
  }
  g.x = x.data;
  g.ldx = x.stride;
  g.m = m;
  const bool direct = w_bf16 || !y.bf16;
  if (direct) {
    g.d_type = y.bf16 ? CUDA_R_16BF : CUDA_R_32F;
    g.y = y.data;
    g.ldy = y.stride;
    g.beta = p.accumulate ? 1.f : 0.f;
    dense_gemm_.run(g);
    if (p.out_bf16 && !y.bf16) launch_convert(y, y, m, n, true, stream_.get());
  } else {
    g.d_type = CUDA_R_32F;
    g.y = scratch(kSlotTmp, size_t(m * n) * 4);
    g.ldy = n;
    dense_gemm_.run(g);
    launch_add_into(dense_act(g.y, n, false), y, m, n, p.accumulate, p.out_bf16, stream_.get());
  }
}

void CudaBackend::grouped_linear(const GroupedLinearParams& p) {
  const int64_t m = p.x.shape[0], groups = p.x.shape[1], in_g = p.x.shape[2], out_g = p.y.shape[2];
  CHECK_EQ(act_row_width(p.x), groups * in_g);
  CHECK_EQ(act_row_width(p.y), groups * out_g);
  CHECK_EQ(p.w.cols, in_g);
  CHECK_EQ(p.w.rows, groups * out_g);
  const int g0 = p.g_begin, g1 = p.g_end < 0 ? int(groups) : p.g_end;
  const int ng = g1 - g0;
  if (m == 0 || ng <= 0) return;
  const bool w_fp8 = p.w.dtype == DType::kF8E4M3;
  const bool f32_reference = options_.reference == ReferencePrecision::kF32 && p.x.dtype == DType::kF32 &&
                             (p.w.dtype == DType::kBF16 || w_fp8);
  const bool x_as_bf16 = p.x.dtype == DType::kBF16 || p.x_bf16_exact ||
                         options_.reference != ReferencePrecision::kBf16Split;
  if (!f32_reference && (w_fp8 || p.w.dtype == DType::kBF16) && x_as_bf16 && in_g % 128 == 0 &&
      (!w_fp8 || out_g % 128 == 0) && m <= gemv_max_tokens(ng * in_g)) {
    // Decode-sized: the GEMV over every group at once, FP8 weights read as they are (dequantized in
    // registers: e4m3 times the block scale, as the bf16 copy holds them).
    const Act x = make_act(p.x, "grouped_linear x"), y = make_act(p.y, "grouped_linear y");
    const size_t xes = x.bf16 ? 2 : 4, yes = y.bf16 ? 2 : 4, wes = w_fp8 ? 1 : 2;
    GemvParams g;
    g.input = GemvParams::Input::kBf16;
    g.x = static_cast<const char*>(x.data) + size_t(g0) * size_t(in_g) * xes;
    g.x_stride = x.stride;
    g.x_bf16 = x.bf16;
    g.w = static_cast<const char*>(p.w.data) + size_t(g0) * size_t(out_g * in_g) * wes;
    if (w_fp8) {
      g.w_ld = fp8_scale_layout().weight_ld(in_g);
      g.w_scale = fp8_weight_scale_f32(p.w) + (size_t(g0) * size_t(out_g) / 128) * size_t(g.w_ld);
    }
    g.out_group = out_g;
    g.y = static_cast<char*>(y.data) + size_t(g0) * size_t(out_g) * yes;
    g.y_stride = y.stride;
    g.y_bf16 = y.bf16;
    g.round = p.out_bf16;
    g.m = m;
    g.n = int64_t(ng) * out_g;
    g.k = in_g;
    g.k_act = int64_t(ng) * in_g;
    g.stream = stream_.get();
    gemv(g);
    return;
  }
  const void* w = p.w.data;
  bool w_bf16 = p.w.dtype == DType::kBF16;
  if (options_.reference == ReferencePrecision::kF32 && p.x.dtype == DType::kF32 &&
      (w_bf16 || p.w.dtype == DType::kF8E4M3)) {
    w = f32_copy(p.w);
    w_bf16 = false;
  } else if (p.w.dtype == DType::kF8E4M3) {
    w = bf16_copy_of_fp8(p.w);  // spec §2.6: wo_a is dequantized to bf16 at load
    w_bf16 = true;
  } else {
    CHECK(p.w.dtype == DType::kF32 || w_bf16) << "grouped_linear weight dtype " << dtype_name(p.w.dtype);
  }
  Act x = make_act(p.x, "grouped_linear x");
  const Act y = make_act(p.y, "grouped_linear y");
  const size_t wes = w_bf16 ? 2 : 4;
  DenseGemmParams g;
  g.ab_type = w_bf16 ? CUDA_R_16BF : CUDA_R_32F;
  g.w = static_cast<const char*>(w) + size_t(g0) * size_t(out_g * in_g) * wes;
  g.ldw = in_g;
  g.n = out_g;
  g.k = in_g;
  g.batch = ng;
  g.stride_w = out_g * in_g;
  g.stride_x = in_g;
  g.stream = stream_.get();
  if (w_bf16 && !x.bf16 && options_.reference == ReferencePrecision::kBf16Split && !p.x_bf16_exact) {
    // As linear_dense: hi rows then lo rows, one batched GEMM, fp32 sum of the two halves.
    auto* x2 = static_cast<uint16_t*>(scratch(kSlotTmp2, size_t(2 * m * groups * in_g) * 2));
    launch_split_bf16(x, x2, m, groups * in_g, stream_.get());
    g.x = x2 + size_t(g0) * size_t(in_g);
    g.ldx = groups * in_g;
    g.m = 2 * m;
    g.d_type = CUDA_R_32F;
    g.y = scratch(kSlotTmp, size_t(2 * m * ng * out_g) * 4);
    g.ldy = ng * out_g;
    g.stride_y = out_g;
    dense_gemm_.run(g);
    const Act ys = dense_act(static_cast<char*>(y.data) + size_t(g0) * size_t(out_g) * (y.bf16 ? 2 : 4), y.stride,
                             y.bf16);
    launch_add_split(static_cast<const float*>(g.y), ng * out_g, ys, m, ng * out_g, false, p.out_bf16, stream_.get());
    return;
  }
  if (x.bf16 != w_bf16) {
    Act t = dense_act(scratch(kSlotTmp2, size_t(m * groups * in_g) * (w_bf16 ? 2 : 4)), groups * in_g, w_bf16);
    launch_convert(x, t, m, groups * in_g, false, stream_.get());
    x = t;
  }
  g.x = static_cast<const char*>(x.data) + size_t(g0) * size_t(in_g) * wes;
  g.ldx = x.stride;
  g.m = m;
  // Straight into y, or through scratch: bf16 results widened into an F32 output rounded to bf16
  // (the GEMM and bits of a bf16 output: model/blocks.h rounded_dtype keeps wo_a's output in bf16
  // or, off, in F32), or F32 results (F32 weights) narrowed into a bf16 output.
  const bool widen = w_bf16 && p.out_bf16 && !y.bf16;
  if ((w_bf16 || !y.bf16) && !widen) {
    g.d_type = y.bf16 ? CUDA_R_16BF : CUDA_R_32F;
    g.y = static_cast<char*>(y.data) + size_t(g0) * size_t(out_g) * (y.bf16 ? 2 : 4);
    g.ldy = y.stride;
    g.stride_y = out_g;
    dense_gemm_.run(g);
    if (p.out_bf16 && !y.bf16) {
      const Act ys = dense_act(g.y, y.stride, false);
      launch_convert(ys, ys, m, ng * out_g, true, stream_.get());
    }
  } else {
    g.d_type = widen ? CUDA_R_16BF : CUDA_R_32F;
    g.y = scratch(kSlotTmp, size_t(m * ng * out_g) * (widen ? 2 : 4));
    g.ldy = ng * out_g;
    g.stride_y = out_g;
    dense_gemm_.run(g);
    const Act ys = dense_act(static_cast<char*>(y.data) + size_t(g0) * size_t(out_g) * (y.bf16 ? 2 : 4), y.stride,
                             y.bf16);
    launch_convert(dense_act(g.y, ng * out_g, widen), ys, m, ng * out_g, false, stream_.get());
  }
}

// --- routed experts ------------------------------------------------------------------------------

void CudaBackend::moe_experts(const MoeExpertsParams& p) {
  const int64_t T = p.x.shape[0];
  const int topk = int(p.idx.shape[1]);
  const int64_t hidden = act_row_width(p.out);
  const int num_local = p.e_end - p.e_begin;
  if (T == 0) return;
  if (num_local <= 0) {
    if (!p.accumulate) fill(p.out, 0.0f);  // no local expert: the sum is 0
    return;
  }
  CHECK(p.w1 && p.w2 && p.w3) << "moe_experts: expert weights missing";
  CHECK_EQ(act_row_width(p.x), hidden);
  const int64_t inter = p.w1[p.e_begin].rows;
  std::vector<const void*> key;
  key.reserve(size_t(num_local) * 6);
  for (const WeightView* ws : {p.w1, p.w3, p.w2}) {
    for (int e = p.e_begin; e < p.e_end; ++e) {
      const WeightView& w = ws[e];
      CHECK(w.dtype == DType::kFP4 && w.device == Device::kCuda)
          << "moe_experts: expert " << e << " weight is " << dtype_name(w.dtype) << " (the cuda path takes FP4)";
      const bool down = ws == p.w2;
      CHECK_EQ(w.rows, down ? hidden : inter) << "expert " << e << " shape";
      CHECK_EQ(w.cols, down ? inter : hidden) << "expert " << e << " shape";
      key.push_back(w.data);
    }
    for (int e = p.e_begin; e < p.e_end; ++e) key.push_back(ws[e].scale);
  }
  auto it = expert_ptr_tables_.find(key);
  if (it == expert_ptr_tables_.end()) {
    weights_.emplace_back(key.size() * sizeof(void*));
    copy_to_device(weights_.back().data(), key.data(), key.size() * sizeof(void*));
    it = expert_ptr_tables_.emplace(key, weights_.back().data()).first;
  }
  const uint8_t* const* tables = static_cast<const uint8_t* const*>(it->second);
  const uint8_t* const* w1 = tables;
  const uint8_t* const* w1s = tables + num_local;
  const uint8_t* const* w3 = tables + 2 * num_local;
  const uint8_t* const* w3s = tables + 3 * num_local;
  const uint8_t* const* w2 = tables + 4 * num_local;
  const uint8_t* const* w2s = tables + 5 * num_local;

  const int64_t max_rows = T * topk;
  char* rb = static_cast<char*>(scratch(kSlotRoute, 6 * align_up(size_t(std::max<int64_t>(max_rows, num_local + 1)) * 4, 256)));
  const size_t seg = align_up(size_t(std::max<int64_t>(max_rows, num_local + 1)) * 4, 256);
  MoeRouting r;
  r.counts = reinterpret_cast<int32_t*>(rb);
  r.row_offsets = reinterpret_cast<int32_t*>(rb + seg);
  r.row_token = reinterpret_cast<int32_t*>(rb + 2 * seg);
  r.row_weight = reinterpret_cast<float*>(rb + 3 * seg);
  r.slot_row = reinterpret_cast<int32_t*>(rb + 4 * seg);
  r.active = reinterpret_cast<int32_t*>(rb + 5 * seg);
  launch_moe_route(p.idx, p.weight, p.e_begin, p.e_end, r, stream_.get(), options_.moe_route_small);

  // Activations between the steps: official = FP8 codes + scales into the GEMMs, bf16 outputs
  // (spec §6); kBf16 reference = bf16 everywhere; otherwise fp32 everywhere.
  enum class Io { kFp8, kBf16, kF32 };
  const Io io = p.official ? Io::kFp8 : options_.reference == ReferencePrecision::kBf16 ? Io::kBf16 : Io::kF32;
  const size_t in_es = io == Io::kFp8 ? 1 : io == Io::kBf16 ? 2 : 4;  // GEMM input element
  const size_t out_es = io == Io::kF32 ? 4 : 2;                        // GEMM output element
  const Act x = make_act(p.x, "moe_experts x");
  void* xin = scratch(kSlotX8, size_t(max_rows * hidden) * in_es);
  float* xs = static_cast<float*>(scratch(kSlotXScale, size_t(max_rows * (hidden / 128)) * 4));
  if (io == Io::kFp8) {
    launch_moe_gather_quant(x, hidden, r, num_local, max_rows, static_cast<uint8_t*>(xin), xs, stream_.get());
  } else {
    launch_moe_gather(x, hidden, r, num_local, max_rows, io == Io::kBf16 ? static_cast<uint16_t*>(xin) : nullptr,
                      io == Io::kF32 ? static_cast<float*>(xin) : nullptr, stream_.get());
  }
  // One grouped FP4 GEMM: in [rows, k] (in the io format) -> out [rows, n].
  auto gemm_params = [&](const void* in, const float* in_scale, const uint8_t* const* w, const uint8_t* const* ws,
                         int64_t n, int64_t k, void* out) {
    Fp4GroupedGemmParams gp;
    if (io == Io::kFp8) {
      gp.x8 = static_cast<const uint8_t*>(in);
      gp.x_scale = in_scale;
    } else if (io == Io::kBf16) {
      gp.x_bf16 = static_cast<const uint16_t*>(in);
    } else {
      gp.x_f32 = static_cast<const float*>(in);
    }
    if (io == Io::kF32) {
      gp.out_f32 = static_cast<float*>(out);
    } else {
      gp.out = static_cast<uint16_t*>(out);
    }
    gp.row_offsets = r.row_offsets;
    gp.num_groups = num_local;
    gp.group_list = r.active;  // at most max_rows experts have rows
    gp.list_len = int(std::min<int64_t>(num_local, max_rows));
    gp.n = n;
    gp.k = k;
    gp.w = w;
    gp.w_scale = ws;
    gp.tensor_cores = io == Io::kFp8 && expert_tensor_cores(max_rows, num_local);
    gp.wgmma = options_.expert_wgmma;
    gp.wgmma_ws = options_.expert_wgmma_ws;
    gp.ws_persistent = options_.expert_ws_persistent;
    gp.ws_a_copy = options_.expert_ws_a_copy;
    gp.ws_weight_ring = options_.expert_ws_weight_ring;
    gp.gemv_rows = options_.fp4_gemv_rows;
    gp.gemv_k_split = options_.fp4_gemv_k_split;
    gp.gemv_l2_prefetch = options_.fp4_gemv_l2_prefetch;
    gp.max_rows = max_rows;
    gp.stream = stream_.get();
    return gp;
  };
  void* g = scratch(kSlotG, size_t(max_rows * inter) * out_es);
  void* u = scratch(kSlotU, size_t(max_rows * inter) * out_es);
  // Gate and up: one GEMV launch for both at decode sizes (fp4_grouped_gemm_pair).
  fp4_grouped_gemm_pair(gemm_params(xin, xs, w1, w1s, inter, hidden, g), gemm_params(xin, xs, w3, w3s, inter, hidden, u));

  void* h = scratch(kSlotH8, size_t(max_rows * inter) * in_es);
  float* hs = static_cast<float*>(scratch(kSlotHScale, size_t(max_rows * (inter / 128)) * 4));
  MoeSwigluIo sio;
  if (io == Io::kF32) {
    sio.g32 = static_cast<const float*>(g);
    sio.u32 = static_cast<const float*>(u);
    sio.h_f32 = static_cast<float*>(h);
  } else {
    sio.g = static_cast<const uint16_t*>(g);
    sio.u = static_cast<const uint16_t*>(u);
    if (io == Io::kBf16) {
      sio.h_bf16 = static_cast<uint16_t*>(h);
    } else {
      sio.h8 = static_cast<uint8_t*>(h);
      sio.h_scale = hs;
    }
  }
  launch_moe_swiglu(sio, inter, p.swiglu_limit, r, num_local, max_rows, stream_.get());

  void* y = scratch(kSlotY, size_t(max_rows * hidden) * out_es);
  fp4_grouped_gemm(gemm_params(h, hs, w2, w2s, hidden, inter, y));
  launch_moe_combine(io == Io::kF32 ? nullptr : static_cast<const uint16_t*>(y),
                     io == Io::kF32 ? static_cast<const float*>(y) : nullptr, hidden, p.idx, r,
                     make_act(p.out, "moe_experts out"), T, topk, p.accumulate, stream_.get());
}

}  // namespace v4rt::kernels::cuda
