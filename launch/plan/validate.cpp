// SPDX-License-Identifier: MIT
// Measured points -> predictions, per-op-family fit, predicted-vs-measured table.
#include "launch/plan/validate.h"

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "common/check.h"

namespace v4rt::launch::plan {
namespace {

std::string fmt(const char* format, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char* format, ...) {
  char buf[1024];
  va_list args;
  va_start(args, format);
  std::vsnprintf(buf, sizeof(buf), format, args);
  va_end(args);
  return buf;
}

// ------------------------------------------------------------------------------------------------
// Reading measured points

// One CSV line; double-quoted cells may hold commas ("" is a quote).
std::vector<std::string> split_csv(const std::string& line) {
  std::vector<std::string> out(1);
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char ch = line[i];
    if (quoted) {
      if (ch == '"' && i + 1 < line.size() && line[i + 1] == '"') out.back() += '"', ++i;
      else if (ch == '"') quoted = false;
      else out.back() += ch;
    } else if (ch == '"') {
      quoted = true;
    } else if (ch == ',') {
      out.emplace_back();
    } else if (ch != '\r') {
      out.back() += ch;
    }
  }
  for (std::string& cell : out) {
    const size_t a = cell.find_first_not_of(" \t"), b = cell.find_last_not_of(" \t");
    cell = a == std::string::npos ? "" : cell.substr(a, b - a + 1);
  }
  return out;
}

// Configuration columns: rows of the long layout with equal values form one point.
const char* const kIdentity[] = {"model", "layers", "batch", "context", "gpu", "nodes", "gpus_per_node",
                                 "tp", "sp", "ep", "dp", "kv_format", "batching", "head"};

struct Row {
  std::map<std::string, size_t>* col;
  std::vector<std::string> cells;
  std::string path;
  int line;
  std::string cell(const char* name) const {
    auto it = col->find(name);
    return it == col->end() || it->second >= cells.size() ? "" : cells[it->second];
  }
  double num(const char* name, double fallback = 0) const {
    const std::string s = cell(name);
    if (s.empty()) return fallback;
    try {
      size_t used = 0;
      const double v = std::stod(s, &used);
      if (used == s.size() && std::isfinite(v)) return v;
    } catch (const std::exception&) {
    }
    V4RT_FAIL(path << ":" << line << ": column '" << name << "' is not a number: '" << s << "'");
  }
};

MeasuredPoint point_of(const Row& r, const PointDefaults& defaults) {
  MeasuredPoint p;
  p.file = r.path;
  p.line = r.line;
  p.model = r.cell("model");
  V4RT_REQUIRE(!p.model.empty(), r.path << ":" << r.line << ": empty 'model'");
  p.gpu = r.cell("gpu").empty() ? defaults.gpu : r.cell("gpu");
  p.layers = int(r.num("layers"));
  p.layout.tp = int(r.num("tp", 1));
  p.layout.sp = int(r.num("sp", 1));
  p.layout.ep = int(r.num("ep", 1));
  p.layout.dp = int(r.num("dp", 1));
  V4RT_REQUIRE(p.layout.tp >= 1 && p.layout.sp >= 1 && p.layout.ep >= 1 && p.layout.dp >= 1,
               r.path << ":" << r.line << ": tp, sp, ep, dp must be >= 1");
  const int world = p.layout.tp * p.layout.sp * p.layout.dp;
  p.nodes = int(r.num("nodes", 1));
  p.gpus_per_node = int(r.num("gpus_per_node", std::max(1, world / std::max(1, p.nodes))));
  p.context = int64_t(r.num("context"));
  p.batch = int64_t(r.num("batch"));
  const std::string kv = r.cell("kv_format");
  if (kv.empty()) {
    p.kv_format = defaults.kv_format;
  } else {
    const auto f = parse_kv_format(kv);
    V4RT_REQUIRE(f, r.path << ":" << r.line << ": kv_format must be compact, bf16 or f32, got '" << kv << "'");
    p.kv_format = *f;
  }
  const std::string bt = r.cell("batching");
  if (bt.empty()) {
    p.batching = defaults.batching;
  } else {
    const auto b = parse_batching(bt);
    V4RT_REQUIRE(b, r.path << ":" << r.line << ": batching must be batched or sequential, got '" << bt << "'");
    p.batching = *b;
  }
  const std::string head = r.cell("head");
  V4RT_REQUIRE(head.empty() || head == "leader" || head == "split",
               r.path << ":" << r.line << ": head must be leader or split, got '" << head << "'");
  p.head_on_leader = head.empty() ? defaults.head_on_leader : head == "leader";
  V4RT_REQUIRE(p.nodes >= 1 && p.gpus_per_node >= 1 && p.context >= 1 && p.batch >= 1 && p.layers >= 0,
               r.path << ":" << r.line << ": nodes, gpus_per_node, context and batch must be >= 1, layers >= 0");
  return p;
}

// ------------------------------------------------------------------------------------------------
// The planner's view of a measured point, and the fit

struct PointModel {
  StepOps ops{};       // the whole step (sequential passes included)
  double comm_s = 0;   // TP + EP + SP of the whole step
};

PointModel point_model(const MeasuredPoint& p, const ModelResolver& model_of, const GpuResolver& gpu_of,
                       const Calibration& calib) {
  const model::ModelConfig c = with_layers(model_of(p.model), p.layers);
  const GpuSpec gpu = gpu_of(p.gpu);
  const parallel::Layout& lay = p.layout;
  const bool seq = p.batching == Batching::kSequential;
  const double per_replica = std::ceil(double(p.batch) / lay.dp);
  const double passes = seq ? per_replica : 1;
  PointModel m;
  m.ops = decode_step_ops(c, gpu, lay, p.context, seq ? 1 : per_replica, seq ? lay.dp : double(p.batch),
                          p.kv_format, p.head_on_leader);
  const double scale = passes * cpu_share(gpu, {p.nodes, p.gpus_per_node, gpu.fp8_block_tiles});
  for (OpCost& op : m.ops) op.launches *= scale, op.bytes *= scale, op.flops *= scale;
  Calibration plain = calib;
  plain.families = {};
  const StepTime t = decode_step_time(c, gpu, plain, {p.nodes, p.gpus_per_node, gpu.fp8_block_tiles}, lay,
                                      p.context, p.batch,
                                      p.kv_format, p.batching, p.head_on_leader);
  m.comm_s = t.tp + t.ep + t.sp;
  return m;
}

// Measured ms per family; `other` also takes the step time no other family accounts for.
std::array<double, kNumOpFamilies> measured_families(const MeasuredPoint& p, const model::ModelConfig& c,
                                                     std::array<bool, kNumOpFamilies>* present) {
  std::array<double, kNumOpFamilies> ms{};
  present->fill(false);
  for (const MeasuredOp& op : p.ops) {
    const OpFamily f = op_family_of_kernel(op.name, c);
    ms[size_t(f)] += op.ms;
    (*present)[size_t(f)] = true;
  }
  const size_t other = size_t(OpFamily::kOther);
  if (p.step_ms > 0) {
    double booked = 0;
    for (int i = 0; i < kNumOpFamilies; ++i)
      if (size_t(i) != other) booked += ms[size_t(i)];
    ms[other] = std::max(0.0, p.step_ms - booked);
    (*present)[other] = true;
  }
  return ms;
}

struct FitRow {
  double launches, roofline_s, measured_s;
};

// measured = a * launches + u * roofline, a >= 0, u = 1/efficiency >= 1, relative least squares.
FamilyCalibration fit_rows(const std::vector<FitRow>& rows, double fallback_launch_s, std::string* how) {
  double s11 = 0, s12 = 0, s22 = 0, t1 = 0, t2 = 0;
  std::set<std::pair<double, double>> shapes;
  for (const FitRow& r : rows) {
    if (r.measured_s <= 0) continue;
    const double w = 1.0 / (r.measured_s * r.measured_s);
    s11 += w * r.launches * r.launches;
    s12 += w * r.launches * r.roofline_s;
    s22 += w * r.roofline_s * r.roofline_s;
    t1 += w * r.launches * r.measured_s;
    t2 += w * r.roofline_s * r.measured_s;
    shapes.insert({r.launches, r.roofline_s / std::max(r.launches, 1e-30)});
  }
  FamilyCalibration f;
  f.fitted = true;
  double a = 0, u = 1;
  if (s22 <= 0) {  // launch-bound family: latency only
    a = s11 > 0 ? t1 / s11 : 0;
    *how = "launch latency only";
  } else {
    const double det = s11 * s22 - s12 * s12;
    if (shapes.size() >= 2 && det > 1e-9 * s11 * s22) {
      a = (t1 * s22 - t2 * s12) / det;
      u = (s11 * t2 - s12 * t1) / det;
      *how = "latency and efficiency";
      if (a < 0) a = 0, u = t2 / s22, *how = "efficiency (latency clamped to 0)";
    } else {
      a = fallback_launch_s;
      u = (t2 - a * s12) / s22;
      *how = "efficiency, launch latency of `other`";
    }
    if (u < 1) {
      u = 1;
      a = s11 > 0 ? std::max(0.0, (t1 - s12) / s11) : 0;
      *how += " (efficiency clamped to 1)";
    }
  }
  f.launch_s = std::max(0.0, a);
  f.efficiency = 1.0 / u;
  return f;
}

std::string kv_tag(const MeasuredPoint& p) { return kv_format_name(p.kv_format); }

}  // namespace

std::string MeasuredPoint::key() const {
  return fmt("%s L%d b%lld ctx%lld %s %dx%d tp%d sp%d ep%d dp%d %s %s", model.c_str(), layers,
             (long long)batch, (long long)context, gpu.c_str(), nodes, gpus_per_node, layout.tp,
             layout.sp, layout.ep, layout.dp, kv_tag(*this).c_str(), batching_name(batching)) +
         (head_on_leader && layout.tp > 1 ? " head-on-leader" : "");
}

std::vector<MeasuredPoint> read_points_csv(const std::string& path, const PointDefaults& defaults) {
  std::ifstream in(path);
  V4RT_REQUIRE(in.good(), "cannot read measured points file " << path);
  std::string line;
  int number = 0;
  std::map<std::string, size_t> col;
  while (std::getline(in, line)) {  // header: the first line that is not a comment
    ++number;
    if (line.empty() || line[0] == '#') continue;
    const std::vector<std::string> head = split_csv(line);
    for (size_t i = 0; i < head.size(); ++i) col[head[i]] = i;
    break;
  }
  V4RT_REQUIRE(!col.empty(), path << ": empty file (expected a CSV header)");
  // `v4rt bench step` names: preset = model, op_family = op.
  for (const auto& [alias, name] : {std::pair<const char*, const char*>{"preset", "model"}, {"op_family", "op"}})
    if (!col.count(name) && col.count(alias)) col[name] = col[alias];
  for (const char* need : {"model", "context", "batch"})
    V4RT_REQUIRE(col.count(need), path << ": missing column '" << need << "'");
  const bool long_form = col.count("op") > 0;
  V4RT_REQUIRE(long_form ? col.count("ms") > 0 : col.count("step_ms") > 0,
               path << (long_form ? ": an 'op' column needs an 'ms' column"
                                  : ": missing column 'step_ms' (or 'op' + 'ms', one row per op)"));
  std::vector<MeasuredPoint> points;
  std::map<std::string, size_t> by_config;  // long form: identity cells -> index in points
  while (std::getline(in, line)) {
    ++number;
    if (line.empty() || line[0] == '#') continue;
    const Row r{&col, split_csv(line), path, number};
    if (col.count("source") && r.cell("source") != "measured") continue;
    if (!long_form) {
      MeasuredPoint p = point_of(r, defaults);
      p.step_ms = r.num("step_ms");
      p.prefill_s = r.num("prefill_s");
      if (p.step_ms > 0 || p.prefill_s > 0) points.push_back(p);
      continue;
    }
    std::string id;
    for (const char* k : kIdentity) id += r.cell(k) + "\x1f";
    auto it = by_config.find(id);
    if (it == by_config.end()) {
      it = by_config.emplace(id, points.size()).first;
      points.push_back(point_of(r, defaults));
    }
    MeasuredPoint& p = points[it->second];
    const std::string op = r.cell("op");
    V4RT_REQUIRE(!op.empty(), path << ":" << number << ": empty 'op'");
    const double ms = r.num("ms");
    V4RT_REQUIRE(ms >= 0, path << ":" << number << ": negative 'ms'");
    if (p.step_ms == 0 && col.count("step_ms")) p.step_ms = r.num("step_ms");
    if (op.rfind("total", 0) == 0) continue;  // a sum row ("total (op time)"): not an op
    if (op == "step") {
      if (p.step_ms > 0 && col.count("step_ms")) {
        V4RT_REQUIRE(std::fabs(p.step_ms - ms) <= 1e-6 * std::max(1.0, ms),
                     path << ":" << number << ": 'step' row ms " << ms << " != step_ms " << p.step_ms);
        continue;
      }
      V4RT_REQUIRE(p.step_ms == 0, path << ":" << number << ": a second 'step' row for " << p.key());
      p.step_ms = ms;
    } else {
      p.ops.push_back({op, r.num("calls"), ms, r.num("bytes"), r.num("flops")});
    }
  }
  std::vector<MeasuredPoint> measured;
  for (MeasuredPoint& p : points)
    if (p.step_ms > 0 || p.prefill_s > 0) measured.push_back(std::move(p));
  return measured;
}

PointFilter parse_point_filter(const std::string& text) {
  static const std::set<std::string> kKeys = {"model", "layers", "batch", "context", "gpu", "gpus", "tp",
                                              "sp", "ep", "dp", "kv_format", "batching"};
  PointFilter f;
  std::stringstream terms(text);
  std::string term;
  while (std::getline(terms, term, ',')) {
    if (term.empty()) continue;
    const size_t eq = term.find('=');
    V4RT_REQUIRE(eq != std::string::npos && eq > 0 && eq + 1 < term.size(),
                 "point filter: expected key=value, got '" << term << "'");
    const std::string key = term.substr(0, eq);
    V4RT_REQUIRE(kKeys.count(key), "point filter: unknown key '" << key << "' (known: model, layers, batch, "
                                   << "context, gpu, gpus, tp, sp, ep, dp, kv_format, batching)");
    std::vector<std::string> values;
    std::stringstream alts(term.substr(eq + 1));
    std::string v;
    while (std::getline(alts, v, '|')) values.push_back(v);
    f.terms.push_back({key, values});
  }
  return f;
}

bool PointFilter::matches(const MeasuredPoint& p) const {
  if (terms.empty()) return false;
  for (const auto& [key, values] : terms) {
    std::string have;
    if (key == "model") have = p.model;
    else if (key == "layers") have = std::to_string(p.layers);
    else if (key == "batch") have = std::to_string(p.batch);
    else if (key == "context") have = std::to_string(p.context);
    else if (key == "gpu") have = p.gpu;
    else if (key == "gpus") have = std::to_string(p.nodes * p.gpus_per_node);
    else if (key == "tp") have = std::to_string(p.layout.tp);
    else if (key == "sp") have = std::to_string(p.layout.sp);
    else if (key == "ep") have = std::to_string(p.layout.ep);
    else if (key == "dp") have = std::to_string(p.layout.dp);
    else if (key == "kv_format") have = kv_format_name(p.kv_format);
    else if (key == "batching") have = batching_name(p.batching);
    if (std::find(values.begin(), values.end(), have) == values.end()) return false;
  }
  return true;
}

StepTime predict_point(const MeasuredPoint& p, const ModelResolver& model_of, const GpuResolver& gpu_of,
                       const Calibration& calib) {
  const model::ModelConfig c = with_layers(model_of(p.model), p.layers);
  const GpuSpec gpu = gpu_of(p.gpu);
  const Cluster cluster{p.nodes, p.gpus_per_node, gpu.fp8_block_tiles};
  const std::vector<std::string> why = layout_problems(c, p.layout, cluster);
  V4RT_REQUIRE(why.empty(), p.file << ":" << p.line << ": measured point " << p.key()
                                   << " has an invalid layout: " << why[0]);
  return decode_step_time(c, gpu, calib, cluster, p.layout, p.context, p.batch, p.kv_format,
                          p.batching, p.head_on_leader);
}

Calibration fit_calibration(const std::vector<MeasuredPoint>& points, const ModelResolver& model_of,
                            const GpuResolver& gpu_of, const Calibration& base, std::ostream& log) {
  V4RT_REQUIRE(!points.empty(), "fit: no measured point matches the fit filter");
  Calibration out = base;
  out.families = {};
  out.fitted_on.clear();
  std::array<std::vector<FitRow>, kNumOpFamilies> rows;
  std::vector<FitRow> totals;
  bool any_ops = false;
  for (const MeasuredPoint& p : points) any_ops = any_ops || !p.ops.empty();
  for (const MeasuredPoint& p : points) {
    if (p.step_ms <= 0 || (any_ops && p.ops.empty())) {
      log << "  not used for the fit (" << (p.step_ms <= 0 ? "no step time" : "no per-op breakdown")
          << "): " << p.key() << "\n";
      continue;
    }
    const model::ModelConfig c = with_layers(model_of(p.model), p.layers);
    const GpuSpec gpu = gpu_of(p.gpu);
    const PointModel m = point_model(p, model_of, gpu_of, base);
    out.fitted_on.push_back(p.key());
    if (any_ops) {
      std::array<bool, kNumOpFamilies> present{};
      const auto ms = measured_families(p, c, &present);
      for (int i = 0; i < kNumOpFamilies; ++i) {
        if (!present[size_t(i)]) continue;
        const OpCost& op = m.ops[size_t(i)];
        double meas = ms[size_t(i)] * 1e-3;
        if (i == int(OpFamily::kOther)) meas = std::max(0.0, meas - m.comm_s);  // comm is costed apart
        rows[size_t(i)].push_back({op.launches, op.roofline_s(gpu), meas});
      }
    } else {
      double launches = 0, roof = 0;
      for (const OpCost& op : m.ops) launches += op.launches, roof += op.roofline_s(gpu);
      totals.push_back({launches, roof, p.step_ms * 1e-3 - m.comm_s});
    }
  }
  V4RT_REQUIRE(!out.fitted_on.empty(), "fit: none of the matching points has a step time");
  log << "fit on " << out.fitted_on.size() << " point(s), "
      << (any_ops ? "per op family" : "one efficiency and launch latency for every family (no per-op breakdown)")
      << ":\n";
  for (const std::string& k : out.fitted_on) log << "  fit point: " << k << "\n";
  std::string how;
  if (!any_ops) {
    const FamilyCalibration f = fit_rows(totals, 0, &how);
    for (FamilyCalibration& fam : out.families) fam = f;
    log << fmt("  all families: efficiency %.4f, launch %.2f us (%s)\n", f.efficiency, f.launch_s * 1e6, how.c_str());
    return out;
  }
  // `other` first: its launch latency is the fallback of families measured at one shape only.
  const int order[kNumOpFamilies] = {int(OpFamily::kOther), 0, 1, 2, 3, 4, 5, 6};
  double fallback = 0;
  for (int i : order) {
    if (rows[size_t(i)].empty()) continue;
    FamilyCalibration f = fit_rows(rows[size_t(i)], fallback, &how);
    out.families[size_t(i)] = f;
    if (i == int(OpFamily::kOther)) fallback = f.launch_s;
    double worst = 0;
    for (const FitRow& r : rows[size_t(i)]) {
      const double pred = r.launches * f.launch_s + r.roofline_s / f.efficiency;
      if (r.measured_s > 0) worst = std::max(worst, std::fabs(pred - r.measured_s) / r.measured_s);
    }
    log << fmt("  %-9s efficiency %8.5f  launch %7.2f us  (%zu point(s), %s; worst fit residual %.1f%%)\n",
               op_family_name(OpFamily(i)), f.efficiency, f.launch_s * 1e6, rows[size_t(i)].size(), how.c_str(),
               worst * 100);
  }
  return out;
}

// ------------------------------------------------------------------------------------------------
// Predicted vs measured

ValidationSummary print_validation(std::ostream& os, const std::vector<MeasuredPoint>& points,
                                   const ModelResolver& model_of, const GpuResolver& gpu_of,
                                   const Calibration& calib, double tolerance, bool by_family) {
  ValidationSummary s;
  if (points.empty()) {
    os << "no measured points (rows with source=measured and a step_ms or prefill_s value)\n";
    return s;
  }
  const std::set<std::string> fitted(calib.fitted_on.begin(), calib.fitted_on.end());
  os << fmt("  role   step ms pred  step ms meas    error  result  point (model Llayers bbatch ctx gpu "
            "nodes x gpus layout kv batching), file:line\n");
  double sum_abs = 0;
  for (const MeasuredPoint& p : points) {
    const StepTime t = predict_point(p, model_of, gpu_of, calib);
    const double pred = t.total() * 1e3;
    const bool fit = fitted.count(p.key()) > 0;
    std::string err = "       -", result = "-";
    if (p.step_ms > 0) {
      const double e = (pred - p.step_ms) / p.step_ms;
      err = fmt("%+7.1f%%", e * 100);
      if (fit) {
        result = "(fit)";
        ++s.calibration;
      } else {
        const bool pass = std::fabs(e) <= tolerance;
        result = pass ? "PASS" : "FAIL";
        ++s.validated;
        ++(pass ? s.passed : s.failed);
        sum_abs += std::fabs(e);
      }
    }
    os << fmt("  %-5s %13.3f %13s %s  %-6s  %s, %s:%d\n", fit ? "fit" : "check", pred,
              p.step_ms > 0 ? fmt("%.3f", p.step_ms).c_str() : "-", err.c_str(), result.c_str(),
              p.key().c_str(), p.file.c_str(), p.line);
    if (p.prefill_s > 0) {
      const model::ModelConfig c = with_layers(model_of(p.model), p.layers);
      const GpuSpec gpu = gpu_of(p.gpu);
      const double pre = prefill_time(c, gpu, calib, {p.nodes, p.gpus_per_node, gpu.fp8_block_tiles}, p.layout,
                                      p.context, p.kv_format).total();
      os << fmt("        prefill (roofline model, not fitted): pred %.3f s, meas %.3f s, error %+.1f%%\n", pre, p.prefill_s,
                (pre - p.prefill_s) / p.prefill_s * 100);
    }
    if (by_family && !p.ops.empty() && t.kernels > 0) {
      const model::ModelConfig c = with_layers(model_of(p.model), p.layers);
      std::array<bool, kNumOpFamilies> present{};
      const auto ms = measured_families(p, c, &present);
      for (int i = 0; i < kNumOpFamilies; ++i)
        os << fmt("        %-9s pred %8.3f ms  meas %8s ms\n", op_family_name(OpFamily(i)), t.family_s[size_t(i)] * 1e3,
                  present[size_t(i)] ? fmt("%.3f", ms[size_t(i)]).c_str() : "-");
    }
  }
  if (s.validated)
    os << fmt("validation: %d point(s), %d PASS, %d FAIL at +-%.0f%%; mean |error| over %d point(s): %.1f%%\n",
              s.validated, s.passed, s.failed, tolerance * 100, s.validated, sum_abs / s.validated * 100);
  else
    os << "validation: no point left to validate\n";
  if (s.calibration)
    os << fmt("calibration: %d point(s) used to fit the constants, not counted above\n", s.calibration);
  return s;
}

}  // namespace v4rt::launch::plan
