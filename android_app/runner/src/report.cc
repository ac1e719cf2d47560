#include "report.h"

#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#if defined(__ANDROID__)
#include <sys/system_properties.h>
#endif

namespace lwrunner {

Percentiles ComputePercentiles(std::vector<double> v) {
  Percentiles p;
  if (v.empty()) return p;
  std::sort(v.begin(), v.end());
  auto at = [&](double q) {
    const double pos = q * (v.size() - 1);
    const size_t lo = static_cast<size_t>(std::floor(pos));
    const size_t hi = std::min(lo + 1, v.size() - 1);
    return v[lo] + (v[hi] - v[lo]) * (pos - lo);
  };
  p.p10 = at(0.10);
  p.p50 = at(0.50);
  p.p90 = at(0.90);
  return p;
}

std::string JsonEscape(const std::string& s) {
  std::string out;
  out.reserve(s.size() + 2);
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out;
}

namespace {

std::string Q(const std::string& s) { return "\"" + JsonEscape(s) + "\""; }

std::string Num(double x) {
  if (!std::isfinite(x)) return "0";
  char buf[64];
  snprintf(buf, sizeof(buf), "%.6f", x);
  return buf;
}

std::string Pct(const std::vector<double>& samples) {
  const Percentiles p = ComputePercentiles(samples);
  return "{\"p10\": " + Num(p.p10) + ", \"p50\": " + Num(p.p50) + ", \"p90\": " + Num(p.p90) + "}";
}

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.pop_back();
  return s;
}

#if defined(__ANDROID__)
std::string Prop(const char* key) {
  char value[PROP_VALUE_MAX] = {0};
  __system_property_get(key, value);
  return value;
}
#endif

std::string CpuModelName() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    for (const char* key : {"model name", "Hardware"}) {
      if (line.rfind(key, 0) == 0) {
        auto colon = line.find(':');
        if (colon != std::string::npos) return Trim(line.substr(colon + 2));
      }
    }
  }
  return "";
}

}  // namespace

DeviceInfo ProbeDevice() {
  DeviceInfo d;
#if defined(__aarch64__)
  d.abi = "arm64-v8a";
#elif defined(__arm__)
  d.abi = "armeabi-v7a";
#elif defined(__x86_64__)
  d.abi = "x86_64";
#elif defined(__i386__)
  d.abi = "x86";
#else
  d.abi = "unknown";
#endif
#if defined(__ANDROID__)
  d.model = Prop("ro.product.model");
  d.manufacturer = Prop("ro.product.manufacturer");
  d.os = "Android " + Prop("ro.build.version.release") + " (API " + Prop("ro.build.version.sdk") + ")";
  d.serial = Prop("ro.serialno");
#else
  struct utsname u;
  if (uname(&u) == 0) d.os = std::string(u.sysname) + " " + u.release;
  d.model = CpuModelName();
  char host[256] = {0};
  if (gethostname(host, sizeof(host) - 1) == 0) d.serial = host;
  d.manufacturer = "host";
#endif
  if (d.model.empty()) d.model = "unknown";
  return d;
}

std::string ToJson(const Report& r) {
  std::ostringstream o;
  o << "{\n";
  o << "  \"schema_version\": " << Q(kSchemaVersion) << ",\n";
  o << "  \"kind\": \"measured\",\n";
  o << "  \"device\": {\"model\": " << Q(r.device.model) << ", \"manufacturer\": " << Q(r.device.manufacturer)
    << ", \"os\": " << Q(r.device.os) << ", \"abi\": " << Q(r.device.abi) << ", \"serial\": " << Q(r.device.serial)
    << ", \"runtime\": " << Q(r.runtime) << ", \"runtime_version\": " << Q(r.runtime_version) << "},\n";
  o << "  \"artifact\": {\"path\": " << Q(r.artifact_path) << ", \"sha256\": " << Q(r.artifact_sha256) << "},\n";
  o << "  \"threads\": " << r.threads << ",\n";
  o << "  \"delegate\": " << Q(r.delegate) << ",\n";
  o << "  \"warmup_runs\": " << r.warmup << ",\n";
  o << "  \"runs\": " << r.runs << ",\n";
  o << "  \"total_ms\": " << Pct(r.total_samples_ms) << ",\n";
  // Per-run sum of the layer times: compared with total_ms it shows how much of the run the layers explain.
  std::vector<double> sums(r.total_samples_ms.size(), 0.0);
  for (const Layer& l : r.layers)
    for (size_t i = 0; i < sums.size() && i < l.samples_ms.size(); ++i) sums[i] += l.samples_ms[i];
  o << "  \"layers_sum_ms\": " << Pct(sums) << ",\n";
  o << "  \"mapping\": " << Q(r.mapping) << ",\n";
  o << "  \"notes\": [";
  for (size_t i = 0; i < r.notes.size(); ++i) o << (i ? ", " : "") << Q(r.notes[i]);
  o << "],\n";
  o << "  \"producer\": \"lwdeploy-runner (native)\",\n";
  o << "  \"layers\": [";
  for (size_t i = 0; i < r.layers.size(); ++i) {
    const Layer& l = r.layers[i];
    o << (i ? ",\n" : "\n") << "    {\"name\": " << Q(l.name) << ", \"op_type\": " << Q(l.op_type)
      << ", \"module\": " << (l.module ? Q(*l.module) : std::string("null")) << ", \"ms\": " << Pct(l.samples_ms)
      << ", \"compute_unit\": " << Q(l.compute_unit) << ", \"kernels\": [";
    for (size_t k = 0; k < l.kernels.size(); ++k) o << (k ? ", " : "") << Q(l.kernels[k]);
    o << "]}";
  }
  o << (r.layers.empty() ? "]\n" : "\n  ]\n");
  o << "}\n";
  return o.str();
}

bool WriteFileAtomic(const std::string& path, const std::string& text, std::string* error) {
  const std::string tmp = path + ".partial";
  FILE* f = fopen(tmp.c_str(), "wb");
  if (!f) {
    *error = "cannot write " + tmp + ": " + strerror(errno);
    return false;
  }
  const bool ok = fwrite(text.data(), 1, text.size(), f) == text.size() && fflush(f) == 0 && fsync(fileno(f)) == 0;
  fclose(f);
  if (!ok || rename(tmp.c_str(), path.c_str()) != 0) {
    *error = "cannot write " + path + ": " + strerror(errno);
    unlink(tmp.c_str());
    return false;
  }
  return true;
}

// ---- SHA-256 (FIPS 180-4), so the report names exactly the bytes that ran on the device ----
namespace {
constexpr uint32_t kK[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

inline uint32_t Rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

void Block(uint32_t h[8], const unsigned char* p) {
  uint32_t w[64];
  for (int i = 0; i < 16; ++i) w[i] = (p[4 * i] << 24) | (p[4 * i + 1] << 16) | (p[4 * i + 2] << 8) | p[4 * i + 3];
  for (int i = 16; i < 64; ++i) {
    const uint32_t s0 = Rotr(w[i - 15], 7) ^ Rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
    const uint32_t s1 = Rotr(w[i - 2], 17) ^ Rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
  for (int i = 0; i < 64; ++i) {
    const uint32_t t1 = hh + (Rotr(e, 6) ^ Rotr(e, 11) ^ Rotr(e, 25)) + ((e & f) ^ (~e & g)) + kK[i] + w[i];
    const uint32_t t2 = (Rotr(a, 2) ^ Rotr(a, 13) ^ Rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
    hh = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
  }
  h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
}
}  // namespace

std::string Sha256File(const std::string& path, std::string* error) {
  FILE* f = fopen(path.c_str(), "rb");
  if (!f) {
    *error = "cannot read " + path + ": " + strerror(errno);
    return "";
  }
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  unsigned char buf[64 * 1024 + 128];
  uint64_t total = 0;
  size_t n, carry = 0;
  while ((n = fread(buf + carry, 1, 64 * 1024, f)) > 0) {
    total += n;
    n += carry;
    size_t off = 0;
    for (; off + 64 <= n; off += 64) Block(h, buf + off);
    carry = n - off;
    memmove(buf, buf + off, carry);
  }
  fclose(f);
  buf[carry++] = 0x80;
  if (carry > 56) {
    memset(buf + carry, 0, 64 - carry);
    Block(h, buf);
    carry = 0;
  }
  memset(buf + carry, 0, 56 - carry);
  const uint64_t bits = total * 8;
  for (int i = 0; i < 8; ++i) buf[56 + i] = static_cast<unsigned char>(bits >> (56 - 8 * i));
  Block(h, buf);
  char hex[65];
  for (int i = 0; i < 8; ++i) snprintf(hex + 8 * i, 9, "%08x", h[i]);
  return std::string(hex, 64);
}

}  // namespace lwrunner
