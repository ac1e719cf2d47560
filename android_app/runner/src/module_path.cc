#include "module_path.h"

#include <algorithm>
#include <cctype>
#include <utility>

namespace lwrunner {
namespace {

std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t i = 0; i <= s.size(); ++i) {
    if (i == s.size() || s[i] == sep) {
      out.push_back(s.substr(start, i - start));
      start = i + 1;
    }
  }
  return out;
}

bool IsNumber(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c); });
}

// One ";"-component → list of attribute names below the root module, or nullopt if it is no module stack.
// Two spellings: litert-torch's "<pkg.Root>/<pkg.Class>_<attr>/…" and lwdeploy's repacked "/<dotted.module.path>"
// (converters/tflite_pack.py module_path_name).
std::optional<std::vector<std::string>> StackOf(const std::string& component) {
  if (!component.empty() && component[0] == '/') {
    if (component.size() == 1) return std::vector<std::string>{};  // the root module itself
    return Split(component.substr(1), '.');
  }
  const std::vector<std::string> segs = Split(component, '/');
  if (segs.size() < 2) return std::nullopt;  // no nesting: an I/O or wrapper tensor, not a module
  std::vector<std::string> attrs;
  for (size_t i = 1; i < segs.size(); ++i) {
    // "<dotted.qualified.Class>_<attr>": the attribute follows the first "_" after the last ".".
    const std::string& seg = segs[i];
    const size_t dot = seg.rfind('.');
    const std::string tail = dot == std::string::npos ? seg : seg.substr(dot + 1);
    const size_t us = tail.find('_');
    if (us == std::string::npos || us + 1 >= tail.size()) return std::nullopt;
    attrs.push_back(tail.substr(us + 1));
  }
  return attrs;
}

std::string Join(const std::vector<std::string>& parts, size_t n) {
  std::string out;
  for (size_t i = 0; i < n && i < parts.size(); ++i) out += (i ? "." : "") + parts[i];
  return out;
}

std::string Lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool StartsWith(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

}  // namespace

std::optional<std::string> ModuleFromTensorName(const std::string& tensor_name) {
  std::vector<std::vector<std::string>> stacks;
  for (const std::string& comp : Split(tensor_name, ';')) {
    if (comp.empty() || IsNumber(comp)) continue;
    if (auto st = StackOf(comp); st && !st->empty()) stacks.push_back(*st);
  }
  if (stacks.empty()) return std::nullopt;
  if (stacks.size() == 1) return Join(stacks[0], stacks[0].size());
  // A fused op (conv+bn+act) names sibling modules: their parent is the layer. The name may also carry the
  // stack of an input's producer, so the parent most stacks share wins (ties: the first stack's).
  std::vector<std::pair<std::string, int>> parents;  // in first-seen order
  for (const auto& st : stacks) {
    const std::string parent = Join(st, st.size() - 1);
    auto it = std::find_if(parents.begin(), parents.end(), [&](const auto& p) { return p.first == parent; });
    if (it == parents.end()) parents.emplace_back(parent, 1);
    else ++it->second;
  }
  const auto best = std::max_element(parents.begin(), parents.end(),
                                     [](const auto& a, const auto& b) { return a.second < b.second; });
  if (best->second >= 2 && !best->first.empty()) return best->first;
  return Join(stacks[0], stacks[0].size());
}

bool KernelCanImplement(const std::string& kernel_name, const std::string& tfl_op) {
  const std::string k = Lower(kernel_name);
  const std::string& t = tfl_op;
  auto any = [&](std::initializer_list<const char*> ops) {
    for (const char* op : ops)
      if (t == op) return true;
    return false;
  };
  if (StartsWith(k, "convolution") || StartsWith(k, "deconvolution"))
    return any({"CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "CONV_3D"});
  if (StartsWith(k, "fully connected") || StartsWith(k, "batch matrix"))
    return any({"FULLY_CONNECTED", "CONV_2D", "BATCH_MATMUL"});
  if (StartsWith(k, "transpose")) return any({"TRANSPOSE"});
  if (StartsWith(k, "multiply")) return any({"MUL", "HARD_SWISH"});
  if (StartsWith(k, "add")) return any({"ADD", "HARD_SWISH"});
  if (StartsWith(k, "subtract")) return any({"SUB"});
  if (StartsWith(k, "divide")) return any({"DIV"});
  if (StartsWith(k, "mean") || StartsWith(k, "sum") || k.find("reduce") != std::string::npos ||
      StartsWith(k, "global average"))
    return any({"MEAN", "SUM", "REDUCE_MAX", "AVERAGE_POOL_2D"});
  if (StartsWith(k, "static reshape") || StartsWith(k, "reshape")) return any({"RESHAPE", "SQUEEZE", "EXPAND_DIMS"});
  if (StartsWith(k, "copy")) return any({"CONCATENATION", "RESHAPE", "SQUEEZE", "EXPAND_DIMS"});  // concat = copies
  if (StartsWith(k, "convert")) return any({"QUANTIZE", "DEQUANTIZE"});
  if (StartsWith(k, "constant pad")) return any({"PAD", "PADV2"});
  if (StartsWith(k, "max pooling") || StartsWith(k, "argmax pooling")) return any({"MAX_POOL_2D"});
  if (StartsWith(k, "average pooling")) return any({"AVERAGE_POOL_2D", "MEAN"});
  if (StartsWith(k, "concatenat")) return any({"CONCATENATION"});
  if (StartsWith(k, "slice") || StartsWith(k, "strided")) return any({"SLICE", "STRIDED_SLICE", "SPLIT", "SPLIT_V"});
  if (StartsWith(k, "resize")) return any({"RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"});
  if (StartsWith(k, "softmax")) return any({"SOFTMAX"});
  // Elementwise unary kernels (XNNPACK names some "Invalid Unary Op" in this build): activations, and the
  // DEQUANTIZE→ADD→MUL→QUANTIZE chains that int8 hard-swish lowers to.
  if (k.find("unary") != std::string::npos || StartsWith(k, "hardswish") || StartsWith(k, "sigmoid") ||
      StartsWith(k, "clamp") || StartsWith(k, "tanh") || StartsWith(k, "elu") || StartsWith(k, "leaky") ||
      StartsWith(k, "gelu") || StartsWith(k, "square") || StartsWith(k, "abs") || StartsWith(k, "negate"))
    return any({"HARD_SWISH", "LOGISTIC", "RELU", "RELU6", "RELU_N1_TO_1", "TANH", "ELU", "LEAKY_RELU", "GELU",
                "DEQUANTIZE", "QUANTIZE", "ADD", "MUL", "SQUARE", "SQRT", "RSQRT", "ABS", "NEG", "EXP"});
  return false;
}

std::vector<int> AlignKernels(const std::vector<std::string>& kernels, const std::vector<std::string>& ops) {
  const size_t n = kernels.size(), m = ops.size();
  std::vector<int> owner(n, -1);
  if (n == 0 || m == 0) return owner;
  // Longest common subsequence under "can implement": both lists are in execution order.
  std::vector<std::vector<int>> dp(n + 1, std::vector<int>(m + 1, 0));
  for (size_t i = 1; i <= n; ++i)
    for (size_t j = 1; j <= m; ++j) {
      dp[i][j] = std::max(dp[i - 1][j], dp[i][j - 1]);
      if (KernelCanImplement(kernels[i - 1], ops[j - 1])) dp[i][j] = std::max(dp[i][j], dp[i - 1][j - 1] + 1);
    }
  for (size_t i = n, j = m; i > 0 && j > 0;) {
    if (KernelCanImplement(kernels[i - 1], ops[j - 1]) && dp[i][j] == dp[i - 1][j - 1] + 1) {
      owner[i - 1] = static_cast<int>(j - 1);
      --i;
      --j;
    } else if (dp[i - 1][j] >= dp[i][j - 1]) {
      --i;
    } else {
      --j;
    }
  }
  // Unmatched kernels belong between their matched neighbours: to the first op after the previous match.
  int prev = -1;
  for (size_t i = 0; i < n; ++i) {
    if (owner[i] >= 0) {
      prev = owner[i];
      continue;
    }
    int next = static_cast<int>(m);
    for (size_t k = i + 1; k < n; ++k)
      if (owner[k] >= 0) {
        next = owner[k];
        break;
      }
    int pick = prev + 1 < next ? prev + 1 : prev;
    owner[i] = std::clamp(pick, 0, static_cast<int>(m) - 1);
  }
  return owner;
}

}  // namespace lwrunner
