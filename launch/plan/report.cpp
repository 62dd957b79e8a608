// SPDX-License-Identifier: MIT
// Formatting of the planner's results.
#include "launch/plan/report.h"

#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>

#include "common/check.h"

namespace v4rt::launch::plan {
namespace {

constexpr double kGiB = double(1ull << 30);

std::string fmt(const char* format, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char* format, ...) {
  char buf[512];
  va_list args;
  va_start(args, format);
  std::vsnprintf(buf, sizeof(buf), format, args);
  va_end(args);
  return buf;
}

std::string layout_text(const parallel::Layout& l) {
  return fmt("tp=%d sp=%d ep=%d dp=%d", l.tp, l.sp, l.ep, l.dp);
}

std::string tokens_text(int64_t n) {
  if (n >= (1 << 20) && n % (1 << 20) == 0) return fmt("%lldM", (long long)(n >> 20));
  if (n >= 1024 && n % 1024 == 0) return fmt("%lldK", (long long)(n >> 10));
  return fmt("%lld", (long long)n);
}

const char* kTableHead =
    "   tp   sp   ep   dp  weights/GPU   KV/seq  KV/seq/GPU  fit seqs   batch  decode ms"
    "     tok/s  prefill s  notes\n";

std::string row_text(const Prediction& p) {
  return fmt("%5d%5d%5d%5d %8.1f GiB %6.2f GiB %7.3f GiB %9lld %7lld %10.2f %9.0f %10.1f  %s\n",
             p.layout.tp, p.layout.sp, p.layout.ep, p.layout.dp, p.weight_bytes_per_gpu / kGiB,
             p.kv.total() / kGiB, p.kv_bytes_per_seq_gpu / kGiB, (long long)p.max_seqs,
             (long long)p.batch, p.decode.total() * 1e3, p.tokens_per_s, p.prefill.total(),
             p.note.c_str());
}

std::string breakdown_text(const StepTime& t, double scale, const char* unit) {
  if (t.kernels > 0) {
    std::string fams;
    for (int i = 0; i < kNumOpFamilies; ++i)
      fams += fmt("%s%s %.2f", i ? ", " : "", op_family_name(OpFamily(i)), t.family_s[size_t(i)] * scale);
    return fmt("kernels %.2f %s (per op family, calibrated: %s), TP %.2f, EP %.2f, SP %.2f %s",
               t.kernels * scale, unit, fams.c_str(), t.tp * scale, t.ep * scale, t.sp * scale, unit);
  }
  return fmt("compute %.2f %s, HBM %.2f %s (roofline takes the larger), TP %.2f, EP %.2f, SP %.2f, "
             "launch %.2f %s",
             t.compute * scale, unit, t.memory * scale, unit, t.tp * scale, t.ep * scale,
             t.sp * scale, t.launch * scale, unit);
}

}  // namespace

void print_plan(std::ostream& os, const ReportHeader& h, const model::ModelConfig& c,
                const GpuSpec& gpu, const PlanRequest& req, const Plan& plan) {
  const WeightBytes w = weight_bytes(c);
  os << fmt("model %s: weights %.1f GiB (%lld bytes incl. MTP %.1f GiB); KV %s %.2f B/token "
            "(%.2f GiB per %s-token sequence + %.1f MiB window/compressor state)\n",
            h.model_name.c_str(), w.total() / kGiB, (long long)w.total(), w.mtp.total() / kGiB,
            kv_format_name(req.kv_format), kv_bytes_per_token(c, req.kv_format),
            kv_bytes(c, req.context, req.kv_format).compressed / kGiB, tokens_text(req.context).c_str(),
            double(kv_bytes(c, req.context, req.kv_format).window_ring +
                   kv_bytes(c, req.context, req.kv_format).compressor_state) / (1 << 20));
  os << fmt("cluster: %d node(s) x %d %s = %d GPUs, %.1f GiB HBM each; context %s; batch %s; "
            "latency target %s\n",
            req.cluster.nodes, req.cluster.gpus_per_node, h.gpu_name.c_str(), req.cluster.world(),
            gpu.hbm_bytes / kGiB, tokens_text(req.context).c_str(),
            req.batch > 0 ? std::to_string(req.batch).c_str() : "max that fits",
            req.latency_target_s > 0 ? fmt("%.1f ms", req.latency_target_s * 1e3).c_str() : "none");
  os << "\nlayouts (decode step and tok/s at the batch shown; prefill = one sequence of the context):\n";
  os << kTableHead;
  int rejected = 0;
  for (const Prediction& p : plan.rows) {
    if (!p.rejected.empty()) {
      ++rejected;
      continue;
    }
    os << row_text(p);
  }
  if (rejected) {
    os << "\nrejected layouts:\n";
    for (const Prediction& p : plan.rows)
      if (!p.rejected.empty()) os << "  " << layout_text(p.layout) << ": " << p.rejected << "\n";
  }
  os << "\n";
  if (plan.best < 0) {
    os << "recommended: none (no layout fits" << (req.latency_target_s > 0 ? " and meets the latency target" : "")
       << ")\n";
    return;
  }
  const Prediction& b = plan.rows[size_t(plan.best)];
  os << fmt("recommended: %s: %lld sequences of %s tokens fit; batch %lld decodes at %.2f ms/step = "
            "%.0f tok/s; prefill of one %s-token prompt %.1f s\n",
            layout_text(b.layout).c_str(), (long long)b.max_seqs, tokens_text(req.context).c_str(),
            (long long)b.batch, b.decode.total() * 1e3, b.tokens_per_s,
            tokens_text(req.context).c_str(), b.prefill.total());
  os << "  decode step: " << breakdown_text(b.decode, 1e3, "ms") << "\n";
  os << "  prefill:     " << breakdown_text(b.prefill, 1.0, "s") << "\n";
}

void print_kv_comparison(std::ostream& os, const model::ModelConfig& c, const GpuSpec& gpu,
                         const Calibration& calib, const PlanRequest& req, const Plan& plan) {
  os << fmt("\n%s-token KV: sequence-parallel vs TP-replicated, same GPUs per sequence (%s format):\n",
            tokens_text(req.context).c_str(), kv_format_name(req.kv_format));
  os << "  GPUs/seq  kind            layout                  KV/seq/GPU  sequences that fit"
        "  decode ms   tok/s  prefill s\n";
  bool any = false;
  for (int group = 2; group <= req.cluster.world(); ++group) {
    // The SP layout with tp*sp = group that fits the most sequences.
    const Prediction* sp_row = nullptr;
    for (const Prediction& p : plan.rows) {
      if (!p.rejected.empty() || p.layout.sp == 1 || p.layout.tp * p.layout.sp != group) continue;
      if (!sp_row || p.max_seqs > sp_row->max_seqs) sp_row = &p;
    }
    if (!sp_row) continue;
    any = true;
    Prediction rep;
    rep.layout = {group, 1, sp_row->layout.ep, sp_row->layout.dp};
    if (auto lay = tp_replicated_counterpart(c, sp_row->layout, req.cluster))
      rep = predict(c, gpu, calib, req, *lay);
    else
      rep.rejected = layout_problems(c, rep.layout, req.cluster).at(0);
    for (const Prediction* p : std::initializer_list<const Prediction*>{sp_row, &rep}) {
      const char* kind = p == sp_row ? "sp-partitioned" : "tp-replicated";
      if (!p->rejected.empty()) {
        os << fmt("  %8d  %-15s %-23s %7.3f GiB  0 (%s)\n", group, kind, layout_text(p->layout).c_str(),
                  kv_bytes(c, req.context, req.kv_format).per_gpu(p->layout.sp) / kGiB,
                  p->rejected.c_str());
        continue;
      }
      os << fmt("  %8d  %-15s %-23s %7.3f GiB  %18lld %10.2f %7.0f %10.1f\n", group, kind,
                layout_text(p->layout).c_str(), p->kv_bytes_per_seq_gpu / kGiB, (long long)p->max_seqs,
                p->decode.total() * 1e3, p->tokens_per_s, p->prefill.total());
    }
  }
  if (!any) os << "  no layout with sp > 1 fits\n";
}

}  // namespace v4rt::launch::plan
