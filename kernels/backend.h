// SPDX-License-Identifier: MIT
// kernels::Backend: the coarse, model-shaped op table of DeepSeek-V4 (spec/v4-model.md §2-§7).
// One virtual per op; each op takes one plain Params struct of TensorViews (activations, state) and
// WeightViews (parameters uploaded through the backend). kernels/cpu implements it in plain fp32
// (the reference every other backend is tested against); kernels/cuda implements the same table.
//
// Conventions (all ops):
//  - Activation views are F32, or BF16 where `act_dtype()` is BF16 (the CUDA backend) and every
//    value is a bf16 rounding point of the official numerics (model/blocks.h, rounded_dtype); they
//    live on `device()` and are row-major: shape[0] is the token/row axis. Views may be strided
//    along rows (stride[0] >= row width) so column slices of a wider buffer can be passed.
//  - Index views (candidates, routing) are I32 on the device; -1 means "no entry".
//  - `Numerics` flags inside a Params ask for the rounding points of the `official` mode (spec §2,
//    §11); all false = the `reference` mode (fp32 everywhere).
//  - Head / expert / entry ranges [begin, end) exist so a rank can run its shard of an op; outputs
//    outside the range are left untouched.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/kv_format.h"
#include "common/tensor.h"

namespace v4rt::kernels {

// ------------------------------------------------------------------------------------------------
// Weights
// ------------------------------------------------------------------------------------------------

// A parameter tensor as it sits in a checkpoint (host memory, e.g. inside a safetensors mapping).
// The whole tensor is described; [row_begin, row_end) selects the rows to upload (a TP/EP shard;
// for FP8 the range must start on a 128-row block boundary).
struct WeightSource {
  std::string name;                 // for error messages
  DType dtype = DType::kF32;        // kF32, kBF16, kF8E4M3 (scale: e8m0 128x128 blocks),
                                    // kFP4 (packed e2m1, scale: e8m0 per 32 inputs), kI64, kI32
  int64_t rows = 1;                 // logical shape [rows, cols] (1-D tensors: rows = 1)
  int64_t cols = 0;                 // logical columns (kFP4: elements, i.e. 2x the stored bytes)
  const void* data = nullptr;       // [rows, cols] (kFP4: [rows, cols/2] bytes)
  const uint8_t* scale = nullptr;   // kF8E4M3: [ceil(rows/128), ceil(cols/128)]; kFP4: [rows, cols/32]
  int64_t row_begin = 0;
  int64_t row_end = -1;             // -1 = rows
};

// A parameter tensor owned by the backend, in the format the backend chose (the CPU backend
// dequantizes to F32; a GPU backend keeps FP8/FP4 in place with their scales).
struct WeightView {
  DType dtype = DType::kF32;
  const void* data = nullptr;       // [rows, cols] in `dtype` (kFP4: [rows, cols/2] bytes)
  const uint8_t* scale = nullptr;   // as WeightSource; nullptr for F32/BF16/I64/I32
  int64_t rows = 0;
  int64_t cols = 0;
  Device device = Device::kHost;
  bool empty() const { return data == nullptr; }
};

// ------------------------------------------------------------------------------------------------
// Op parameters
// ------------------------------------------------------------------------------------------------

// y[r] = x[r] * rsqrt(mean(x[r]^2) + eps) * weight (weight may be empty: unweighted per-head norm).
struct RmsNormParams {
  TensorView x;                 // [num_rows, dim]
  TensorView y;                 // [num_rows, dim] (may alias x)
  WeightView weight;            // [dim] or empty
  float eps = 1e-6f;
  bool out_bf16 = false;        // official: round y to bf16
  bool bf16_arith = false;      // official per-head q norm: every step in bf16 (spec §2.4)
};

// A run of RopeParams rows at evenly spaced positions: rows [row_begin, row_begin + num_rows) of x
// rotate at pos_begin, pos_begin + pos_step, ... (a sequence's new compressed entries sit at the
// starts of their blocks: pos_step = ratio).
struct RopeRun {
  int64_t row_begin = 0;
  int64_t num_rows = 0;
  int64_t pos_begin = 0;
  int64_t pos_step = 1;
};

// Interleaved partial RoPE on the last `rope_dim` dims of every head (spec §2.5). Row r has
// position pos_begin + r * pos_step, or positions[r] when given (the rows of several sequences in
// one call), or its run's position when runs are given (the entries of several sequences, with no
// position upload). theta = fp32(pos) * inv_freq[i]; inverse rotates by -theta.
struct RopeParams {
  TensorView x;                 // [num_rows, num_heads, head_dim], rotated in place
  const float* inv_freq = nullptr;  // host [rope_dim / 2] (YaRN already folded in)
  int rope_dim = 0;
  int64_t pos_begin = 0;
  int64_t pos_step = 1;
  const int32_t* positions = nullptr;  // backend memory [num_rows], or nullptr; row r rotates at
                                       // positions[r] (pos_begin / pos_step unused then)
  const RopeRun* runs = nullptr;  // host [num_runs], or nullptr; the runs tile x's rows in order
                                  // (positions, pos_begin and pos_step unused then)
  int64_t num_runs = 0;
  bool inverse = false;
  bool out_bf16 = false;
};

// mHC pre-mix (spec §4.1): mix = (fn @ x) * rsqrt(mean(x^2)+norm_eps); pre/post/comb; a = Σ pre_j x_j.
struct HcPreParams {
  TensorView x;                 // [num_tokens, hc, hidden]
  WeightView fn;                // [(2 + hc) * hc, hc * hidden]
  WeightView base;              // [(2 + hc) * hc]
  WeightView scale;             // [3]
  TensorView a;                 // [num_tokens, hidden]   out
  TensorView post;              // [num_tokens, hc]       out (F32 always)
  TensorView comb;              // [num_tokens, hc, hc]   out (F32 always), comb[j][k], j = source
  int sinkhorn_iters = 20;
  float hc_eps = 1e-6f;
  float norm_eps = 1e-6f;
  bool out_bf16 = false;
};

// mHC post-mix (spec §4.2): x_new[k] = post[k] * o + Σ_j comb[j][k] * x_old[j].
struct HcPostParams {
  TensorView o;                 // [num_tokens, hidden]
  TensorView x_old;             // [num_tokens, hc, hidden]
  TensorView post;              // [num_tokens, hc]
  TensorView comb;              // [num_tokens, hc, hc]
  TensorView x_new;             // [num_tokens, hc, hidden] (must not alias x_old)
  bool out_bf16 = false;
};

// mHC final collapse (spec §4.3).
struct HcHeadParams {
  TensorView x;                 // [num_tokens, hc, hidden]
  WeightView fn;                // [hc, hc * hidden]
  WeightView base;              // [hc]
  WeightView scale;             // [1]
  TensorView y;                 // [num_tokens, hidden]
  float hc_eps = 1e-6f;
  float norm_eps = 1e-6f;
  bool out_bf16 = false;
};

// y = x @ w^T (w: [out, in]); with `accumulate`, y += x @ w^T.
struct LinearParams {
  TensorView x;                 // [num_tokens, in]
  WeightView w;                 // [out, in]
  TensorView y;                 // [num_tokens, out]
  bool accumulate = false;
  bool act_quant_fp8 = false;   // official: FP8 act quant of x per 128 inputs before the GEMM (§2.2)
  bool out_bf16 = false;        // official: round y to bf16
  // x (F32) holds bf16 values (the official mode's normed sublayer input): a GEMM of x as bf16 is
  // exact, so a backend that splits fp32 x into bf16 hi + lo parts may skip the (zero) lo part.
  bool x_bf16_exact = false;
};

// Block-diagonal grouped projection (spec §5.7): y[:, g] = x[:, g] @ w_g^T for g in [g_begin, g_end),
// w_g = rows [g * out_per_group, (g+1) * out_per_group) of w.
struct GroupedLinearParams {
  TensorView x;                 // [num_tokens, num_groups, in_per_group]
  WeightView w;                 // [num_groups * out_per_group, in_per_group]
  TensorView y;                 // [num_tokens, num_groups, out_per_group]
  int g_begin = 0;
  int g_end = -1;               // -1 = num_groups
  bool out_bf16 = false;
  // x holds bf16 values (as LinearParams::x_bf16_exact): an F32 x needs no hi + lo split.
  bool x_bf16_exact = false;
};

// Compressor pooling (spec §5.4). Row r of kv/score belongs to a token at in-block position
// r mod ratio (row 0 starts a block). score rows get ape[r mod ratio] added, then:
//  - !overlap: entry e pools rows [e*ratio, (e+1)*ratio), all head_dim channels.
//  - overlap (CSA): entry e pools rows [e*ratio, (e+1)*ratio) through channels [0, head_dim) (the
//    previous block) and rows [(e+1)*ratio, (e+2)*ratio) through channels [head_dim, 2*head_dim).
// Softmax over the pooled rows per channel; -inf scores (absent rows) get weight 0.
struct CompressorPoolParams {
  TensorView kv;                // [num_rows, c * head_dim], c = overlap ? 2 : 1
  TensorView score;             // [num_rows, c * head_dim] (ape not yet added)
  WeightView ape;               // [ratio, c * head_dim]
  TensorView out;               // [num_entries, head_dim]
  int ratio = 4;
  int head_dim = 0;
  bool overlap = false;
  int64_t num_entries = 0;      // needs num_rows >= (num_entries + overlap) * ratio
  bool out_bf16 = false;
};

// Many independent compressor_pool calls issued as one (a decode step: one part per sequence whose
// compressor completed blocks, each pooling its own token rows into its own rows of one staging
// buffer). The parts share ape, ratio, head_dim, overlap and out_bf16 (a backend may rely on it);
// the result of each part is that of compressor_pool(part).
struct CompressorPoolBatchParams {
  const CompressorPoolParams* parts = nullptr;  // host array [num_parts]
  int64_t num_parts = 0;
};

// y = H_dim x / sqrt(dim) per row (Sylvester Walsh-Hadamard, natural order; dim a power of two).
struct HadamardParams {
  TensorView x;                 // [num_rows, dim], in place
  bool out_bf16 = false;
};

// Lightning indexer scores (spec §5.5) for heads [h_begin, h_end) and keys [key_begin, key_end):
//   s[t, j] = Σ_h relu(q[t,h] . k[j]) * w[t,h] * weight_scale       (j visible)
//   s[t, j] = -inf                                                  (j >= (pos_t + 1) / ratio)
// pos_t = pos_begin + t. With `accumulate`, s += (a partial head range), visibility still applied.
struct IndexerScoresParams {
  TensorView q;                 // [num_tokens, num_heads, index_head_dim]
  TensorView keys;              // [num_keys, index_head_dim], or U8 [num_keys, row_bytes] (compact)
  KvRowLayout key_layout;       // format of the key rows: kPlain, or kFp4 (decoded as they load)
  KvBlocks key_blocks;          // compact keys held in pool blocks (paged); empty: contiguous rows
  TensorView w;                 // [num_tokens, num_heads]
  TensorView scores;            // [num_tokens, key_end - key_begin], F32
  float weight_scale = 1.0f;
  int h_begin = 0;
  int h_end = -1;               // -1 = num_heads
  int64_t key_begin = 0;
  int64_t key_end = -1;         // -1 = num_keys
  int64_t pos_begin = 0;
  int ratio = 4;
  bool accumulate = false;
  bool bf16_arith = false;      // official: bf16 dot, bf16(w * weight_scale), product, head-sum (§5.5)
};

// Per row: indices of the k largest finite scores, descending, ties to the lower index; rows with
// fewer than k finite scores are padded with -1. out_values may be empty.
struct TopkParams {
  TensorView scores;            // [num_rows, num_cols], F32
  TensorView out_idx;           // [num_rows, k], I32
  TensorView out_values;        // [num_rows, k], F32, or empty
  int k = 0;
  int64_t index_offset = 0;     // added to every emitted index (a shard's first key)
};

// Sparse attention with sink over window + compressed candidates (spec §5.6), heads [h_begin, h_end).
// Query t (position pos_t = pos_begin + t) sees:
//   window rows holding positions max(0, pos_t - window + 1) .. pos_t, where window_kv row i holds
//   position window_pos0 + i (oldest first), then compressed entries:
//   comp_idx given:   comp_idx[t, :] (entries of comp_kv, -1 = none), in list order;
//   comp_idx empty:   every entry j < min(num_comp, (pos_t + 1) / comp_ratio) (comp_ratio > 0).
// Online softmax in blocks of 64 candidates; den += exp(sink[h] - M) at the end.
struct SparseAttentionParams {
  TensorView q;                 // [num_tokens, num_heads, head_dim]
  TensorView window_kv;         // [num_window_rows, head_dim]
  TensorView comp_kv;           // [num_comp, head_dim] or empty; U8 [num_comp, row_bytes] (compact)
  KvRowLayout comp_layout;      // format of the comp_kv rows: kPlain, or kFp8Rope (decoded as they load)
  KvBlocks comp_blocks;         // compact entries held in pool blocks (paged); empty: contiguous rows
  TensorView comp_idx;          // [num_tokens, num_cand] I32 or empty
  WeightView sink;              // [num_heads] F32
  TensorView out;               // [num_tokens, num_heads, head_dim]
  TensorView lse;               // [num_tokens, num_heads] F32 log-sum-exp incl. sink, or empty (SP merge)
  int64_t pos_begin = 0;
  int64_t window_pos0 = 0;
  int window = 128;
  int comp_ratio = 0;
  float softmax_scale = 1.0f;
  int h_begin = 0;
  int h_end = -1;
  bool include_sink = true;     // false on all but one SP shard
  bool bf16_probs = false;      // official: bf16 P in P.V
  bool out_bf16 = false;
};

// Many independent sparse attention calls issued as one (a decode step: one part per sequence, q
// and out the sequence's rows of the batch's buffers). Each part is a whole SparseAttentionParams
// with its own window rows, compressed entries, candidate lists, positions and lse; the parts
// share num_heads, head_dim, [h_begin, h_end), sink, softmax_scale, include_sink, bf16_probs and
// out_bf16 (a backend may rely on it). The result of each part is that of sparse_attention(part).
struct SparseAttentionBatchParams {
  const SparseAttentionParams* parts = nullptr;  // host array [num_parts]
  int64_t num_parts = 0;
};

// Many independent indexer score calls issued as one, as SparseAttentionBatchParams: each part is a
// whole IndexerScoresParams (its own keys, positions, scores view); the parts share num_heads,
// index_head_dim, [h_begin, h_end), weight_scale, ratio, accumulate and bf16_arith.
struct IndexerScoresBatchParams {
  const IndexerScoresParams* parts = nullptr;  // host array [num_parts]
  int64_t num_parts = 0;
};

// MoE router (spec §6): s = sqrt(softplus(gate @ x)); hash layers take ids from tid2eid[token],
// others top-k of s + bias (ties to the lower expert). weights = s[idx] / Σ s[idx] * route_scale.
// out_idx rows are sorted by ascending expert id (the reference's accumulation order).
struct MoeGateParams {
  TensorView x;                 // [num_tokens, hidden]
  WeightView gate;              // [num_experts, hidden]
  WeightView bias;              // [num_experts] F32, or empty (hash layers)
  WeightView tid2eid;           // [vocab, topk] I32, or empty (score-routed layers)
  TensorView token_ids;         // [num_tokens] I32 (hash layers)
  TensorView out_idx;           // [num_tokens, topk] I32
  TensorView out_weight;        // [num_tokens, topk] F32
  int topk = 0;
  float route_scale = 1.0f;
};

// Routed experts [e_begin, e_end): out[t] += Σ_{e in idx[t], e in range} weight * w2(swiglu(w1 x, w3 x)),
// experts visited in ascending id. SwiGLU: up clamp [-limit, limit], gate clamp max limit.
struct MoeExpertsParams {
  TensorView x;                 // [num_tokens, hidden]
  TensorView idx;               // [num_tokens, topk] I32
  TensorView weight;            // [num_tokens, topk] F32
  const WeightView* w1 = nullptr;  // host array [num_experts] of [inter, hidden]
  const WeightView* w2 = nullptr;  // host array [num_experts] of [hidden, inter]
  const WeightView* w3 = nullptr;  // host array [num_experts] of [inter, hidden]
  TensorView out;               // [num_tokens, hidden], F32 accumulator (+=)
  // false: out = the experts' sum (added in the same order onto 0: the bits of a zero fill and +=),
  // out's old values neither read nor needed, so no fill before.
  bool accumulate = true;
  int e_begin = 0;
  int e_end = 0;
  float swiglu_limit = 10.0f;
  bool official = false;        // act quant, bf16 h (weight applied before w2), bf16 expert outputs
};

// h = silu(min(gate, limit)) * clamp(up, -limit, limit) [* row_weight[t]].
struct SwigluParams {
  TensorView gate;              // [num_tokens, inter]
  TensorView up;                // [num_tokens, inter]
  TensorView h;                 // [num_tokens, inter] (may alias gate)
  TensorView row_weight;        // [num_tokens] F32 or empty
  float limit = 10.0f;
  bool out_bf16 = false;
};

// out[t, r, :] = table[ids[t], :] for r in [0, replicas).
struct EmbeddingParams {
  WeightView table;             // [vocab, hidden]
  TensorView ids;               // [num_tokens] I32
  TensorView out;               // [num_tokens, replicas, hidden]
};

// out = a + b (elementwise, same 2-D shape).
struct AddParams {
  TensorView a;                 // [num_rows, cols]
  TensorView b;                 // [num_rows, cols]
  TensorView out;               // [num_rows, cols] (may alias a or b)
  bool out_bf16 = false;
};

// Quantize-dequantize in place per row, per block of `block` columns over the view's columns
// (spec §2.2/§2.3): fp8: s = 2^ceil(log2(max(amax,1e-4)/448)), x = e4m3(x/s)*s;
// fp4: s = 2^ceil(log2(max(amax,6*2^-126)/6)), x = e2m1(x/s)*s.
enum class QdqFormat : uint8_t { kFp8E4M3, kFp4E2M1, kBf16 };
struct QdqParams {
  TensorView x;                 // [num_rows, cols], in place (a partial last block is its own block)
  QdqFormat format = QdqFormat::kBf16;
  int block = 128;
};

// Packs rows into a compact KV row format (common/kv_format.h): out[r] = pack(x[r]). The rows must
// hold values the format represents exactly (the official numerics round them so, spec §2.3); the
// CPU backend checks it.
struct KvPackParams {
  TensorView x;                 // [num_rows, layout.dim]
  TensorView out;               // [num_rows, layout.row_bytes] U8
  KvRowLayout layout;           // a compact layout
};

// Token sampling over a batch of logit rows (the decode step's last op), one request per row.
// Per row, with logits l[0, vocab) and its SampleRow:
//  - greedy (temperature <= 0): the first maximum of l;
//  - otherwise the ids are ordered by descending logit, equal logits by ascending id; the kept set
//    is the shortest prefix of that order that is at most top_k long (top_k <= 0: the vocabulary)
//    and whose mass reaches top_p of the mass of the top_k prefix (the nucleus of
//    model/sampler.h, inside the top-k); weights w = exp((l - max l) / temperature) in fp32, masses
//    summed in fp64. The id is drawn from the kept set in id order: the first kept id whose
//    cumulative weight exceeds u * (kept mass), u = sample_uniform(seed, position, draw)
//    (kernels/philox.h), so the same (seed, position, draw) gives the same uniform in any row of
//    any batch, on any backend.
// Logprobs are those of the model's distribution, log_softmax(l) at temperature 1 (the values the
// OpenAI API reports): out_logprob[r] of the drawn id; out_top_ids / out_top_logprobs hold the
// row's n_logprobs best ids (ties: lower id first), the remaining columns -1 / -inf.
struct SampleRow {
  uint64_t seed = 0;            // the request's seed: Philox key
  int64_t position = 0;         // sequence position of the drawn token: Philox counter words 0-1
  float temperature = 0.0f;     // <= 0: greedy
  float top_p = 1.0f;           // (0, 1]
  int32_t top_k = 0;            // <= 0: off
  uint32_t draw = 0;            // draw index at this position (speculative steps): counter word 2
  int32_t n_logprobs = 0;       // top-n alternatives, 0 .. out_top_ids.shape[1]
  int32_t reserved = 0;
};
static_assert(sizeof(SampleRow) == 40, "SampleRow is copied to devices as raw bytes");

struct SampleParams {
  TensorView logits;            // [num_rows, vocab] F32 (the CUDA backend also takes BF16)
  const SampleRow* rows = nullptr;  // [num_rows] in the backend's memory (device() side)
  TensorView out_ids;           // [num_rows] I32
  TensorView out_logprob;       // [num_rows] F32, or empty
  TensorView out_top_ids;       // [num_rows, max_n] I32, or empty (then every n_logprobs must be 0)
  TensorView out_top_logprobs;  // [num_rows, max_n] F32, or empty with out_top_ids
};

// One row copy of a batch (Backend::copy_rows_batch): dst[r, :] = src[r, :].
struct RowCopy {
  TensorView dst;               // [num_rows, width]
  TensorView src;               // [num_rows, width], same dtype
};

// ------------------------------------------------------------------------------------------------
// The op table
// ------------------------------------------------------------------------------------------------

enum class Op : uint8_t {
  kRmsNorm, kRope, kHcPre, kHcPost, kHcHead, kLinear, kGroupedLinear, kCompressorPool, kHadamard,
  kIndexerScores, kTopk, kSparseAttention, kMoeGate, kMoeExperts, kSwiglu, kEmbedding, kAdd, kQdq,
  kSample, kKvPack,
};

// How a backend's step graphs went (Backend::graph_stats): steps run eagerly although a graph was
// asked for (the warm-up step), steps recorded, and of those how many updated a cached executable
// graph in place and how many built a new one; the node count of the last graph.
struct GraphStats {
  int64_t eager = 0;
  int64_t recorded = 0;
  int64_t updated = 0;
  int64_t instantiated = 0;
  // Replaying (debug.cuda_graph_replay): steps run by a cached executable without a capture, and the
  // nodes their updates set.
  int64_t replayed = 0;
  int64_t nodes_set = 0;
  int64_t last_nodes = 0;
  // The GPU time of the recorded steps' graphs that have completed (from the graph's launch to its
  // end on the stream: the step without host launch gaps, or what replaying it would take).
  int64_t timed = 0;
  double graph_gpu_ms = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual Device device() const = 0;
  virtual DType act_dtype() const = 0;  // BF16: it takes bf16 views of the rounded activations too
  virtual bool supports(Op op) const = 0;
  // Whether sparse_attention / indexer_scores read rows of `format` and kv_pack writes them
  // (kPlain: always).
  virtual bool supports_kv_format(KvFormat format) const { return format == KvFormat::kPlain; }
  // The stream every op of this backend runs on (a cudaStream_t on CUDA; nullptr on the host) and
  // the device ordinal (-1 on the host). Process groups order their device collectives on it.
  virtual void* stream_handle() const { return nullptr; }
  virtual int device_index() const { return -1; }

  // --- memory -----------------------------------------------------------------------------------
  // Uploads (and converts, at the backend's choice) a parameter; the backend owns the storage for
  // its lifetime. Throws v4rt::Error naming source.name on an unsupported dtype/shape.
  virtual WeightView upload_weight(const WeightSource& source) = 0;
  Buffer alloc(size_t bytes) const { return Buffer(bytes, device()); }
  // Host <-> device and device <-> device copies of `bytes` (rows of a strided view: use copy_rows).
  virtual void copy_to_device(void* dst, const void* src_host, size_t bytes) = 0;
  virtual void copy_to_host(void* dst_host, const void* src, size_t bytes) = 0;
  // dst[r, :] = src[r, :] for same-shaped 2-D views (strided rows allowed, same dtype).
  virtual void copy_rows(const TensorView& dst, const TensorView& src) = 0;
  // copy_rows of every RowCopy (each with copy_rows' shape and dtype rules; zero rows allowed), as
  // one launch where the backend can. The copies may run concurrently: no destination may overlap
  // another copy's source or destination. Pointer and count rather than std::span: the .cu files
  // that include this header are C++17. The default loops copy_rows.
  virtual void copy_rows_batch(const RowCopy* copies, size_t num_copies);
  virtual void fill(const TensorView& dst, float value) = 0;  // 2-D view, float dtypes
  virtual void synchronize() = 0;

  // --- step graphs ------------------------------------------------------------------------------
  // A device backend may record the ops of a decode step and run them as one graph (CUDA graphs):
  // begin_graph() starts recording, end_graph() enqueues everything recorded since. In between the
  // caller must not read device memory on the host nor wait for an op (copy_to_host and
  // synchronize are refused), and its host-side decisions must not depend on an op's result;
  // host memory given to copy_to_device may be reused as soon as the call returns (it is staged).
  // abort_graph() drops an unfinished recording (an exception left the step). graphs() says
  // whether begin_graph records at all; by default it does not and every op runs at once.
  // graph_segment() marks a point of the recording (the end of a layer) where a backend may
  // enqueue what it has recorded so far and go on recording the rest of the step; the caller's
  // rules do not change (no host reads until end_graph). No-op by default.
  virtual bool graphs() const { return false; }
  virtual void begin_graph() {}
  virtual void end_graph() {}
  virtual void abort_graph() {}
  virtual void graph_segment() {}
  virtual GraphStats graph_stats() const { return {}; }
  // Marks the ops between profile_range(true) and profile_range(false) for an external profiler
  // (CUDA: cudaProfilerStart/Stop, so `ncu --profile-from-start off` sees only them). No-op by default.
  virtual void profile_range(bool /*begin*/) {}

  // --- ops ----------------------------------------------------------------------------------------
  virtual void rms_norm(const RmsNormParams& p) = 0;
  virtual void rope(const RopeParams& p) = 0;
  virtual void hc_pre(const HcPreParams& p) = 0;
  virtual void hc_post(const HcPostParams& p) = 0;
  virtual void hc_head(const HcHeadParams& p) = 0;
  virtual void linear(const LinearParams& p) = 0;
  virtual void grouped_linear(const GroupedLinearParams& p) = 0;
  virtual void compressor_pool(const CompressorPoolParams& p) = 0;
  // The batched form (one launch for a decode batch on a device backend). Not pure: the default
  // calls compressor_pool once per part.
  virtual void compressor_pool_batch(const CompressorPoolBatchParams& p);
  virtual void hadamard(const HadamardParams& p) = 0;
  virtual void indexer_scores(const IndexerScoresParams& p) = 0;
  virtual void topk(const TopkParams& p) = 0;
  virtual void sparse_attention(const SparseAttentionParams& p) = 0;
  // The batched forms (one launch for a whole decode batch on a device backend). Not pure: the
  // default calls indexer_scores / sparse_attention once per part.
  virtual void indexer_scores_batch(const IndexerScoresBatchParams& p);
  virtual void sparse_attention_batch(const SparseAttentionBatchParams& p);
  virtual void moe_gate(const MoeGateParams& p) = 0;
  virtual void moe_experts(const MoeExpertsParams& p) = 0;
  virtual void swiglu(const SwigluParams& p) = 0;
  virtual void embedding(const EmbeddingParams& p) = 0;
  virtual void add(const AddParams& p) = 0;
  virtual void qdq(const QdqParams& p) = 0;
  // Token sampling (SampleParams). Not pure: a backend without it throws v4rt::Error naming itself.
  virtual void sample(const SampleParams& p);
  // Compact KV rows (KvPackParams). Not pure: a backend without it throws v4rt::Error naming itself.
  virtual void kv_pack(const KvPackParams& p);
};

// Records the ops issued during its lifetime as one step graph when `on` and the backend records
// graphs (Backend::begin_graph); end() enqueues them, the destructor drops an unfinished recording.
class GraphRecording {
 public:
  GraphRecording(Backend& backend, bool on) : backend_(backend), on_(on && backend.graphs()) {
    if (on_) backend_.begin_graph();
  }
  ~GraphRecording() {
    if (on_) backend_.abort_graph();
  }
  GraphRecording(const GraphRecording&) = delete;
  GraphRecording& operator=(const GraphRecording&) = delete;
  void end() {
    if (!on_) return;
    on_ = false;
    backend_.end_graph();
  }
  void segment() {
    if (on_) backend_.graph_segment();
  }

 private:
  Backend& backend_;
  bool on_;
};

// Throws v4rt::Error naming the backend and `what` when it cannot read or write `layout`'s format.
void require_kv_format(const Backend& backend, const KvRowLayout& layout, const char* what);
// Rounds rows [n, layout.dim] F32 in place to the values `layout` stores exactly, which are the
// official numerics' (spec §2.3): the scaled dims by their format's QDQ (FP8 or FP4, per
// layout.block), the remaining (RoPE) dims to bf16. No-op for a plain layout.
void round_to_kv_layout(Backend& backend, const KvRowLayout& layout, const TensorView& rows);

// The plain fp32 reference backend (kernels/cpu).
std::unique_ptr<Backend> make_cpu_backend();

// --- view helpers (no data access) -------------------------------------------------------------
// Rows [begin, end) of a view (any ndim).
TensorView view_rows(const TensorView& v, int64_t begin, int64_t end);
// Columns [begin, end) of a 2-D view (keeps the row stride).
TensorView view_cols(const TensorView& v, int64_t begin, int64_t end);
// Same data seen with new contiguous dims (the view must be contiguous).
TensorView view_reshape(const TensorView& v, std::initializer_list<int64_t> dims);
// Rows [begin, end) of a weight (FP8: begin on a 128-row block boundary).
WeightView weight_rows(const WeightView& w, int64_t begin, int64_t end);

}  // namespace v4rt::kernels
