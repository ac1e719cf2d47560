// Tie what the runtime executed back to PyTorch modules.
//
// litert-torch names every tensor after the FX node's nn_module_stack:
//   "pkg.Net/torch.nn.modules.container.Sequential_blocks/pkg.Block_0/torch.nn.modules.conv.Conv2d_conv;1"
// (one "<qualified class>_<attribute>" segment per nesting level; fused ops join several stacks with ";").
// lwdeploy's exports repack that as "/blocks.0.conv;1" (converters/tflite_pack.py); both spellings are read.
// XNNPACK then runs its own operators, reported in execution order only; AlignKernels ties each of them
// to the TFLite op it came from by a monotone alignment on compatible op kinds.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace lwrunner {

// "stem.conv" for the example above's stem; nullopt when the name carries no module stack.
std::optional<std::string> ModuleFromTensorName(const std::string& tensor_name);

// True when an XNNPACK operator name (e.g. "Convolution (NHWC, QC8) DWConv") can implement TFLite op `tfl_op`.
bool KernelCanImplement(const std::string& kernel_name, const std::string& tfl_op);

// For every kernel, the index of the TFLite op it implements (monotone, maximising compatible matches).
std::vector<int> AlignKernels(const std::vector<std::string>& kernels, const std::vector<std::string>& tfl_ops);

}  // namespace lwrunner
