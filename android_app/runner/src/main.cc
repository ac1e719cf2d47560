// lwdeploy-runner: profiles one model on the machine it runs on (host or phone) and writes the report JSON.
//
//   lwdeploy-runner --runtime litert --model m.tflite --lib libLiteRt.so --out report.json
//                   [--runs 30] [--warmup 5] [--threads 1] [--runtime-version 2.3.0] [--artifact-name m.tflite]
//   lwdeploy-runner --runtime executorch --model m.pte --etdump run.etdp --out report.json [--runs/--warmup ...]
//   lwdeploy-runner --module-of TENSOR_NAME      (prints the PyTorch module a tensor name maps to)
//   lwdeploy-runner --capabilities               (prints the runtimes built in)
//
// Exit 0: report written. Exit 1: the runtime failed (message on stderr, no report). Exit 2: bad arguments.
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include "executorch_runner.h"
#include "litert_runner.h"
#include "module_path.h"
#include "report.h"

namespace {

int Usage(const std::string& why) {
  fprintf(stderr, "lwdeploy-runner: %s\n", why.c_str());
  fprintf(stderr,
          "usage: lwdeploy-runner --runtime litert --model FILE --lib libLiteRt.so --out REPORT.json "
          "[--runs N] [--warmup N] [--threads N] [--runtime-version V] [--artifact-name NAME]\n"
          "       lwdeploy-runner --runtime executorch --model FILE.pte --etdump RUN.etdp --out REPORT.json [...]\n");
  return 2;
}

bool ParseInt(const std::string& s, int lo, int* out) {
  char* end = nullptr;
  const long v = std::strtol(s.c_str(), &end, 10);
  if (!end || *end != '\0' || s.empty() || v < lo || v > 1000000) return false;
  *out = static_cast<int>(v);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> opt;
  if (argc == 2 && std::string(argv[1]) == "--capabilities") {
    printf("litert%s\n", lwrunner::ExecuTorchAvailable() ? " executorch" : "");
    return 0;
  }
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0 || i + 1 >= argc) return Usage("unexpected argument '" + a + "'");
    opt[a.substr(2)] = argv[++i];
  }
  if (opt.count("module-of")) {
    auto m = lwrunner::ModuleFromTensorName(opt["module-of"]);
    printf("%s\n", m ? m->c_str() : "null");
    return 0;
  }
  for (const char* required : {"runtime", "model", "out"})
    if (!opt.count(required)) return Usage(std::string("--") + required + " is required");
  const std::string runtime = opt["runtime"];
  if (runtime != "litert" && !(runtime == "executorch" && lwrunner::ExecuTorchAvailable()))
    return Usage("runtime '" + runtime + "' is not built into this runner (see --capabilities)");
  int runs = 30, warmup = 5, threads = 1;
  if (opt.count("runs") && !ParseInt(opt["runs"], 1, &runs)) return Usage("--runs must be a positive integer");
  if (opt.count("warmup") && !ParseInt(opt["warmup"], 0, &warmup)) return Usage("--warmup must be >= 0");
  if (opt.count("threads") && !ParseInt(opt["threads"], 1, &threads)) return Usage("--threads must be >= 1");
  if (runtime == "litert" && !opt.count("lib")) return Usage("--lib (path to libLiteRt.so) is required for --runtime litert");
  if (runtime == "executorch" && !opt.count("etdump")) return Usage("--etdump (where to write the ETDump) is required");

  lwrunner::Report report;
  std::string error;
  report.artifact_path = opt.count("artifact-name") ? opt["artifact-name"] : opt["model"];
  report.artifact_sha256 = lwrunner::Sha256File(opt["model"], &error);
  if (!error.empty()) {
    fprintf(stderr, "lwdeploy-runner: %s\n", error.c_str());
    return 1;
  }
  report.device = lwrunner::ProbeDevice();
  report.runtime_version = opt.count("runtime-version") ? opt["runtime-version"] : "unknown";
  bool ok;
  if (runtime == "litert") {
    lwrunner::LiteRtArgs args{opt["model"], opt["lib"], threads, warmup, runs};
    ok = lwrunner::ProfileLiteRt(args, &report, &error);
  } else {
    lwrunner::ExecuTorchArgs args{opt["model"], opt["etdump"], warmup, runs, threads};
    ok = lwrunner::ProfileExecuTorch(args, &report, &error);
  }
  if (!ok) {
    fprintf(stderr, "lwdeploy-runner: %s\n", error.c_str());
    return 1;
  }
  if (!lwrunner::WriteFileAtomic(opt["out"], lwrunner::ToJson(report), &error)) {
    fprintf(stderr, "lwdeploy-runner: %s\n", error.c_str());
    return 1;
  }
  fprintf(stderr, "lwdeploy-runner: wrote %s (%zu layers)\n", opt["out"].c_str(), report.layers.size());
  return 0;
}
