"""Where ExecuTorch's `to_edge_transform_and_lower` spends its CPU time, per XNNPACK pass (issue #6).

    python benchmarks/et_lowering_profile.py ghostnet_100 --int8
    python benchmarks/et_lowering_profile.py mobilenet_v3_large_100 efficientnet_b0 --int8 --json out.json

Each model goes through the project's own ExecuTorch converter (`ExecuTorchConverter.lower`: lowering,
PT2E int8 on 2 calibration crops with --int8, torch.export, to_edge_transform_and_lower with the XNNPACK
partitioner), at the model's default resolution, once, with ONE torch thread. Measured as this process's
CPU time (`time.process_time()`, as the converter's StageTimer does; it does not move under load):

* the converter's stages (StageTimer: torch_export, to_edge_transform_and_lower, to_executorch, ...);
* inside XNNPACK's preprocess, every pass of its fixed list (ExecuTorch's `_transform` of that pass, i.e. the
  pass itself plus the ExportedProgram rebuild and verification after it), summed over partitions, and
  whether it changed the graph;
* the rest of to_edge_transform_and_lower: decompositions, partitioning, serialisation.

Prints a table; --json writes the numbers.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import torch


def _instrument_passes(record: dict):
    """Wrap the `_transform` XNNPACK's pass manager calls, so each pass's CPU time lands in `record`."""
    import executorch.backends.xnnpack._passes as xp

    original = xp._transform

    def timed(ep, transform_pass):
        t0 = time.process_time()
        out = original(ep, transform_pass)
        name = type(transform_pass).__name__
        record[name]["cpu_s"] += time.process_time() - t0
        record[name]["calls"] += 1
        record[name]["changed"] += int(out is not ep)
        return out

    xp._transform = timed
    return lambda: setattr(xp, "_transform", original)


def profile_model(name: str, int8: bool) -> dict:
    from lwdeploy.converters.base import ExportRequest
    from lwdeploy.converters.executorch import ExecuTorchConverter
    from lwdeploy.converters.timing import StageTimer
    from lwdeploy.models import create, get_info
    from lwdeploy.pipeline import lower_for

    info = get_info(name)
    res = info.resolution
    torch.manual_seed(0)
    model = lower_for(create(name).eval(), "executorch", int8)
    example = torch.randn(1, 3, res, res)
    calib = [torch.randn(1, 3, res, res) for _ in range(2)]
    req = ExportRequest(model=model, example=example, info=info, out_path=Path("/dev/null"), int8=int8,
                        calib=calib)
    passes: dict = collections.defaultdict(lambda: {"cpu_s": 0.0, "calls": 0, "changed": 0})
    restore = _instrument_passes(passes)
    timer = StageTimer()
    try:
        ExecuTorchConverter().lower(req, timer=timer)
    finally:
        restore()
    stages = {k: v["cpu_s"] for k, v in timer.as_dict().items()}
    lower_s = stages.get("to_edge_transform_and_lower", 0.0)
    pass_s = sum(p["cpu_s"] for p in passes.values())
    return {"model": name, "int8": int8, "resolution": res, "stages_cpu_s": stages,
            "xnnpack_passes": {k: {**v, "cpu_s": round(v["cpu_s"], 3)} for k, v in passes.items()},
            "xnnpack_passes_cpu_s": round(pass_s, 2), "rest_of_lowering_cpu_s": round(lower_s - pass_s, 2)}


def table(row: dict) -> str:
    lines = [f"## {row['model']} {'int8' if row['int8'] else 'fp32'} @ {row['resolution']} px",
             "", "stage CPU s: " + ", ".join(f"{k} {v:.2f}" for k, v in row["stages_cpu_s"].items()), "",
             "| XNNPACK pass | CPU s | calls | changed graph |", "|---|---:|---:|---:|"]
    for k, v in sorted(row["xnnpack_passes"].items(), key=lambda kv: -kv[1]["cpu_s"]):
        lines.append(f"| {k} | {v['cpu_s']:.3f} | {v['calls']} | {v['changed']} |")
    lines.append(f"| **all passes** | {row['xnnpack_passes_cpu_s']:.2f} | | |")
    lines.append(f"| rest of to_edge_transform_and_lower | {row['rest_of_lowering_cpu_s']:.2f} | | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--int8", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for name in args.models:
        rows.append(profile_model(name, args.int8))
        print(table(rows[-1]) + "\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
