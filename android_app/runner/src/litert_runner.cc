// LiteRT per-layer profiling through the C API: compile with "enable_profiling = true", run, and read the
// runtime's own profile summary after every measured run, so each layer gets a distribution, not one mean.
#include "litert_runner.h"

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <sstream>

#include "litert_api.h"
#include "module_path.h"
#include "tflite_op_names.inc"

namespace lwrunner {
namespace {

struct TflOp {
  std::string type;
  std::string output_name;
  std::optional<std::string> module;
};

struct Row {  // one line of the profile summary's "Run Order" table
  std::string node_type;
  double ms = 0;
  std::string name;
};

bool IsNumeric(const std::string& t) {
  if (t.empty()) return false;
  char* end = nullptr;
  std::string s = t.back() == '%' ? t.substr(0, t.size() - 1) : t;
  std::strtod(s.c_str(), &end);
  return end && *end == '\0' && !s.empty();
}

// The summary is TFLite's ProfileSummarizer table: "<node type> start first avg% ... times_called  <name>".
// Node types contain spaces ("Delegate/Convolution (NHWC, QC8) IGEMM"), so locate the 7 numeric columns.
std::vector<Row> ParseRunOrder(const std::string& summary) {
  std::vector<Row> rows;
  std::istringstream in(summary);
  std::string line;
  bool in_table = false;
  while (std::getline(in, line)) {
    if (line.find("Run Order") != std::string::npos) {
      in_table = true;
      continue;
    }
    if (!in_table) continue;
    if (line.find("[node type]") != std::string::npos) continue;
    if (line.find_first_not_of(" \t\r") == std::string::npos || line.find("=====") != std::string::npos) break;
    std::vector<std::string> tok;
    std::istringstream ls(line);
    for (std::string t; ls >> t;) tok.push_back(t);
    for (size_t i = 1; i + 7 <= tok.size(); ++i) {
      bool all = true;
      for (size_t k = i; k < i + 7; ++k) all = all && IsNumeric(tok[k]);
      if (!all) continue;
      Row r;
      for (size_t k = 0; k < i; ++k) r.node_type += (k ? " " : "") + tok[k];
      r.ms = std::strtod(tok[i + 2].c_str(), nullptr);
      for (size_t k = i + 7; k < tok.size(); ++k) r.name += (k > i + 7 ? " " : "") + tok[k];
      rows.push_back(r);
      break;
    }
  }
  return rows;
}

std::string Status(const char* what, LrtStatus s) { return std::string(what) + " failed (LiteRtStatus " + std::to_string(s) + ")"; }

std::vector<TflOp> ReadOps(LiteRtApi& api, Handle model, std::string* error) {
  std::vector<TflOp> ops;
  ParamIndex sg_index = 0, n_ops = 0;
  Handle subgraph = nullptr;
  if (api.LiteRtGetMainModelSubgraphIndex(model, &sg_index) != 0 ||
      api.LiteRtGetModelSubgraph(model, sg_index, &subgraph) != 0 || api.LiteRtGetNumSubgraphOps(subgraph, &n_ops) != 0) {
    *error = "cannot read the model's main subgraph";
    return ops;
  }
  const int n_names = static_cast<int>(sizeof(kTflOpNames) / sizeof(kTflOpNames[0]));
  auto tensor_name = [&](Handle t) {
    const char* name = nullptr;
    return (t && api.LiteRtGetTensorName(t, &name) == 0 && name) ? std::string(name) : std::string();
  };
  for (ParamIndex i = 0; i < n_ops; ++i) {
    Handle op = nullptr;
    int code = -1;
    api.LiteRtGetSubgraphOp(subgraph, i, &op);
    api.LiteRtGetOpCode(op, &code);
    TflOp o;
    o.type = (code >= 0 && code < n_names) ? kTflOpNames[code] : "OP_" + std::to_string(code);
    ParamIndex n_out = 0, n_in = 0;
    api.LiteRtGetNumOpOutputs(op, &n_out);
    for (ParamIndex k = 0; k < n_out && !o.module; ++k) {
      Handle t = nullptr;
      api.LiteRtGetOpOutput(op, k, &t);
      const std::string name = tensor_name(t);
      if (k == 0) o.output_name = name;
      o.module = ModuleFromTensorName(name);
    }
    // The graph's last op writes the renamed signature output ("serving_default_output_0"): its weights
    // (inputs 1.., named after the module that owns them) still carry the stack; the activation (input 0)
    // names the op before it, so it is the last resort.
    api.LiteRtGetNumOpInputs(op, &n_in);
    for (ParamIndex step = 0; step < n_in && !o.module; ++step) {
      const ParamIndex k = (step + 1) % n_in;
      Handle t = nullptr;
      api.LiteRtGetOpInput(op, k, &t);
      o.module = ModuleFromTensorName(tensor_name(t));
    }
    ops.push_back(o);
  }
  return ops;
}

void AddTomlOptions(LiteRtApi& api, Handle options, const char* identifier, const std::string& toml, std::string* error) {
  char* payload = strdup(toml.c_str());
  Handle opaque = nullptr;
  LrtStatus s = api.LiteRtCreateOpaqueOptions(identifier, payload, free, &opaque);
  if (s != 0) {
    free(payload);
    *error = Status("LiteRtCreateOpaqueOptions", s);
    return;
  }
  s = api.LiteRtAddOpaqueOptions(options, opaque);
  if (s != 0) *error = Status("LiteRtAddOpaqueOptions", s);
}

}  // namespace

bool ProfileLiteRt(const LiteRtArgs& args, Report* report, std::string* error) {
  LiteRtApi api;
  if (!api.Load(args.lib_path, error)) return false;

  Handle env = nullptr, model = nullptr, options = nullptr, compiled = nullptr, profiler = nullptr;
  LrtStatus s;
  if ((s = api.LiteRtCreateEnvironment(0, nullptr, &env)) != 0) return *error = Status("LiteRtCreateEnvironment", s), false;
  if ((s = api.LiteRtCreateModelFromFile(env, args.model_path.c_str(), &model)) != 0)
    return *error = Status(("loading " + args.model_path).c_str(), s), false;
  const std::vector<TflOp> ops = ReadOps(api, model, error);
  if (!error->empty()) return false;

  api.LiteRtCreateOptions(&options);
  api.LiteRtSetOptionsHardwareAccelerators(options, kHwAcceleratorCpu);
  AddTomlOptions(api, options, "runtime_options_string", "enable_profiling = true\n", error);
  if (args.threads > 0) AddTomlOptions(api, options, "xnnpack", "num_threads = " + std::to_string(args.threads) + "\n", error);
  if (!error->empty()) return false;
  if ((s = api.LiteRtCreateCompiledModel(env, model, options, &compiled)) != 0)
    return *error = Status("LiteRtCreateCompiledModel", s), false;
  if ((s = api.LiteRtCompiledModelGetProfiler(compiled, &profiler)) != 0 || !profiler)
    return *error = Status("LiteRtCompiledModelGetProfiler", s), false;

  Handle signature = nullptr;
  ParamIndex n_in = 0, n_out = 0;
  api.LiteRtGetModelSignature(model, 0, &signature);
  api.LiteRtGetNumSignatureInputs(signature, &n_in);
  api.LiteRtGetNumSignatureOutputs(signature, &n_out);
  std::vector<Handle> inputs(n_in), outputs(n_out);
  for (int dir = 0; dir < 2; ++dir) {
    const ParamIndex n = dir == 0 ? n_in : n_out;
    for (ParamIndex i = 0; i < n; ++i) {
      Handle tensor = nullptr, req = nullptr;
      OpaqueTensorType type{};
      if (dir == 0) {
        api.LiteRtGetSignatureInputTensorByIndex(signature, i, &tensor);
        api.LiteRtGetCompiledModelInputBufferRequirements(compiled, 0, i, &req);
      } else {
        api.LiteRtGetSignatureOutputTensorByIndex(signature, i, &tensor);
        api.LiteRtGetCompiledModelOutputBufferRequirements(compiled, 0, i, &req);
      }
      api.LiteRtGetRankedTensorType(tensor, &type);
      Handle* slot = dir == 0 ? &inputs[i] : &outputs[i];
      if ((s = api.LiteRtCreateManagedTensorBufferFromRequirements(env, &type, req, slot)) != 0)
        return *error = Status("LiteRtCreateManagedTensorBufferFromRequirements", s), false;
    }
  }

  auto run = [&]() { return api.LiteRtRunCompiledModel(compiled, 0, n_in, inputs.data(), n_out, outputs.data()); };
  for (int i = 0; i < args.warmup; ++i)
    if ((s = run()) != 0) return *error = Status("LiteRtRunCompiledModel (warm-up)", s), false;

  // One key per executed kernel: "d<i>" = delegate kernel i (an XNNPACK operator), "n<j>" = interpreter node j.
  std::vector<std::string> keys;              // in first-run execution order
  std::map<std::string, std::string> tag_of;  // key -> the runtime's name for it
  std::map<std::string, std::vector<double>> kernel_ms;
  std::vector<double> totals;
  for (int r = 0; r < args.runs; ++r) {
    api.LiteRtResetProfiler(profiler);
    api.LiteRtStartProfiler(profiler);
    const auto t0 = std::chrono::steady_clock::now();
    s = run();
    const auto t1 = std::chrono::steady_clock::now();
    api.LiteRtStopProfiler(profiler);
    if (s != 0) return *error = Status("LiteRtRunCompiledModel", s), false;
    totals.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    int n = 0;
    if ((s = api.LiteRtGetNumProfilerEvents(profiler, &n)) != 0 || n <= 0)
      return *error = "the LiteRT profiler recorded no events (profiling not enabled?)", false;
    std::vector<ProfiledEvent> events(n);
    if ((s = api.LiteRtGetProfilerEvents(profiler, n, events.data())) != 0)
      return *error = Status("LiteRtGetProfilerEvents", s), false;
    for (auto& kv : kernel_ms) kv.second.push_back(0.0);
    for (const ProfiledEvent& e : events) {
      const bool valid_type = e.event_type > 0 && e.event_type <= 256 && (e.event_type & (e.event_type - 1)) == 0;
      if (!valid_type || e.source < 0 || e.source > 2 || !e.tag)
        return *error = "LiteRT profiler events are not laid out as this runner expects (runtime version?)", false;
      if (e.event_type != kEventOperatorInvoke && e.event_type != kEventDelegateProfiledOperatorInvoke) continue;
      const std::string key = (e.event_type == kEventOperatorInvoke ? "n" : "d") + std::to_string(e.metadata1);
      auto it = kernel_ms.find(key);
      if (it == kernel_ms.end()) {
        keys.push_back(key);
        tag_of[key] = e.tag;
        it = kernel_ms.emplace(key, std::vector<double>(r + 1, 0.0)).first;
      }
      it->second.back() += e.elapsed_us / 1000.0;
    }
  }
  // Cross-check against the runtime's own summary (which accumulates over every run since compilation).
  const char* summary = nullptr;
  if (api.LiteRtGetProfileSummary(profiler, compiled, &summary) == 0 && summary) {
    const std::vector<Row> rows = ParseRunOrder(summary);
    report->notes.push_back("LiteRtGetProfileSummary lists " + std::to_string(rows.size()) +
                            " kernels; the per-run events gave " + std::to_string(keys.size()));
  }
  free(const_cast<char*>(summary));

  std::vector<std::string> op_types;
  for (const TflOp& o : ops) op_types.push_back(o.type);
  std::vector<std::string> delegate_kernels;
  std::vector<size_t> delegate_index;
  std::vector<int> owner(keys.size(), -1);
  for (size_t k = 0; k < keys.size(); ++k) {
    if (keys[k][0] == 'd') {
      delegate_kernels.push_back(tag_of[keys[k]]);
      delegate_index.push_back(k);
    } else {
      const int node = std::atoi(keys[k].c_str() + 1);
      owner[k] = node < static_cast<int>(ops.size()) ? node : -1;
    }
  }
  // Delegate kernels align to TFLite ops by kind and execution order; interpreter ops name their node.
  const std::vector<int> aligned = AlignKernels(delegate_kernels, op_types);
  for (size_t d = 0; d < delegate_index.size(); ++d) owner[delegate_index[d]] = aligned[d];

  std::map<int, size_t> layer_of_op;
  for (size_t k = 0; k < keys.size(); ++k) {
    const int j = owner[k];
    const bool delegated = keys[k][0] == 'd';
    auto it = layer_of_op.find(j);
    if (it == layer_of_op.end()) {
      Layer l;
      if (j >= 0) {
        l.name = "#" + std::to_string(j) + " " + ops[j].type;
        l.op_type = ops[j].type;
        l.module = ops[j].module;
      } else {
        l.name = tag_of[keys[k]];
        l.op_type = l.name;
      }
      l.compute_unit = delegated ? "CPU (XNNPACK)" : "CPU (TFLite kernels)";
      l.samples_ms.assign(args.runs, 0.0);
      report->layers.push_back(l);
      it = layer_of_op.emplace(j, report->layers.size() - 1).first;
    }
    Layer& l = report->layers[it->second];
    l.kernels.push_back(tag_of[keys[k]]);
    const std::vector<double>& ms = kernel_ms[keys[k]];
    for (int r = 0; r < args.runs && r < static_cast<int>(ms.size()); ++r) l.samples_ms[r] += ms[r];
  }

  report->runtime = "litert";
  report->delegate = "xnnpack";
  report->threads = args.threads;
  report->warmup = args.warmup;
  report->runs = args.runs;
  report->total_samples_ms = totals;
  report->mapping =
      "XNNPACK kernels aligned in execution order to TFLite ops; TFLite ops named by the nn_module_stack that "
      "litert-torch writes into tensor names";
  report->notes.push_back("per-op times: LiteRT profiler events of each measured run (1 us resolution)");
  report->notes.push_back("total_ms is wall time of LiteRtRunCompiledModel with profiling enabled");

  for (Handle b : inputs) api.LiteRtDestroyTensorBuffer(b);
  for (Handle b : outputs) api.LiteRtDestroyTensorBuffer(b);
  api.LiteRtDestroyCompiledModel(compiled);
  api.LiteRtDestroyOptions(options);
  api.LiteRtDestroyModel(model);
  api.LiteRtDestroyEnvironment(env);
  return true;
}

}  // namespace lwrunner
