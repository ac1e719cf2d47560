"""The small interface every target implements, and the value each stage hands to the next."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lwdeploy.models.registry import ModelInfo


@dataclass
class ExportRequest:
    """Everything a converter needs. `model` is float, eval mode, already lowered for the target."""

    model: nn.Module
    example: torch.Tensor                       # (1, 3, H, W) float, normalised like the model expects
    info: ModelInfo                             # normalisation, labels, name
    out_path: Path                              # final artifact path; write atomically (lwdeploy.atomic)
    int8: bool = False
    calib: list[torch.Tensor] = field(default_factory=list)   # normalised (1,3,H,W) calibration inputs
    labels: list[str] | None = None
    options: dict[str, Any] = field(default_factory=dict)     # target-specific (e.g. fp16, nhwc)
    # int8 only: an already calibrated PT2E program (quantization.QuantizedModel) to use instead of quantizing
    # `model` again; it takes the same normalised input as `model`. The pipeline shares one between targets
    # that annotate alike (ExecuTorch XNNPACK and Core ML W8A8), so calibration runs once.
    quantized: Any = None


@dataclass
class ConversionResult:
    path: Path
    target: str
    quantization: dict[str, Any]                # scheme, quantizer, per_channel, calibration count…
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)   # conversion-time facts (delegate partitions…)
    extra_files: list[Path] = field(default_factory=list)   # written beside the artifact (e.g. ETRecord)
    timings: dict[str, dict[str, float]] = field(default_factory=dict)  # stage → {wall_s, cpu_s} (timing.py)


@dataclass
class Verification:
    """What the host could check. `ran_on_host` False means structural checks only (Core ML on Linux)."""

    ran_on_host: bool
    checks: dict[str, Any]                      # structural facts: io shapes, op histogram, int8 ops…
    fidelity: dict[str, Any] | None = None      # max_abs_diff, top1_agreement, top5_containment, n
    latency_ms: dict[str, float] | None = None  # median (and p10/p90) host latency
    notes: list[str] = field(default_factory=list)
    timings: dict[str, dict[str, float]] = field(default_factory=dict)  # stage → {wall_s, cpu_s} (timing.py)


class Converter(ABC):
    name: str
    suffix: str

    @abstractmethod
    def convert(self, req: ExportRequest) -> ConversionResult: ...

    @abstractmethod
    def verify(self, path: Path, inputs: torch.Tensor, reference: torch.Tensor) -> Verification:
        """Run (or inspect) the artifact on `inputs` (N,3,H,W) and compare with PyTorch float `reference` (N,C)."""
