"""Which calibration recipe moves int8 fidelity? Simulated int8 (the PT2E program run in PyTorch), one model.

    python benchmarks/calibration_recipes.py                      # EfficientNet-Lite0, real weights, ExecuTorch
    python benchmarks/calibration_recipes.py --recipes default,logits-minmax --heldout 200

Every recipe is the default `quantization.pt2e.quantize` with ONE thing changed; the rows show whether that
thing helps top-1 agreement with float (issue #4: ≥ 95 % on held-out real-photo crops). Recipes that are not
the product's are applied here by swapping one module-level spec or one observer, so none of them needs an
option in the toolkit unless it measurably helps:

| recipe | what changes |
|---|---|
| `default` | what `lwdeploy export --int8` does |
| `logits-minmax` | the logits' observer is MinMax, not Histogram (which may clip the tail where the top-1 lives) |
| `relu6-observed` | conv → ReLU6 outputs on an observed (histogram) range inside [0, 6] instead of the fixed [0, 6] |
| `calib-N` | N calibration crops instead of `--calib` |
| `keep-float-F` | the worst layers by per-layer SQNR kept float within MAC share F (`--keep-float-budget F`) |
| `adaround` | learned weight rounding for every layer (`--weight-rounding adaround`) |
| `nearest` | nearest weight rounding everywhere (`--weight-rounding nearest`; the default before session 15) |
| `float-stem` | the stem conv kept float (`--keep-float stem`; ExecuTorch's default already does this) |
| `input-minmax` | the image's observer is MinMax, not Histogram (which may clip the brightest/darkest pixels) |

Writes JSON + markdown to --out (benchmarks/results/, gitignored).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch


@contextlib.contextmanager
def _minmax(where: str):
    """Swap the observer on the logits (where="output") or on the image (where="input") for MinMax."""
    import torchao.quantization.pt2e.quantize_pt2e as qp
    from torchao.quantization.pt2e.observer import MinMaxObserver

    original = qp.prepare_pt2e

    def prepare(graph, quantizer):
        prepared = original(graph, quantizer)
        if where == "output":
            out = next(n for n in prepared.graph.nodes if n.op == "output")
            node = out.args[0][0] if isinstance(out.args[0], (tuple, list)) else out.args[0]
        else:
            image = next(n for n in prepared.graph.nodes if n.op == "placeholder")
            node = next(u for u in image.users if u.op == "call_module"
                        and hasattr(getattr(prepared, u.target), "calculate_qparams"))
        observer = getattr(prepared, node.target)
        setattr(prepared, node.target, MinMaxObserver(dtype=observer.dtype, qscheme=observer.qscheme,
                                                      quant_min=observer.quant_min, quant_max=observer.quant_max,
                                                      eps=observer.eps))
        return prepared

    qp.prepare_pt2e = prepare
    try:
        yield
    finally:
        qp.prepare_pt2e = original


@contextlib.contextmanager
def _relu6_observed():
    # Only for ReLU6 models without hard-sigmoids: fixed_ranges derives the hard-sigmoid's range from 6/255.
    from torchao.quantization.pt2e.observer import HistogramObserver
    from torchao.quantization.pt2e.quantizer import QuantizationSpec

    import lwdeploy.quantization.fixed_ranges as fixed_ranges

    original = fixed_ranges.RELU6_SPEC
    fixed_ranges.RELU6_SPEC = QuantizationSpec(
        dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_affine,
        observer_or_fake_quant_ctr=HistogramObserver.with_args(eps=2.0 ** -12))
    try:
        yield
    finally:
        fixed_ranges.RELU6_SPEC = original


def run_recipe(recipe: str, model, info, target: str, photos, reference: torch.Tensor, args) -> dict:
    from lwdeploy.quantization.calibration import real_photos
    from lwdeploy.quantization.fidelity import compare_outputs
    from lwdeploy.quantization.lowering import lower
    from lwdeploy.quantization.pt2e import quantize

    kwargs: dict = {}
    patch = contextlib.nullcontext()
    calib = photos.calib_batches()
    if recipe == "logits-minmax":
        patch = _minmax("output")
    elif recipe == "input-minmax":
        patch = _minmax("input")
    elif recipe == "float-stem":
        kwargs["keep_float"] = ["stem"]
    elif recipe == "relu6-observed":
        patch = _relu6_observed()
    elif recipe in ("adaround", "nearest"):
        kwargs["weight_rounding"] = recipe
    elif recipe.startswith("calib-"):
        # new calibration crops only; the held-out crops (and the float reference) stay the same
        calib = real_photos(info.resolution, info.mean, info.std, int(recipe[6:]), 1, args.seed).calib_batches()
    elif recipe.startswith("keep-float-"):
        kwargs["keep_float_budget"] = float(recipe[11:])
    example = photos.heldout[:1].clone()
    t0 = time.process_time()
    with patch:
        qm = quantize(lower(model, target, int8=True, example=example), example, target, calib, **kwargs)
    cpu = time.process_time() - t0
    if recipe == "relu6-observed" and not qm.scheme["hardsigmoid_fixed_range"].endswith(": 0 MULs"):
        raise SystemExit(f"error: relu6-observed is for models without hard-sigmoid/hard-swish ({args.model} has "
                         "them: their fixed ranges assume ReLU6's 6/255 scale); leave that recipe out")
    with torch.no_grad():
        out = torch.cat([qm.module(x.unsqueeze(0)) for x in photos.heldout]).reshape(reference.shape)
    row = {"recipe": recipe, "target": target, "quantize_cpu_s": round(cpu, 1),
           "fidelity": compare_outputs(reference, out), "activation_ranges": activation_ranges(qm.module)}
    if 0 < args.subset < len(out):
        row[f"fidelity_first_{args.subset}"] = compare_outputs(reference[:args.subset], out[:args.subset])
    return row


def activation_ranges(gm: torch.fx.GraphModule) -> dict[str, dict]:
    """The width (scale × 255) of every int8 activation range, for ReLU6 outputs and for the rest: where a
    recipe moved the ranges, and how wide the widest ones are."""
    widths: dict[str, list[float]] = {"relu6": [], "other": []}
    for n in gm.graph.nodes:
        if (n.op == "call_function" and str(n.target).startswith("quantized_decomposed.quantize_per_tensor")
                and len(n.args) > 1 and isinstance(n.args[1], float)):
            src = n.args[0]
            clamp = isinstance(src, torch.fx.Node) and any(k in str(src.target) for k in ("hardtanh", "relu6", "clamp"))
            widths["relu6" if clamp else "other"].append(n.args[1] * 255)
    return {k: {"n": len(v), "min": round(min(v), 2), "median": round(sorted(v)[len(v) // 2], 2),
                "max": round(max(v), 2)} for k, v in widths.items() if v}


def markdown(rows: list[dict], subset: int) -> str:
    head = ("| target | recipe | top-1 agree | top-5 contain | out SQNR dB |"
            + (f" top-1 agree (first {subset}) |" if subset else "") + " quantize CPU s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        f = r["fidelity"]
        cells = [r["target"], r["recipe"], f"{f['top1_agreement']:.3f}", f"{f['top5_containment']:.3f}",
                 f"{f['output_sqnr_db']:.2f}"]
        if subset:
            cells.append(f"{r.get(f'fidelity_first_{subset}', f)['top1_agreement']:.3f}")
        cells.append(f"{r['quantize_cpu_s']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--targets", default="executorch")
    p.add_argument("--recipes", default="default,logits-minmax,relu6-observed,calib-256,keep-float-0.03")
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--heldout", type=int, default=1000)
    p.add_argument("--subset", type=int, default=200, help="also report the first N held-out crops (0: no)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--random-weights", action="store_true", help="random init (BatchNorm statistics from the "
                   "calibration crops) instead of the model's real weights")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args(argv)

    known = ("default", "logits-minmax", "relu6-observed", "adaround", "nearest", "float-stem", "input-minmax")
    for recipe in args.recipes.split(","):
        if recipe not in known and not recipe.startswith(("calib-", "keep-float-")):
            p.error(f"unknown recipe {recipe!r}: one of {', '.join(known)}, calib-N, keep-float-F")
    import lwdeploy.models as zoo
    from lwdeploy.quantization.calibration import real_photos

    torch.manual_seed(args.seed)
    info = zoo.get_info(args.model)
    pretrained = not args.random_weights
    model = zoo.create(args.model, pretrained=pretrained).eval()
    photos = real_photos(info.resolution, info.mean, info.std, args.calib, args.heldout, args.seed)
    if not pretrained:
        from lwdeploy.pipeline import settle_batchnorm

        settle_batchnorm(model, photos.calib)
    with torch.no_grad():
        reference = torch.cat([model(photos.heldout[i:i + 8]) for i in range(0, len(photos.heldout), 8)])
    rows = []
    for target in args.targets.split(","):
        for recipe in args.recipes.split(","):
            print(f"{args.model} / {target}: {recipe}", flush=True)
            rows.append(run_recipe(recipe, model, info, target, photos, reference, args))
            f = rows[-1]["fidelity"]
            print(f"  top-1 agree {f['top1_agreement']:.3f}  SQNR {f['output_sqnr_db']:.2f} dB  activation ranges "
                  f"{rows[-1]['activation_ranges']}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"recipes_{args.model}_{time.strftime('%Y%m%d-%H%M%S')}"
    meta = {"model": args.model, "pretrained": pretrained, "calib": args.calib, "heldout": args.heldout,
            "seed": args.seed,
            "command": "python benchmarks/calibration_recipes.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=float))
    table = markdown(rows, args.subset if 0 < args.subset < args.heldout else 0)
    stem.with_suffix(".md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
