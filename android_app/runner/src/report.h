// The report the runner writes: the same JSON as toolkit/schemas/report.schema.json describes,
// written here so the phone never needs Python. Helpers: percentiles, JSON text, sha256, device info.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace lwrunner {

constexpr const char* kSchemaVersion = "1.0";

struct Percentiles {
  double p10 = 0, p50 = 0, p90 = 0;
};
// Linear-interpolated percentiles (numpy's default), so Python and C++ agree on the same samples.
Percentiles ComputePercentiles(std::vector<double> samples);

struct Layer {
  std::string name;
  std::string op_type;
  std::optional<std::string> module;  // PyTorch module path, or null when nothing names one
  std::vector<double> samples_ms;     // one value per measured run
  std::string compute_unit;
  std::vector<std::string> kernels;   // what the runtime actually executed for this layer
};

struct DeviceInfo {
  std::string model, manufacturer, os, abi, serial;
};
DeviceInfo ProbeDevice();

struct Report {
  DeviceInfo device;
  std::string runtime, runtime_version;
  std::string artifact_path, artifact_sha256;
  int threads = 1;
  std::string delegate;
  int warmup = 0, runs = 0;
  std::vector<double> total_samples_ms;
  std::vector<Layer> layers;
  std::string mapping;  // how layers were tied back to PyTorch modules
  std::vector<std::string> notes;
};

std::string ToJson(const Report& report);
// Writes `path` via a temporary sibling and rename, so a crash never leaves half a report.
bool WriteFileAtomic(const std::string& path, const std::string& text, std::string* error);

std::string Sha256File(const std::string& path, std::string* error);
std::string JsonEscape(const std::string& s);

}  // namespace lwrunner
