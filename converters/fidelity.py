"""Compare an artifact's outputs with PyTorch float logits, and time a runtime call. Shared by all targets."""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable

import torch


def compare(output: torch.Tensor, reference: torch.Tensor) -> dict[str, Any]:
    """Fidelity of `output` (N,C) against float `reference` (N,C).

    top1_agreement:   share of inputs where the artifact's top-1 class equals the float model's top-1.
    top5_containment: share of inputs where the float model's top-1 class is among the artifact's top-5.
    sqnr_db:          10·log10(Σref² / Σ(out−ref)²) over all logits (higher is better; ∞ when identical).
    cosine:           mean over inputs of the cosine similarity of the two logit vectors.
    Top-k numbers only mean something with trained weights; logits-level numbers work with random ones.
    """
    out = output.detach().float().reshape(reference.shape[0], -1)
    ref = reference.detach().float().reshape(reference.shape[0], -1)
    if out.shape != ref.shape:
        raise ValueError(f"artifact output shape {tuple(out.shape)} differs from reference {tuple(ref.shape)}")
    diff = (out - ref).abs()
    noise = float(((out - ref) ** 2).sum())
    signal = float((ref**2).sum())
    sqnr = math.inf if noise == 0 else 10 * math.log10(max(signal, 1e-30) / noise)
    k = min(5, ref.shape[1])
    ref_top1 = ref.argmax(dim=1)
    return {
        "n": int(ref.shape[0]),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "sqnr_db": round(sqnr, 2) if math.isfinite(sqnr) else sqnr,
        "cosine": float(torch.nn.functional.cosine_similarity(out, ref, dim=1).mean()),
        "top1_agreement": float((out.argmax(dim=1) == ref_top1).float().mean()),
        "top5_containment": float((out.topk(k, dim=1).indices == ref_top1[:, None]).any(dim=1).float().mean()),
    }


def time_calls(fn: Callable[[], Any], warmup: int, runs: int) -> dict[str, float]:
    """Median / p10 / p90 wall time (ms) of `fn` after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    q = statistics.quantiles(samples, n=10, method="inclusive") if len(samples) > 1 else samples * 9
    return {"p50": round(statistics.median(samples), 3), "p10": round(q[0], 3), "p90": round(q[-1], 3),
            "runs": runs, "warmup": warmup}
