#pragma once

#include <string>

#include "report.h"

namespace lwrunner {

struct LiteRtArgs {
  std::string model_path;
  std::string lib_path;  // libLiteRt.so (from the ai-edge-litert wheel, or pushed next to the runner)
  int threads = 1;
  int warmup = 5;
  int runs = 30;
};

// Fills report->layers / total / runtime fields; device and artifact fields are the caller's.
bool ProfileLiteRt(const LiteRtArgs& args, Report* report, std::string* error);

}  // namespace lwrunner
