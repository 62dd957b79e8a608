// SPDX-License-Identifier: MIT
// Formatting of the planner's results and the predicted-vs-measured validation of sweep CSVs.
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

// ------------------------------------------------------------------------------------------------
// --validate

std::vector<MeasuredPoint> read_measured_csv(const std::string& path) {
  std::ifstream in(path);
  V4RT_REQUIRE(in.good(), "cannot read measurements file " << path);
  std::string line;
  V4RT_REQUIRE(std::getline(in, line), path << ": empty file (expected a CSV header)");
  auto split = [](const std::string& s) {
    std::vector<std::string> out;
    std::stringstream ss(s);
    std::string cell;
    while (std::getline(ss, cell, ',')) out.push_back(cell);
    if (!s.empty() && s.back() == ',') out.emplace_back();
    return out;
  };
  std::map<std::string, size_t> col;
  const std::vector<std::string> head = split(line);
  for (size_t i = 0; i < head.size(); ++i) col[head[i]] = i;
  for (const char* need : {"model", "gpu", "nodes", "gpus_per_node", "tp", "sp", "ep", "dp",
                           "context", "batch", "step_ms"})
    V4RT_REQUIRE(col.count(need), path << ": missing column '" << need << "'");
  std::vector<MeasuredPoint> points;
  int number = 1;
  while (std::getline(in, line)) {
    ++number;
    if (line.empty() || line[0] == '#') continue;
    const std::vector<std::string> cells = split(line);
    auto cell = [&](const char* name) -> std::string {
      auto it = col.find(name);
      return it == col.end() || it->second >= cells.size() ? "" : cells[it->second];
    };
    if (col.count("source") && cell("source") != "measured") continue;
    auto num = [&](const char* name) -> double {
      const std::string s = cell(name);
      if (s.empty()) return 0;
      try {
        size_t used = 0;
        const double v = std::stod(s, &used);
        if (used == s.size()) return v;
      } catch (const std::exception&) {
      }
      V4RT_FAIL(path << ":" << number << ": column '" << name << "' is not a number: '" << s << "'");
    };
    MeasuredPoint p;
    p.line = number;
    p.model = cell("model");
    p.gpu = cell("gpu");
    p.nodes = int(num("nodes"));
    p.gpus_per_node = int(num("gpus_per_node"));
    p.layout = {int(num("tp")), int(num("sp")), int(num("ep")), int(num("dp"))};
    p.context = int64_t(num("context"));
    p.batch = int64_t(num("batch"));
    const std::string kv = cell("kv_format");
    V4RT_REQUIRE(kv.empty() || kv == "compact" || kv == "bf16",
                 path << ":" << number << ": kv_format must be compact or bf16, got '" << kv << "'");
    p.kv_format = kv == "bf16" ? KvFormat::kBf16 : KvFormat::kCompact;
    p.step_ms = num("step_ms");
    p.prefill_s = num("prefill_s");
    V4RT_REQUIRE(p.nodes >= 1 && p.gpus_per_node >= 1 && p.context >= 1 && p.batch >= 1,
                 path << ":" << number << ": nodes, gpus_per_node, context and batch must be >= 1");
    if (p.step_ms > 0 || p.prefill_s > 0) points.push_back(p);
  }
  return points;
}

int print_validation(std::ostream& os, const std::vector<MeasuredPoint>& points,
                     const ModelResolver& model_of, const GpuResolver& gpu_of,
                     const Calibration& calib) {
  if (points.empty()) {
    os << "no measured points (rows with source=measured and a step_ms or prefill_s value)\n";
    return 0;
  }
  os << "line  model  gpu   nodes x gpus  layout                   context   batch  "
        "step ms pred  step ms meas   error  prefill s pred  prefill s meas   error\n";
  double sum_abs = 0;
  int compared = 0;
  for (const MeasuredPoint& m : points) {
    const model::ModelConfig c = model_of(m.model);
    const GpuSpec gpu = gpu_of(m.gpu);
    const Cluster cluster{m.nodes, m.gpus_per_node};
    const std::vector<std::string> why = layout_problems(c, m.layout, cluster);
    V4RT_REQUIRE(why.empty(), "measured point at line " << m.line << " has an invalid layout: " << why[0]);
    const double step = decode_step_time(c, gpu, calib, cluster, m.layout, m.context, m.batch,
                                         m.kv_format).total() * 1e3;
    const double prefill = prefill_time(c, gpu, calib, cluster, m.layout, m.context, m.kv_format).total();
    auto err = [](double pred, double meas) {
      return meas > 0 ? fmt("%+6.1f%%", (pred - meas) / meas * 100) : std::string("      -");
    };
    auto meas = [](double v, const char* f) { return v > 0 ? fmt(f, v) : std::string("-"); };
    os << fmt("%4d  %-5s  %-4s  %5d x %-4d  %-23s %8lld %7lld  %12.3f  %12s  %s  %14.2f  %14s  %s\n",
              m.line, m.model.c_str(), m.gpu.c_str(), m.nodes, m.gpus_per_node,
              layout_text(m.layout).c_str(), (long long)m.context, (long long)m.batch, step,
              meas(m.step_ms, "%.3f").c_str(), err(step, m.step_ms).c_str(), prefill,
              meas(m.prefill_s, "%.2f").c_str(), err(prefill, m.prefill_s).c_str());
    if (m.step_ms > 0) {
      sum_abs += std::fabs(step - m.step_ms) / m.step_ms;
      ++compared;
    }
  }
  if (compared) os << fmt("mean |error| of the decode step over %d point(s): %.1f%%\n", compared, sum_abs / compared * 100);
  return int(points.size());
}

}  // namespace v4rt::launch::plan
