#pragma once

#include <string>

#include "report.h"

namespace lwrunner {

struct ExecuTorchArgs {
  std::string model_path;
  std::string etdump_path;  // where the ETDump (per-kernel events of every run) is written
  int warmup = 5;
  int runs = 30;
  int threads = 1;          // XNNPACK's threadpool size (its default is every core)
};

// True when this binary was built against the ExecuTorch runtime (see CMakeLists.txt).
bool ExecuTorchAvailable();

// Fills the run fields and total_ms; the per-layer table needs the ETRecord, which only the host has, so
// the host reads the ETDump this writes and fills report.layers (lwdeploy.profiling.executorch_host).
bool ProfileExecuTorch(const ExecuTorchArgs& args, Report* report, std::string* error);

}  // namespace lwrunner
