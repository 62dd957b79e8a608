// SPDX-License-Identifier: MIT
// DebugBackend: forwards each op to the inner backend, then synchronizes, checks and dumps the
// op's outputs as the options ask. Outputs are read back through the inner backend's
// copy_to_host, so the same code serves host and device backends.
#include "kernels/debug_backend.h"

#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <sstream>
#include <vector>

#include "common/check.h"
#include "common/op_scope.h"
#include "kernels/forwarding_backend.h"

namespace v4rt::kernels {

namespace {

// One output of an op: its name in messages and file names, and whether -inf is a legal value.
struct Output {
  std::string name;
  TensorView view;
  bool neg_inf_ok = false;
};

// A view's elements in row-major order, as float (F32, BF16) or int32 (I32).
struct HostTensor {
  std::vector<float> f;
  std::vector<int32_t> i;
  bool is_int = false;
};

std::vector<int64_t> dims_of(const TensorView& v) { return std::vector<int64_t>(v.shape.begin(), v.shape.begin() + v.ndim); }

std::string dims_str(const std::vector<int64_t>& dims) {
  std::ostringstream os;
  os << "[";
  for (size_t d = 0; d < dims.size(); ++d) os << (d ? ", " : "") << dims[d];
  os << "]";
  return os.str();
}

// The multi-index of row-major element `flat` of a view with `dims`.
std::string index_str(const std::vector<int64_t>& dims, int64_t flat) {
  std::vector<int64_t> idx(dims.size());
  for (size_t d = dims.size(); d-- > 0;) {
    idx[d] = dims[d] ? flat % dims[d] : 0;
    flat = dims[d] ? flat / dims[d] : 0;
  }
  return dims_str(idx);
}

// Safe as a file name part: letters, digits, '-', '_'; '/' of nested scopes becomes '.'.
std::string file_part(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_') out += c;
    else if (c == '/') out += '.';
    else out += '_';
  }
  return out.empty() ? "none" : out;
}

// .npy version 1.0: magic, header length, a Python dict literal padded to a multiple of 64 bytes.
void write_npy(const std::string& path, const char* descr, const std::vector<int64_t>& dims, const void* data,
               size_t bytes) {
  std::string header = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (";
  for (size_t d = 0; d < dims.size(); ++d) header += std::to_string(dims[d]) + (dims.size() == 1 || d + 1 < dims.size() ? "," : "");
  header += "), }";
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  V4RT_REQUIRE(out.good(), "debug.dump_dir: cannot write " << path);
  const uint16_t len = uint16_t(header.size());
  out.write("\x93NUMPY\x01\x00", 8);
  const char len_le[2] = {char(len & 0xff), char(len >> 8)};
  out.write(len_le, 2);
  out.write(header.data(), std::streamsize(header.size()));
  out.write(static_cast<const char*>(data), std::streamsize(bytes));
  V4RT_REQUIRE(out.good(), "debug.dump_dir: writing " << path << " failed");
}

class DebugBackend final : public ForwardingBackend {
 public:
  DebugBackend(std::unique_ptr<Backend> inner, const DebugOptions& options)
      : ForwardingBackend(std::move(inner)), options_(options) {
    if (!options_.dump_dir.empty()) {
      std::error_code ec;
      std::filesystem::create_directories(options_.dump_dir, ec);
      V4RT_REQUIRE(!ec && std::filesystem::is_directory(options_.dump_dir),
                   "debug.dump_dir: cannot create directory '" << options_.dump_dir << "': " << ec.message());
      index_.open(std::filesystem::path(options_.dump_dir) / "index.tsv", std::ios::trunc);
      V4RT_REQUIRE(index_.good(), "debug.dump_dir: cannot write " << options_.dump_dir << "/index.tsv");
      index_ << "file\tscope\top\toutput\tdtype\tshape\n";
    }
  }

  // Every op is synchronized, checked or dumped as it runs: a step is never recorded as a graph.
  bool graphs() const override { return false; }
  void begin_graph() override {}
  void end_graph() override {}
  void abort_graph() override {}
  void graph_segment() override {}

  void copy_to_device(void* d, const void* s, size_t b) override { moved("copy_to_device", [&] { inner().copy_to_device(d, s, b); }); }
  void copy_to_host(void* d, const void* s, size_t b) override { moved("copy_to_host", [&] { inner().copy_to_host(d, s, b); }); }
  void copy_rows(const TensorView& d, const TensorView& s) override { moved("copy_rows", [&] { inner().copy_rows(d, s); }); }
  void copy_rows_batch(const RowCopy* c, size_t n) override {
    moved("copy_rows_batch", [&] { inner().copy_rows_batch(c, n); });
  }
  void fill(const TensorView& d, float v) override { moved("fill", [&] { inner().fill(d, v); }); }

  void rms_norm(const RmsNormParams& p) override { run("rms_norm", [&] { inner().rms_norm(p); }, {{"y", p.y}}); }
  void rope(const RopeParams& p) override { run("rope", [&] { inner().rope(p); }, {{"x", p.x}}); }
  void hc_pre(const HcPreParams& p) override {
    run("hc_pre", [&] { inner().hc_pre(p); }, {{"a", p.a}, {"post", p.post}, {"comb", p.comb}});
  }
  void hc_post(const HcPostParams& p) override { run("hc_post", [&] { inner().hc_post(p); }, {{"x_new", p.x_new}}); }
  void hc_head(const HcHeadParams& p) override { run("hc_head", [&] { inner().hc_head(p); }, {{"y", p.y}}); }
  void linear(const LinearParams& p) override { run("linear", [&] { inner().linear(p); }, {{"y", p.y}}); }
  void grouped_linear(const GroupedLinearParams& p) override {
    run("grouped_linear", [&] { inner().grouped_linear(p); }, {{"y", p.y}});
  }
  void compressor_pool(const CompressorPoolParams& p) override {
    run("compressor_pool", [&] { inner().compressor_pool(p); }, {{"out", p.out}});
  }
  void hadamard(const HadamardParams& p) override { run("hadamard", [&] { inner().hadamard(p); }, {{"x", p.x}}); }
  void indexer_scores(const IndexerScoresParams& p) override {
    run("indexer_scores", [&] { inner().indexer_scores(p); }, {{"scores", p.scores, true}});
  }
  void topk(const TopkParams& p) override {
    run("topk", [&] { inner().topk(p); }, {{"out_idx", p.out_idx}, {"out_values", p.out_values, true}});
  }
  void sample(const SampleParams& p) override {
    run("sample", [&] { inner().sample(p); },
        {{"out_ids", p.out_ids}, {"out_logprob", p.out_logprob, true}, {"out_top_logprobs", p.out_top_logprobs, true}});
  }
  void kv_pack(const KvPackParams& p) override { moved("kv_pack", [&] { inner().kv_pack(p); }); }
  void sparse_attention(const SparseAttentionParams& p) override {
    run("sparse_attention", [&] { inner().sparse_attention(p); }, {{"out", p.out}, {"lse", p.lse, true}});
  }
  // The batched ops: every part's outputs, named with the part's index ("out.3").
  void indexer_scores_batch(const IndexerScoresBatchParams& p) override {
    std::vector<Output> outputs;
    for (int64_t i = 0; i < p.num_parts; ++i) outputs.push_back({"scores." + std::to_string(i), p.parts[i].scores, true});
    run("indexer_scores_batch", [&] { inner().indexer_scores_batch(p); }, outputs);
  }
  void compressor_pool_batch(const CompressorPoolBatchParams& p) override {
    std::vector<Output> outputs;
    for (int64_t i = 0; i < p.num_parts; ++i) outputs.push_back({"out." + std::to_string(i), p.parts[i].out});
    run("compressor_pool_batch", [&] { inner().compressor_pool_batch(p); }, outputs);
  }
  void sparse_attention_batch(const SparseAttentionBatchParams& p) override {
    std::vector<Output> outputs;
    for (int64_t i = 0; i < p.num_parts; ++i) {
      outputs.push_back({"out." + std::to_string(i), p.parts[i].out});
      outputs.push_back({"lse." + std::to_string(i), p.parts[i].lse, true});
    }
    run("sparse_attention_batch", [&] { inner().sparse_attention_batch(p); }, outputs);
  }
  void moe_gate(const MoeGateParams& p) override {
    run("moe_gate", [&] { inner().moe_gate(p); }, {{"out_idx", p.out_idx}, {"out_weight", p.out_weight}});
  }
  void moe_experts(const MoeExpertsParams& p) override {
    run("moe_experts", [&] { inner().moe_experts(p); }, {{"out", p.out}});
  }
  void swiglu(const SwigluParams& p) override { run("swiglu", [&] { inner().swiglu(p); }, {{"h", p.h}}); }
  void embedding(const EmbeddingParams& p) override { run("embedding", [&] { inner().embedding(p); }, {{"out", p.out}}); }
  void add(const AddParams& p) override { run("add", [&] { inner().add(p); }, {{"out", p.out}}); }
  void qdq(const QdqParams& p) override { run("qdq", [&] { inner().qdq(p); }, {{"x", p.x}}); }

 private:
  // Runs an op inside a scope naming it, so a fault raised while it runs or synchronizes names it.
  template <typename F>
  void moved(const char* op, F&& f) {
    const OpScope scope(op);
    f();
    if (options_.sync_each_op) inner().synchronize();
  }

  template <typename F>
  void run(const char* op, F&& f, const std::vector<Output>& outputs) {
    const std::string where = current_op_scope();
    {
      const OpScope scope(op);
      f();
      if (options_.sync_each_op) inner().synchronize();
    }
    if (!options_.check_finite && options_.dump_dir.empty()) return;
    for (const Output& o : outputs) {
      if (!o.view.data) continue;
      const HostTensor t = read(o.view, op, o.name.c_str());
      if (options_.check_finite && !t.is_int) check(t, o, where, op);
      if (!options_.dump_dir.empty()) dump(t, o, where, op);
    }
    ++op_count_;
  }

  HostTensor read(const TensorView& v, const char* op, const char* name) {
    const std::vector<int64_t> dims = dims_of(v);
    int64_t span = 1, numel = 1;
    for (int d = 0; d < v.ndim; ++d) {
      if (v.shape[size_t(d)] == 0) return HostTensor{};
      span += (v.shape[size_t(d)] - 1) * v.stride[size_t(d)];
      numel *= v.shape[size_t(d)];
    }
    HostTensor t;
    const size_t es = dtype_size(v.dtype);
    if (v.dtype != DType::kF32 && v.dtype != DType::kBF16 && v.dtype != DType::kI32) {
      V4RT_FAIL("debug backend: " << op << " output '" << name << "' has dtype " << dtype_name(v.dtype)
                                  << ", which the checks cannot read");
    }
    std::vector<uint8_t> raw(size_t(span) * es);
    inner().copy_to_host(raw.data(), v.data, raw.size());
    t.is_int = v.dtype == DType::kI32;
    if (t.is_int) t.i.resize(size_t(numel));
    else t.f.resize(size_t(numel));
    std::vector<int64_t> idx(dims.size(), 0);
    for (int64_t k = 0; k < numel; ++k) {
      int64_t off = 0;
      for (size_t d = 0; d < dims.size(); ++d) off += idx[d] * v.stride[d];
      const uint8_t* src = raw.data() + size_t(off) * es;
      if (v.dtype == DType::kF32) std::memcpy(&t.f[size_t(k)], src, 4);
      else if (v.dtype == DType::kBF16) {
        uint16_t h;
        std::memcpy(&h, src, 2);
        t.f[size_t(k)] = bf16_to_f32(h);
      } else {
        std::memcpy(&t.i[size_t(k)], src, 4);
      }
      for (size_t d = dims.size(); d-- > 0;) {  // next row-major index
        if (++idx[d] < dims[d]) break;
        idx[d] = 0;
      }
    }
    return t;
  }

  void check(const HostTensor& t, const Output& o, const std::string& where, const char* op) const {
    int64_t bad = 0, first = -1;
    for (size_t k = 0; k < t.f.size(); ++k) {
      const float x = t.f[k];
      if (std::isfinite(x) || (o.neg_inf_ok && std::isinf(x) && x < 0)) continue;
      if (first < 0) first = int64_t(k);
      ++bad;
    }
    if (bad == 0) return;
    const std::vector<int64_t> dims = dims_of(o.view);
    V4RT_FAIL("debug.check_finite: first non-finite value at " << (where.empty() ? "(outside any scope)" : where)
              << ", op " << op << ": output '" << o.name << "' " << dims_str(dims) << " holds "
              << t.f[size_t(first)] << " at " << index_str(dims, first) << " (" << bad << " non-finite of "
              << t.f.size() << ")");
  }

  void dump(const HostTensor& t, const Output& o, const std::string& where, const char* op) {
    char num[16];
    std::snprintf(num, sizeof(num), "%06lld", static_cast<long long>(op_count_));
    const std::string file = std::string(num) + "_" + file_part(where) + "_" + op + "_" + o.name + ".npy";
    const std::vector<int64_t> dims = dims_of(o.view);
    const std::string path = (std::filesystem::path(options_.dump_dir) / file).string();
    if (t.is_int) write_npy(path, "<i4", dims, t.i.data(), t.i.size() * 4);
    else write_npy(path, "<f4", dims, t.f.data(), t.f.size() * 4);
    index_ << file << '\t' << where << '\t' << op << '\t' << o.name << '\t' << (t.is_int ? "int32" : "float32") << '\t'
           << dims_str(dims) << '\n';
    index_.flush();
  }

  DebugOptions options_;
  std::ofstream index_;
  int64_t op_count_ = 0;
};

}  // namespace

std::unique_ptr<Backend> make_debug_backend(std::unique_ptr<Backend> inner, const DebugOptions& options) {
  CHECK(inner) << "make_debug_backend: no inner backend";
  return std::make_unique<DebugBackend>(std::move(inner), options);
}

}  // namespace v4rt::kernels
