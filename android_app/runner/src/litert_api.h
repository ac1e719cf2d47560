// The slice of LiteRT's C API the runner uses, resolved with dlsym from libLiteRt.so at run time.
//
// The ai-edge-litert wheel ships libLiteRt.so but no headers, so the prototypes are declared here from
// LiteRT's public litert/c/*.h (Apache-2.0) as of ai-edge-litert 2.3.0. Handles are opaque; the only
// struct the runner touches (LiteRtRankedTensorType) is passed through as bytes it never interprets.
#pragma once

#include <dlfcn.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace lwrunner {

using LrtStatus = int;  // kLiteRtStatusOk == 0
using Handle = void*;
using ParamIndex = size_t;

constexpr int kHwAcceleratorCpu = 1;

// Room for LiteRtRankedTensorType (element type + LiteRtLayout, ~76 bytes in 2.3.0) with margin.
struct alignas(16) OpaqueTensorType {
  unsigned char bytes[512];
};

// ProfiledEventData as libLiteRt.so 2.3.0 lays it out on 64-bit targets (tflite MemoryUsage is 3 x 8 bytes;
// the public C header's 2-field copy is 8 bytes short per MemoryUsage). The runner validates every event.
struct ProfiledEvent {
  const char* tag;
  int32_t event_type;  // tflite::Profiler::EventType: 2 = interpreter op (metadata1 = node index),
                       // 8 = delegate-profiled op (metadata1 = the delegate's own kernel index)
  uint64_t start_us;
  uint64_t elapsed_us;
  int64_t begin_mem[3];
  int64_t end_mem[3];
  uint64_t metadata1;
  uint64_t metadata2;
  int32_t source;
};
static_assert(sizeof(void*) != 8 || sizeof(ProfiledEvent) == 104, "ProfiledEventData layout changed");

constexpr int kEventOperatorInvoke = 2;
constexpr int kEventDelegateProfiledOperatorInvoke = 8;

struct LiteRtApi {
  void* lib = nullptr;
#define LWR_FN(ret, name, ...) ret (*name)(__VA_ARGS__) = nullptr;
#include "litert_api_functions.inc"
#undef LWR_FN

  // Loads `path`; on failure returns false with `error` naming the missing library or symbol.
  bool Load(const std::string& path, std::string* error) {
    lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      *error = std::string("cannot load LiteRT runtime: ") + dlerror();
      return false;
    }
#define LWR_FN(ret, name, ...)                                                 \
  name = reinterpret_cast<ret (*)(__VA_ARGS__)>(dlsym(lib, #name));            \
  if (!name) {                                                                 \
    *error = std::string(#name " not exported by ") + path + " (LiteRT too old?)"; \
    return false;                                                              \
  }
#include "litert_api_functions.inc"
#undef LWR_FN
    return true;
  }
};

}  // namespace lwrunner
