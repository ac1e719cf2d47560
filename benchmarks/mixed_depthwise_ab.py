"""A/B for issue #4: MixNet's MixedDepthwise (channel slices, one k×k depthwise conv per group, concat) against one
depthwise conv with every kernel zero-padded to the largest (the same function: the max |difference| is printed).
Exports float and int8 for TFLite and ExecuTorch with int8_bench.py's helpers, then times the four variants
interleaved (CPU ms of the calling thread, 1 runtime thread). Results: benchmarks/README.md.

    python benchmarks/mixed_depthwise_ab.py [MODEL] [TARGETS]      # default: mixnet_s tflite,executorch
"""

from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import int8_bench as bench  # noqa: E402

import lwdeploy.models as zoo  # noqa: E402
from lwdeploy.models.mbconv import MixedDepthwise  # noqa: E402
from lwdeploy.pipeline import settle_batchnorm  # noqa: E402
from lwdeploy.quantization.calibration import real_photos  # noqa: E402
from lwdeploy.quantization.lowering import lower  # noqa: E402


def merged(mixed: MixedDepthwise) -> nn.Conv2d:
    """One depthwise conv, each group's kernel centred in the largest kernel size, zeros around it."""
    convs = list(mixed.convs)
    size = max(c.kernel_size[0] for c in convs)
    channels = sum(c.out_channels for c in convs)
    out = nn.Conv2d(channels, channels, size, convs[0].stride, size // 2, groups=channels, bias=False)
    with torch.no_grad():
        out.weight.zero_()
        start = 0
        for c in convs:
            k, pad = c.kernel_size[0], (size - c.kernel_size[0]) // 2
            out.weight[start:start + c.out_channels, :, pad:pad + k, pad:pad + k] = c.weight
            start += c.out_channels
    return out


def merge_all(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, MixedDepthwise):
                setattr(module, name, merged(child))
    return model


def main(name: str = "mixnet_s", targets: str = "tflite,executorch") -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, info = zoo.create(name).eval(), zoo.get_info(name)
    images = real_photos(info.resolution, info.mean, info.std, 16, 16, 0)
    settle_batchnorm(model, images.calib)
    variants = {"mixed": model, "merged": merge_all(model)}
    with torch.no_grad():
        x = images.heldout[:4]
        print("max |merged - mixed|", float((variants["merged"](x) - model(x)).abs().max()))
    calib, example = images.calib_batches(), images.heldout[:1].clone()
    work = Path(tempfile.mkdtemp(prefix="mixed_dw_"))
    for target in targets.split(","):
        runners = {}
        for tag, source in variants.items():
            for int8 in (False, True):
                key = f"{tag}_{'int8' if int8 else 'fp32'}"
                lowered = lower(source, target, int8=int8)
                if target == "tflite":
                    path = bench.export_tflite(lowered, example, work / f"{key}.tflite", int8=int8, calib=calib)
                    runners[key] = bench._tflite_invoker(path, 1, example)
                    print(target, key, "partitions", bench.tflite_partitions(path, 1),
                          dict(bench.tflite_op_counts(path).most_common(8)), flush=True)
                else:
                    path, structure = bench.export_executorch(lowered, example, work / f"{key}.pte", int8=int8,
                                                              calib=calib)
                    runners[key] = bench._executorch_invoker(path, example, 1)
                    print(target, key, {k: v for k, v in structure.items() if "partition" in k}, flush=True)
        for key, timing in bench.time_interleaved(runners, 100, 50).items():
            print(target, key, timing, flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
