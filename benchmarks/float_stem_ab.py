"""Does keeping the RGB stem conv float make an int8 program faster? One-process A/B per model.

    python benchmarks/float_stem_ab.py shufflenet_v2_050 squeezenet_1_0                  # ExecuTorch
    python benchmarks/float_stem_ab.py shufflenet_v2_050 ghostnet_100 --target tflite

Per model: the float program, int8 with every conv int8, and int8 with the stem (the one conv that reads the
image, `keep_float.rgb_stem`, whatever its kernel size) kept float — exported here (random weights with
BatchNorm statistics from 16 photo crops) and timed interleaved in one process, 1 thread, CPU time
(`int8_bench.time_interleaved`). ExecuTorch's export keeps ≤ 3×3 stems float by itself; this script turns that
rule off for the all-int8 variant, so the pair differs in the stem alone. Prints one line per model.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.int8_bench import export_executorch, export_tflite, invoker, time_interleaved  # noqa: E402


def ab(name: str, target: str, work: Path) -> dict:
    import lwdeploy.models as zoo
    import lwdeploy.quantization.keep_float as keep_float
    from lwdeploy.pipeline import settle_batchnorm
    from lwdeploy.quantization.calibration import real_photos
    from lwdeploy.quantization.lowering import lower

    torch.manual_seed(0)
    model = zoo.create(name).eval()
    info = zoo.get_info(name)
    photos = real_photos(info.resolution, info.mean, info.std, 16, 1, 0)
    settle_batchnorm(model, photos.calib)
    example, calib = photos.heldout[:1].clone(), photos.calib_batches()
    stem = keep_float.rgb_stem(model, example, max_taps=10 ** 6)   # any kernel size, so 7×7 stems too
    if not stem:
        return {"model": name, "error": "no single conv reads the image"}

    def export(kind: str, int8: bool, keep=None):
        src = lower(model, target, int8=int8, example=example)
        path = work / f"{name}_{kind}.{'pte' if target == 'executorch' else 'tflite'}"
        if target == "executorch":
            return export_executorch(src, example, path, int8=int8, calib=calib, keep_float=keep)[0]
        with contextlib.redirect_stdout(sys.stderr):
            return export_tflite(src, example, path, int8=int8, calib=calib, keep_float=keep)

    rule = keep_float.rgb_stem
    keep_float.rgb_stem = lambda *a: []            # the all-int8 variant: ExecuTorch's own stem rule off
    try:
        paths = {"float": export("float", False), "int8": export("int8", True)}
    finally:
        keep_float.rgb_stem = rule
    paths["int8_float_stem"] = export("int8_float_stem", True, stem)
    runners = {k: invoker(p, example) for k, p in paths.items()}
    times = time_interleaved(runners, 100 if target == "tflite" else 30, 50)
    ms = {k: t["cpu_median_ms"] for k, t in times.items()}
    return {"model": name, "stem": stem[0], "ms": ms}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--target", choices=("executorch", "tflite"), default="executorch")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            r = ab(name, args.target, Path(tmp))
            if "error" in r:
                print(f"{name}: {r['error']}")
                continue
            ms = r["ms"]
            print(f"{name} ({args.target}, stem {r['stem']}): float {ms['float']:.3f} ms, int8 {ms['int8']:.3f} ms, "
                  f"int8 with float stem {ms['int8_float_stem']:.3f} ms", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
