"""Is int8 faster than float per layer type, in each runtime? Stacked single-kind layers, both targets (issue #4).

    python benchmarks/depthwise_int8.py                  # 3×3 / 5×5 depthwise, 1×1 pointwise, grouped 3×3 / 1×1
    python benchmarks/depthwise_int8.py --kinds grouped  # only the grouped stacks
    python benchmarks/depthwise_int8.py --threads 2 --rounds 200

The zoo's int8/float latency ratio on ExecuTorch stayed above TFLite's for the depthwise-heavy models
(MobileNetV3, GhostNet, MixNet, NAS cells) although both run one XNNPACK partition. This isolates one layer
kind per model: 8 identical blocks (conv → BatchNorm → ReLU6, 144 channels at 56×56 unless told), exported
as float and as int8 (the project's PT2E path: per-channel weights, static activations) to TFLite
(litert-torch → LiteRT interpreter) and ExecuTorch (XNNPACK partitioner → pybindings runtime), plus an
ExecuTorch int8 with per-TENSOR weights (XNNPACK's QS8 depthwise kernels instead of QC8) to see whether the
weight granularity picks the slow kernel. Timed interleaved with --threads runtime threads (CPU-time
medians at 1 thread: they do not move with load from other processes). Writes
benchmarks/results/depthwise_int8.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import int8_bench as ib  # noqa: E402  (its exporters, timers and runtime invokers)

RESULTS = Path(__file__).resolve().parent / "results"


class Stack(nn.Module):
    """`blocks` × (conv k×k with `groups` → BN → ReLU6) at constant width, between a stride-4 stem and a head."""

    def __init__(self, channels: int, kernel: int, groups: int | str, blocks: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, 4, 1)
        groups = channels if groups == "dw" else groups
        self.body = nn.Sequential(*[nn.Sequential(nn.Conv2d(channels, channels, kernel, 1, kernel // 2, groups=groups,
                                                            bias=False), nn.BatchNorm2d(channels), nn.ReLU6())
                                    for _ in range(blocks)])
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))

    def forward(self, x):
        return self.head(self.body(self.stem(x)))


# (kernel, groups): "dw" = one group per channel. Grouped convs are CondenseNet's (3×3 and 1×1, 8 groups),
# ShuffleNet v1's and DiCENet's; XNNPACK runs them as IGEMM per group.
KINDS = {"depthwise 3×3": (3, "dw"), "depthwise 5×5": (5, "dw"), "pointwise 1×1": (1, 1),
         "grouped 3×3 (8 groups)": (3, 8), "grouped 1×1 (8 groups)": (1, 8)}


def _settled(model: nn.Module, images: torch.Tensor) -> nn.Module:
    from lwdeploy.pipeline import settle_batchnorm

    return settle_batchnorm(model, images)  # realistic activation ranges for random weights


def _executorch_per_tensor(model, example, calib, path: Path) -> Path:
    """The project's int8 recipe with per-tensor instead of per-channel weights (ExecuTorch XNNPACK)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from lwdeploy.quantization.lowering import lower

    model = lower(copy.deepcopy(model).eval(), "executorch")
    gm = torch.export.export(model, (example,)).module()
    prepared = prepare_pt2e(gm, XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=False)))
    with torch.no_grad():
        for x in calib:
            prepared(x.unsqueeze(0))
    converted = convert_pt2e(prepared)
    edge = to_edge_transform_and_lower(torch.export.export(converted, (example,)), partitioner=[XnnpackPartitioner()])
    path.write_bytes(edge.to_executorch().buffer)
    return path


def bench(args) -> list[dict]:
    from lwdeploy.quantization.calibration import real_photos
    from lwdeploy.quantization.lowering import lower

    torch.manual_seed(args.seed)
    res = args.size * 4
    images = real_photos(res, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), args.calib, 1, seed=args.seed).calib
    example = images[:1]
    rows = []
    with tempfile.TemporaryDirectory(prefix="lwdeploy-dw-") as tmp:
        work = Path(tmp)
        for kind, (k, groups) in KINDS.items():
            if args.kinds and not any(want in kind for want in args.kinds):
                continue
            model = _settled(Stack(args.channels, k, groups, args.blocks), images).eval()
            tag = kind.split()[0][:2] + str(k)
            arts = {
                ("tflite", "float"): ib.export_tflite(lower(model, "tflite", int8=False), example,
                                                      work / f"{tag}_f.tflite", int8=False),
                ("tflite", "int8"): ib.export_tflite(lower(model, "tflite"), example, work / f"{tag}_q.tflite",
                                                     int8=True, calib=list(images)),
                ("executorch", "float"): ib.export_executorch(lower(model, "executorch", int8=False), example,
                                                              work / f"{tag}_f.pte", int8=False)[0],
                ("executorch", "int8"): ib.export_executorch(lower(model, "executorch"), example, work / f"{tag}_q.pte",
                                                             int8=True, calib=list(images))[0],
                ("executorch", "int8 per-tensor"): _executorch_per_tensor(model, example, list(images),
                                                                          work / f"{tag}_t.pte"),
            }
            runners = {}
            for (target, variant), path in arts.items():
                runners[(target, variant)] = ib.invoker(path, example, args.threads)
            times = ib.time_interleaved(runners, args.warmup, args.rounds)
            clock = "cpu_median_ms" if args.threads == 1 else "median_ms"
            for (target, variant), t in times.items():
                base = times[(target, "float")][clock]
                rows.append({"layers": kind, "target": target, "variant": variant, "ms": t[clock],
                             "x_float": round(t[clock] / base, 2), "size_kb": round(arts[(target, variant)].stat().st_size / 1024, 1)})
                print(f"{kind:14s} {target:10s} {variant:16s} {t[clock]:7.3f} ms  ×{t[clock] / base:.2f}", flush=True)
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"Host: {meta['machine']} · {meta['threads']} thread(s) · {meta['rounds']} interleaved rounds · "
             f"{meta['channels']} channels at {meta['size']}×{meta['size']}, {meta['blocks']} blocks · "
             f"{'CPU' if meta['threads'] == 1 else 'wall'}-time medians", "",
             "| layers | target | variant | ms | ×float | size KB |", "|---|---|---|---:|---:|---:|"]
    lines += [f"| {r['layers']} | {r['target']} | {r['variant']} | {r['ms']:.3f} | {r['x_float']:.2f} | {r['size_kb']} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--channels", type=int, default=144)
    p.add_argument("--size", type=int, default=56, help="feature-map side inside the stack (input is 4× that)")
    p.add_argument("--blocks", type=int, default=8)
    p.add_argument("--kinds", nargs="+", help="only the layer kinds whose name contains one of these (e.g. grouped)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--calib", type=int, default=16)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = bench(args)
    meta = {"machine": platform.machine(), "threads": args.threads, "rounds": args.rounds, "channels": args.channels,
            "size": args.size, "blocks": args.blocks, "torch": torch.__version__}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "depthwise_int8.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (args.out / "depthwise_int8.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
