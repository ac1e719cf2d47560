"""Per-stage wall and CPU seconds, recorded in every manifest (`timings`) so slow stages are visible.

CPU seconds are this process's (time.process_time: all its threads), which is the honest figure on a shared
machine where wall time depends on the neighbours; conversions run in their own worker processes, so the
CPU time of one target is not mixed with another's.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator


class StageTimer:
    """`with timer("torch_export"): ...` adds that block's wall/CPU seconds under the name (repeats add up)."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, float]] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        w0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - w0, time.process_time() - c0)

    def add(self, name: str, wall_s: float, cpu_s: float) -> None:
        slot = self.stages.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0})
        slot["wall_s"] += wall_s
        slot["cpu_s"] += cpu_s

    def merge(self, stages: dict[str, dict[str, float]], prefix: str = "") -> None:
        for name, t in (stages or {}).items():
            self.add(prefix + name, t.get("wall_s", 0.0), t.get("cpu_s", 0.0))

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {k: {"wall_s": round(v["wall_s"], 2), "cpu_s": round(v["cpu_s"], 2)} for k, v in self.stages.items()}
