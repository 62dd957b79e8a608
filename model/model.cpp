// SPDX-License-Identifier: MIT
// Model: loads the weights and runs the forward pass (spec §3) over a batch of chunks: embedding into the
// hyper-connection streams, the blocks (mHC around attention and MoE), hc_head, final norm, head.
#include "model/model.h"

#include <glog/logging.h>

#include <algorithm>

#include "common/check.h"
#include "common/op_scope.h"
#include "model/blocks.h"

namespace v4rt::model {

Numerics parse_numerics(const std::string& text) {
  if (text == "reference") return Numerics::kReference;
  if (text == "official") return Numerics::kOfficial;
  V4RT_FAIL("numerics '" << text << "' is not one of: reference, official");
}

namespace {

// The SP merges on the backend's memory: host loops for the CPU, kernels on its stream for CUDA.
std::unique_ptr<parallel::SpOps> make_sp_ops(kernels::Backend& backend) {
  if (backend.device() == Device::kHost) return parallel::make_host_sp_ops();
#if defined(V4RT_HAVE_CUDA)
  return parallel::make_cuda_sp_ops(backend.stream_handle());
#else
  V4RT_FAIL("backend " << backend.name() << " has no SP ops in this build");
#endif
}

}  // namespace

std::unique_ptr<Model> Model::load(const Checkpoint& ckpt, const ModelOptions& options, kernels::Backend& backend) {
  std::unique_ptr<Model> m(new Model(ckpt.config(), options, backend));
  const ParallelContext& par = options.parallel;
  m->weights_ = load_weights(ckpt, backend, par.sharded() ? shard_of(par.plan) : options.shard, options.load_observer);
  if (par.layout.tp > 1) CHECK(par.tp && par.tp->size() == par.layout.tp) << "TP layout without its communicator";
  if (par.layout.sp > 1) {
    CHECK(par.sp && par.sp->size() == par.layout.sp) << "SP layout without its communicator";
    CHECK(par.sp->device() == backend.device())
        << "SP group '" << par.sp->name() << "' is on " << (par.sp->device() == Device::kHost ? "host" : "device")
        << " memory but the " << backend.name() << " backend's activations are not: build the process groups "
        << "with cluster::make_groups for this backend's device and stream";
    m->sp_ops_ = make_sp_ops(backend);
  }
  if (par.layout.ep > 1) {
    CHECK(par.ep && par.ep->size() == par.layout.ep) << "EP layout without its communicator";
    parallel::EpConfig ec;
    ec.num_experts = m->config_.n_routed_experts;
    ec.hidden = m->config_.hidden_size;
    ec.topk = m->config_.num_experts_per_tok;
    ec.dtype = DType::kF32;  // the MoE input: the normed activations, F32 scratch on every backend
    CHECK(par.ep->device() == backend.device())
        << "EP group '" << par.ep->name() << "' is on " << (par.ep->device() == Device::kHost ? "host" : "device")
        << " memory but the " << backend.name() << " backend's activations are not: build the process groups "
        << "with cluster::make_groups for this backend's device and stream";
    // Official numerics: the experts quantize their input to e4m3 with per-128 power-of-two
    // scales anyway (both backends), so dispatch sends exactly that: half the bytes of bf16, and
    // the re-quantization on arrival reproduces the same codes.
    ec.fp8_wire = options.numerics == Numerics::kOfficial && ec.hidden % 128 == 0;
    m->expert_parallel_ = std::make_unique<parallel::ExpertParallel>(*par.ep, ec, backend.stream_handle());
  }
  if (par.sharded()) {
    LOG(INFO) << "rank " << par.plan.world_rank << ": tp " << par.plan.coords.tp_idx << "/" << par.layout.tp << " sp "
              << par.plan.sp_idx << "/" << par.layout.sp << " ep " << par.plan.coords.ep_idx << "/" << par.layout.ep
              << " dp " << par.plan.coords.dp_idx << "/" << par.layout.dp << "; heads [" << par.plan.heads.begin << ", "
              << par.plan.heads.end << "), experts [" << par.plan.experts.begin << ", " << par.plan.experts.end
              << "); weights loaded " << m->weights_.bytes_loaded << " bytes";
  }
  return m;
}

Shard Model::shard() const {
  return options_.parallel.sharded() ? shard_of(options_.parallel.plan) : options_.shard;
}

KvStorage Model::kv_storage() const {
  return options_.numerics == Numerics::kOfficial ? KvStorage::kCompact : KvStorage::kF32;
}

std::unique_ptr<SequenceState> Model::new_sequence() {
  if (kv_storage() == KvStorage::kCompact && !kv_pool_) kv_pool_ = std::make_shared<KvPool>(backend_);
  auto seq = std::make_unique<SequenceState>(config_, backend_, kv_storage(), kv_pool_);
  if (options_.parallel.layout.sp > 1) seq->set_ownership(ownership_of(options_.parallel));
  return seq;
}

void Model::step(std::span<const StepChunk> chunks, std::vector<std::vector<float>>* logits) {
  if (logits) logits->assign(chunks.size(), {});
  for (const StepChunk& c : chunks) {
    CHECK(c.sequence != nullptr);
    CHECK((c.sample == nullptr) == (c.sampled == nullptr)) << "a sampled chunk needs both its settings and its output";
    CHECK(!(c.sample && c.all_logits)) << "device sampling draws from the last row only";
    for (int32_t id : c.tokens)
      V4RT_REQUIRE(id >= 0 && id < config_.vocab_size, "token id " << id << " outside the vocabulary of " << config_.vocab_size);
  }
  // Batches of consecutive chunks on distinct sequences; empty chunks produce nothing.
  std::vector<StepChunk> batch;
  std::vector<std::vector<float>*> outs;
  auto flush = [&] {
    if (!batch.empty()) forward_batch(batch, outs.data());
    batch.clear();
    outs.clear();
  };
  for (size_t i = 0; i < chunks.size(); ++i) {
    if (chunks[i].tokens.empty()) continue;
    for (const StepChunk& b : batch) {
      if (b.sequence == chunks[i].sequence) {
        flush();
        break;
      }
    }
    batch.push_back(chunks[i]);
    outs.push_back(logits && !chunks[i].sample ? &(*logits)[i] : nullptr);
  }
  flush();
}

namespace {

// Decode steps (one token per sequence, or a few with speculative drafts) are recorded as graphs;
// a prefill chunk's ops are long enough that launching them one by one costs nothing noticeable.
constexpr size_t kGraphMaxChunkTokens = 16;

// The device draws of a step (Backend::sample), enqueued before the host reads them.
struct DeviceDraws {
  Buffer rows;     // the SampleRow settings on the device
  Buffer out;      // [rows, 2 + 2 * max_n] words: ids, logprobs, top ids, top logprobs
  int64_t num_rows = 0;
  int32_t max_n = 0;
};

// Enqueues Backend::sample over `head_logits` for the chunks that ask for it (the last row of
// each); empty draws when none does.
DeviceDraws enqueue_draws(kernels::Backend& backend, std::span<const StepChunk> chunks,
                          const std::vector<int64_t>& out0, const TensorView& head_logits) {
  const size_t nc = chunks.size();
  const int64_t rows = out0[nc];
  std::vector<kernels::SampleRow> settings(static_cast<size_t>(rows));  // rows nobody samples: greedy, no logprobs
  DeviceDraws d;
  bool any = false;
  for (size_t i = 0; i < nc; ++i) {
    if (!chunks[i].sample) continue;
    any = true;
    settings[size_t(out0[i + 1] - 1)] = *chunks[i].sample;
    d.max_n = std::max(d.max_n, chunks[i].sample->n_logprobs);
  }
  if (!any) return d;
  const OpScope scope("sample");
  d.num_rows = rows;
  d.rows = backend.alloc(settings.size() * sizeof(kernels::SampleRow));
  backend.copy_to_device(d.rows.data(), settings.data(), settings.size() * sizeof(kernels::SampleRow));
  // One output block of 4-byte words, so a single copy brings everything back.
  const int64_t words = 2 + 2 * int64_t(d.max_n);
  d.out = backend.alloc(size_t(rows * words) * 4);
  char* base = static_cast<char*>(d.out.data());
  kernels::SampleParams p;
  p.logits = head_logits;
  p.rows = static_cast<const kernels::SampleRow*>(d.rows.data());
  p.out_ids = TensorView(base, DType::kI32, {rows}, backend.device());
  p.out_logprob = TensorView(base + rows * 4, DType::kF32, {rows}, backend.device());
  if (d.max_n > 0) {
    p.out_top_ids = TensorView(base + rows * 8, DType::kI32, {rows, d.max_n}, backend.device());
    p.out_top_logprobs = TensorView(base + rows * 8 + rows * d.max_n * 4, DType::kF32, {rows, d.max_n}, backend.device());
  }
  backend.sample(p);
  return d;
}

// Copies the draws to the host and hands each sampled chunk its token.
void read_draws(kernels::Backend& backend, std::span<const StepChunk> chunks, const std::vector<int64_t>& out0,
                const DeviceDraws& d) {
  if (d.num_rows == 0) return;
  const int64_t rows = d.num_rows, max_n = d.max_n;
  std::vector<uint32_t> host(size_t(rows * (2 + 2 * max_n)));
  backend.copy_to_host(host.data(), d.out.data(), host.size() * 4);
  const int32_t* ids = reinterpret_cast<const int32_t*>(host.data());
  const float* lps = reinterpret_cast<const float*>(host.data() + rows);
  const int32_t* top_ids = reinterpret_cast<const int32_t*>(host.data() + 2 * rows);
  const float* top_lps = reinterpret_cast<const float*>(host.data() + 2 * rows + rows * max_n);
  for (size_t i = 0; i < chunks.size(); ++i) {
    if (!chunks[i].sample) continue;
    const int64_t r = out0[i + 1] - 1;
    SampledToken& t = *chunks[i].sampled;
    t.id = ids[r];
    t.logprob = lps[r];
    t.top.clear();
    for (int32_t j = 0; j < chunks[i].sample->n_logprobs; ++j) {
      if (top_ids[r * max_n + j] < 0) break;
      t.top.emplace_back(top_ids[r * max_n + j], top_lps[r * max_n + j]);
    }
  }
}

}  // namespace

bool Model::records_graph(std::span<const StepChunk> chunks) const {
  if (!backend_.graphs() || observer_ || options_.parallel.sharded() || expert_parallel_ || sp_ops_) return false;
  for (const StepChunk& c : chunks) {
    if (c.tokens.size() > kGraphMaxChunkTokens) return false;
  }
  return true;
}

void Model::forward_batch(std::span<const StepChunk> chunks, std::vector<float>* const* logits) {
  const int64_t hc = config_.hc_mult;
  const int64_t hidden = config_.hidden_size;
  // Row ranges of the chunks in the concatenated token list; the attention segments of every layer
  // (their states are set per layer).
  const size_t nc = chunks.size();
  std::vector<int64_t> row0(nc + 1, 0);
  std::vector<AttentionSegment> segs(nc);
  for (size_t i = 0; i < nc; ++i) {
    row0[i + 1] = row0[i] + int64_t(chunks[i].tokens.size());
    segs[i].pos_begin = chunks[i].sequence->position();
    segs[i].row_begin = row0[i];
    segs[i].rows = row0[i + 1] - row0[i];
  }
  const int64_t n = row0[nc];
  // Every pool block the step's new entries need and room in the compressors' token buffers,
  // taken before the recording (growth copies would make a step's graph differ from the next's)...
  std::vector<KvRows*> tables;
  for (const StepChunk& c : chunks) {
    c.sequence->reserve(int64_t(c.tokens.size()));
    c.sequence->entry_tables(tables);
  }
  // ...and from here to the head, a decode step's device work is recorded and then runs as one
  // graph: its uploads (block tables, positions, ids) are staged instead of waited for. The new
  // block addresses go up in one copy for the batch, so no layer waits on a block-table upload.
  kernels::GraphRecording recording(backend_, records_graph(chunks));
  KvRows::sync_block_tables(backend_, tables);
  // Several chunks: their rows' positions go to the device once for every layer's RoPE.
  Scratch positions;
  if (nc > 1) positions = row_positions(backend_, segs);
  const BlockContext ctx{config_, backend_, options_.numerics == Numerics::kOfficial,
                         options_.parallel.sharded() ? &options_.parallel : nullptr, expert_parallel_.get(),
                         sp_ops_.get(), positions.view};
  std::vector<int32_t> all_ids(static_cast<size_t>(n));
  for (size_t i = 0; i < nc; ++i) std::copy(chunks[i].tokens.begin(), chunks[i].tokens.end(), all_ids.begin() + row0[i]);

  Scratch ids = make_scratch(backend_, {n}, DType::kI32);
  backend_.copy_to_device(ids.buffer.data(), all_ids.data(), size_t(n) * sizeof(int32_t));
  Scratch x = make_scratch(backend_, {n, hc, hidden});
  Scratch x2 = make_scratch(backend_, {n, hc, hidden});
  Scratch a = make_scratch(backend_, {n, hidden});
  Scratch o = make_scratch(backend_, {n, hidden});
  kernels::EmbeddingParams ep;
  ep.table = weights_.embed;
  ep.ids = ids.view;
  ep.out = x.view;
  {
    const OpScope scope("embed");
    backend_.embedding(ep);
  }

  auto sublayer_norm = [&](const WeightView& w) {
    kernels::RmsNormParams p;
    p.x = p.y = a.view;
    p.weight = w;
    p.eps = float(config_.rms_norm_eps);
    p.out_bf16 = ctx.official;
    backend_.rms_norm(p);
  };
  for (int l = 0; l < config_.num_hidden_layers; ++l) {
    const LayerWeights& lw = weights_.layers[size_t(l)];
    for (size_t i = 0; i < nc; ++i) {
      segs[i].state = &chunks[i].sequence->layer(l);
      segs[i].own = &chunks[i].sequence->ownership();
    }
    const OpScope layer_scope("layer " + std::to_string(l));  // names ops in diagnostics
    {
      const OpScope scope("attention");
      const HcMix mix = hc_pre(ctx, lw.hc_attn, x.view, a.view);
      sublayer_norm(lw.attn_norm);
      attention_forward_batched(ctx, lw, segs, a.view, o.view);
      hc_post(ctx, mix, o.view, x.view, x2.view);
    }
    {
      const OpScope scope("moe");
      const HcMix mix = hc_pre(ctx, lw.hc_ffn, x2.view, a.view);
      sublayer_norm(lw.ffn_norm);
      moe_forward(ctx, lw, l, a.view, ids.view, o.view);
      hc_post(ctx, mix, o.view, x2.view, x.view);
    }
    if (observer_) {
      for (size_t i = 0; i < nc; ++i) observer_(l, segs[i].pos_begin, kernels::view_rows(x.view, row0[i], row0[i + 1]));
    }
    recording.segment();  // a backend may enqueue this layer while the next one is recorded
  }
  for (size_t i = 0; i < nc; ++i) {
    const StepChunk& chunk = chunks[i];
    chunk.sequence->advance(row0[i + 1] - row0[i]);
    if (!chunk.hidden.data) continue;
    const int64_t rows = chunk.hidden.shape[0];
    CHECK(rows >= 1 && rows <= row0[i + 1] - row0[i] && chunk.hidden.numel() == rows * hc * hidden)
        << "hidden output " << chunk.hidden.shape_str();
    backend_.copy_rows(kernels::view_reshape(chunk.hidden, {rows, hc * hidden}),
                       kernels::view_reshape(kernels::view_rows(x.view, row0[i + 1] - rows, row0[i + 1]), {rows, hc * hidden}));
  }

  // The head over the rows that need logits (every row of an all_logits chunk, else its last).
  std::vector<int64_t> out0(nc + 1, 0);
  for (size_t i = 0; i < nc; ++i) {
    const int64_t rows = !logits[i] && !chunks[i].sample ? 0 : chunks[i].all_logits ? row0[i + 1] - row0[i] : 1;
    out0[i + 1] = out0[i] + rows;
  }
  const int64_t rows = out0[nc];
  if (rows == 0) {
    recording.end();
    return;
  }
  TensorView head_in = x.view;  // [rows, hc, D]
  Scratch gathered;
  if (rows != n) {
    gathered = make_scratch(backend_, {rows, hc, hidden});
    head_in = gathered.view;
    // Runs of consecutive selected rows copy together.
    int64_t dst = 0;
    for (size_t i = 0; i < nc;) {
      const int64_t cnt = out0[i + 1] - out0[i];
      if (cnt == 0) {
        ++i;
        continue;
      }
      int64_t src0 = row0[i + 1] - cnt, src1 = row0[i + 1];
      size_t j = i + 1;
      while (j < nc && out0[j + 1] - out0[j] == row0[j + 1] - row0[j] && row0[j + 1] > row0[j]) {
        src1 = row0[j + 1];  // the next chunk's rows are all selected and follow on
        ++j;
      }
      const int64_t len = src1 - src0;
      backend_.copy_rows(kernels::view_reshape(kernels::view_rows(gathered.view, dst, dst + len), {len, hc * hidden}),
                         kernels::view_reshape(kernels::view_rows(x.view, src0, src1), {len, hc * hidden}));
      dst += len;
      i = j;
    }
    CHECK_EQ(dst, rows);
  }
  const OpScope head_scope("head");
  const Scratch lg = lm_head(ctx, weights_.hc_head, weights_.norm, weights_.head, head_in);
  finish_head(chunks, logits, out0, lg.view, recording);
}

void Model::finish_head(std::span<const StepChunk> chunks, std::vector<float>* const* logits,
                        const std::vector<int64_t>& out0, const TensorView& head_logits,
                        kernels::GraphRecording& recording) {
  const size_t nc = chunks.size();
  const DeviceDraws draws = enqueue_draws(backend_, chunks, out0, head_logits);
  recording.end();  // the step's device work is enqueued; the host reads follow
  read_draws(backend_, chunks, out0, draws);
  const int64_t vocab = config_.vocab_size;
  bool every_row_to_host = true;
  for (size_t i = 0; i < nc; ++i) every_row_to_host &= logits[i] != nullptr || out0[i + 1] == out0[i];
  if (every_row_to_host) {  // one copy
    std::vector<float> host(size_t(out0[nc] * vocab));
    backend_.copy_to_host(host.data(), head_logits.data, host.size() * sizeof(float));
    for (size_t i = 0; i < nc; ++i) {
      if (!logits[i]) continue;
      if (nc == 1) {
        *logits[i] = std::move(host);
      } else {
        logits[i]->assign(host.begin() + out0[i] * vocab, host.begin() + out0[i + 1] * vocab);
      }
    }
    return;
  }
  for (size_t i = 0; i < nc; ++i) {  // only the rows the host asks for
    if (!logits[i]) continue;
    logits[i]->resize(size_t((out0[i + 1] - out0[i]) * vocab));
    backend_.copy_to_host(logits[i]->data(), kernels::view_rows(head_logits, out0[i], out0[i + 1]).data,
                          logits[i]->size() * sizeof(float));
  }
}

}  // namespace v4rt::model
