// ExecuTorch through its C++ runtime (libexecutorch + XNNPACK backend + ETDump), as shipped in the executorch
// wheel: load the .pte with an ETDumpGen event tracer, run, and write the ETDump next to the report.
#include "executorch_runner.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

#if defined(LWR_WITH_EXECUTORCH)
#include <executorch/devtools/etdump/etdump_flatcc.h>
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

// The wheel ships libexecutorch_threadpool.so but not threadpool.h: declare the two members used here (same
// mangled names as the library's exports). Without the reset, XNNPACK used every core while the report said 1.
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool
#endif

namespace lwrunner {

#if defined(LWR_WITH_EXECUTORCH)

bool ExecuTorchAvailable() { return true; }

bool ProfileExecuTorch(const ExecuTorchArgs& args, Report* report, std::string* error) {
  using executorch::extension::Module;
  using executorch::runtime::Error;
  using executorch::runtime::EValue;

  auto* pool = executorch::extension::threadpool::get_threadpool();
  if (pool == nullptr || !pool->_unsafe_reset_threadpool(static_cast<uint32_t>(args.threads)))
    return *error = "cannot set the ExecuTorch threadpool to " + std::to_string(args.threads) + " threads", false;
  auto tracer = std::make_unique<executorch::etdump::ETDumpGen>();
  executorch::etdump::ETDumpGen* etdump = tracer.get();
  Module module(args.model_path, Module::LoadMode::File, std::move(tracer));
  if (module.load_method("forward") != Error::Ok) {
    *error = "cannot load method 'forward' from " + args.model_path + " (not a .pte, or a backend is missing)";
    return false;
  }
  auto meta = module.method_meta("forward");
  if (!meta.ok()) return *error = "cannot read the method's metadata", false;

  std::vector<executorch::extension::TensorPtr> tensors;
  std::vector<EValue> inputs;
  for (size_t i = 0; i < meta->num_inputs(); ++i) {
    auto tm = meta->input_tensor_meta(i);
    if (!tm.ok()) return *error = "input " + std::to_string(i) + " is not a tensor", false;
    std::vector<executorch::aten::SizesType> sizes(tm->sizes().begin(), tm->sizes().end());
    tensors.push_back(executorch::extension::zeros(sizes, tm->scalar_type()));
    inputs.emplace_back(tensors.back());
  }
  for (int i = 0; i < args.warmup; ++i)
    if (!module.execute("forward", inputs).ok()) return *error = "warm-up run failed", false;
  std::vector<double> totals;
  for (int r = 0; r < args.runs; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    const bool ok = module.execute("forward", inputs).ok();
    const auto t1 = std::chrono::steady_clock::now();
    if (!ok) return *error = "run " + std::to_string(r) + " failed", false;
    totals.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  executorch::etdump::ETDumpResult dump = etdump->get_etdump_data();
  if (!dump.buf || dump.size == 0) return *error = "the ETDump is empty", false;
  std::string text(static_cast<const char*>(dump.buf), dump.size);
  free(dump.buf);
  if (!WriteFileAtomic(args.etdump_path, text, error)) return false;

  report->runtime = "executorch";
  report->delegate = "xnnpack";
  report->threads = static_cast<int>(pool->get_thread_count());
  report->warmup = args.warmup;
  report->runs = args.runs;
  report->total_samples_ms = totals;
  report->mapping = "pending: the host fills layers from this run's ETDump and the program's ETRecord";
  report->notes.push_back("total_ms is wall time of Module::execute with the ETDump event tracer attached");
  report->notes.push_back("etdump: " + args.etdump_path);
  return true;
}

#else

bool ExecuTorchAvailable() { return false; }

bool ProfileExecuTorch(const ExecuTorchArgs&, Report*, std::string* error) {
  *error = "this runner was built without ExecuTorch (configure with -Dexecutorch_DIR=<wheel>/share/cmake)";
  return false;
}

#endif

}  // namespace lwrunner
