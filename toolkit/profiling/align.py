"""Tie delegate kernels (XNNPACK operators, reported only in execution order) to the graph ops they implement.

Both lists are in execution order, so a longest-common-subsequence over "this kernel can implement that op"
gives a monotone matching; kernels with no partner (layout transposes XNNPACK inserts) go to the op right after
the previous match. The native runner does the same for LiteRT (android_app/runner/src/module_path.cc).
"""

from __future__ import annotations

# kernel-name prefix (lower case) → substrings of the graph op names it can implement
_COMPAT: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
    (("convolution", "deconvolution"), ("convolution", "conv2d", "conv_2d", "depthwise_conv")),
    (("fully connected", "batch matrix"), ("linear", "addmm", "mm", "convolution", "fully_connected", "conv_2d")),
    (("transpose",), ("permute", "transpose")),
    (("multiply",), ("mul", "hard_swish", "hardswish")),
    (("add",), ("add", "hard_swish", "hardswish")),
    (("subtract",), ("sub",)),
    (("divide",), ("div",)),
    (("clamp",), ("hardtanh", "relu", "clamp")),
    (("mean", "sum", "global average"), ("mean", "sum", "avg_pool")),
    (("static reshape", "reshape"), ("view", "reshape", "squeeze", "flatten", "clone", "expand_dims")),
    (("copy",), ("cat", "concatenation", "view", "reshape", "clone")),  # XNNPACK concatenates with copies
    (("convert",), ("quantize", "dequantize")),
    (("constant pad",), ("pad",)),
    (("max pooling", "argmax pooling"), ("max_pool",)),
    (("average pooling",), ("avg_pool", "mean")),
    (("concatenat",), ("cat", "concatenation")),
    (("slice", "strided"), ("slice", "split")),
    (("softmax",), ("softmax",)),
    (("sigmoid",), ("sigmoid", "logistic")),
    (("hardswish",), ("hardswish", "hard_swish")),
    (("tanh",), ("tanh",)),
]


def kernel_can_implement(kernel: str, op: str) -> bool:
    k, o = kernel.lower(), op.lower()
    for prefixes, ops in _COMPAT:
        if k.startswith(prefixes):
            return any(s in o for s in ops)
    if "unary" in k:  # XNNPACK names some elementwise kernels "Invalid Unary Op"
        return any(s in o for s in ("hardswish", "hard_swish", "sigmoid", "relu", "hardtanh", "quantize", "add", "mul"))
    return False


def align_kernels(kernels: list[str], ops: list[str]) -> list[int]:
    """For each kernel, the index of the op it implements (monotone, maximising compatible matches)."""
    n, m = len(kernels), len(ops)
    if n == 0 or m == 0:
        return [-1] * n
    ok = [[kernel_can_implement(k, o) for o in ops] for k in kernels]
    dp = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        row, prev, oki = dp[i], dp[i - 1], ok[i - 1]
        for j in range(1, m + 1):
            best = max(prev[j], row[j - 1])
            if oki[j - 1] and prev[j - 1] + 1 > best:
                best = prev[j - 1] + 1
            row[j] = best
    owner = [-1] * n
    i, j = n, m
    while i > 0 and j > 0:
        if ok[i - 1][j - 1] and dp[i][j] == dp[i - 1][j - 1] + 1:
            owner[i - 1] = j - 1
            i, j = i - 1, j - 1
        elif dp[i - 1][j] >= dp[i][j - 1]:
            i -= 1
        else:
            j -= 1
    prev_op = -1
    for i in range(n):
        if owner[i] >= 0:
            prev_op = owner[i]
            continue
        nxt = next((owner[k] for k in range(i + 1, n) if owner[k] >= 0), m)
        owner[i] = min(max(prev_op + 1 if prev_op + 1 < nxt else prev_op, 0), m - 1)
    return owner
