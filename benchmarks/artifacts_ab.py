"""Time exported files against each other, interleaved in one process: two exports of the same model before and
after a change, float against int8, TFLite against ExecuTorch.

    python benchmarks/artifacts_ab.py old/mixnet_s_fp32.tflite new/mixnet_s_fp32.tflite \
        old/mixnet_s_fp32.pte new/mixnet_s_fp32.pte

Each file is a .tflite (LiteRT interpreter, XNNPACK) or a .pte (ExecuTorch runtime); every one gets the same
random NCHW float input of `--resolution` (int8-input .tflite files get zeros of their own type). Warm-up, then
round after round each file in turn, 1 runtime thread, CPU time of the calling thread (int8_bench.time_interleaved:
load from other processes falls on every file alike). Prints one line per file and writes --json if given.
Why not across two `zoo_int8.py` tables: a float time alone moves by up to 7 % between processes (docs/int8_zoo.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from int8_bench import invoker, time_interleaved  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path, help=".tflite / .pte files")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--warmup", type=int, default=100, help="untimed invokes per file (TFLite int8 runs ~2× slow "
                                                           "for its first ~30)")
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--json", type=Path, help="also write the timings here")
    args = p.parse_args(argv)
    for f in args.files:
        if not f.is_file() or f.suffix not in (".tflite", ".pte"):
            print(f"error: {f} is not a .tflite or .pte file — pass exported artifacts", file=sys.stderr)
            return 2
    torch.set_num_threads(1)
    x = torch.rand(1, 3, args.resolution, args.resolution)
    runners = {}
    for i, f in enumerate(args.files):    # the index keeps two files of the same name apart
        key = f"{i}:{f}"
        runners[key] = invoker(f, x)
    timed = time_interleaved(runners, args.warmup, args.rounds)
    for key, t in timed.items():
        print(f"{t['cpu_median_ms']:9.3f} ms  {key.split(':', 1)[1]}")
    if args.json:
        from lwdeploy.atomic import write_json

        write_json(args.json, {"threads": 1, "warmup": args.warmup, "rounds": args.rounds,
                               "resolution": args.resolution,
                               "files": [{"path": k.split(":", 1)[1], **t} for k, t in timed.items()]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
