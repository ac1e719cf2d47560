"""ExecuTorch on the host: run the .pte in the executorch runtime with ETDump on, read the dump with the devtools
Inspector and the ETRecord, and tie every delegate kernel to the PyTorch module of the graph op it implements.

(The on-device native ExecuTorch runner is not built yet; this harness is Python — see android_app/runner/README.md.)
"""

from __future__ import annotations

import hashlib
import platform
import re
import tempfile
import time
from pathlib import Path

from ..errors import LwdeployError
from .align import align_kernels
from .report import SCHEMA_VERSION, percentiles

_KERNEL_SUFFIX = re.compile(r"\s+#\d+$")
_NODE_SUFFIX = re.compile(r"(_\d+)?_$")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _host_device(runtime_version: str) -> dict:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"model": model, "manufacturer": "host", "os": f"{platform.system()} {platform.release()}",
            "abi": {"x86_64": "x86_64", "aarch64": "arm64-v8a"}.get(platform.machine(), platform.machine()),
            "serial": platform.node(), "runtime": "executorch", "runtime_version": runtime_version}


def _example_inputs(method) -> list:
    import torch

    meta = method.metadata
    inputs = []
    for i in range(meta.num_inputs()):
        tm = meta.input_tensor_meta(i)
        dtype = {6: torch.float32, 1: torch.int8, 0: torch.uint8, 3: torch.int32, 4: torch.int64}.get(
            int(tm.dtype()), torch.float32)
        shape = list(tm.sizes())
        inputs.append(torch.rand(shape).to(dtype) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype))
    return inputs


def profile_executorch_host(artifact: Path, *, runs: int, warmup: int, etrecord: str | Path | None = None) -> dict:
    from .profile import package_version

    etrecord = Path(etrecord) if etrecord else artifact.with_suffix(".etrecord")
    if not etrecord.is_file():
        raise LwdeployError(f"no ETRecord at {etrecord}: without it kernels cannot be tied to PyTorch modules",
                            "export with generate_etrecord=True and save it next to the .pte (or pass --etrecord)")
    try:
        from executorch.devtools import Inspector
        from executorch.runtime import Runtime
    except ImportError:
        raise LwdeployError("ExecuTorch profiling needs the executorch package", "pip install executorch") from None

    program = Runtime.get().load_program(artifact, enable_etdump=True)
    method = program.load_method("forward")
    inputs = _example_inputs(method)
    for _ in range(warmup):
        method.execute(inputs)
    wall = []
    for _ in range(runs):
        t0 = time.perf_counter()
        method.execute(inputs)
        wall.append((time.perf_counter() - t0) * 1e3)
    with tempfile.TemporaryDirectory(prefix="lwdeploy-etdump-") as tmp:
        dump = Path(tmp) / "run.etdp"
        program.write_etdump_result_to_file(str(dump), str(Path(tmp) / "debug.bin"))
        inspector = Inspector(etdump_path=str(dump), etrecord=str(etrecord))
    blocks = [b for b in inspector.event_blocks if b.name == "Execute"]
    if not blocks:
        raise LwdeployError("the ETDump has no Execute block", "was the .pte built with profiling events?")
    events = blocks[0].events

    def last_runs(ev) -> list[float]:
        raw = list(ev.perf_data.raw) if ev.perf_data is not None else []
        return raw[-runs:] if len(raw) >= runs else raw + [0.0] * (runs - len(raw))

    layers: dict[tuple, dict] = {}
    order: list[tuple] = []

    def add(key, name, op_type, module, unit, kernel, samples):
        if key not in layers:
            layers[key] = {"name": name, "op_type": op_type, "module": module, "compute_unit": unit,
                           "kernels": [], "samples": [0.0] * runs}
            order.append(key)
        layers[key]["kernels"].append(kernel)
        layers[key]["samples"] = [a + b for a, b in zip(layers[key]["samples"], samples)]

    total = None
    pending: list = []  # delegate kernels seen before their DELEGATE_CALL event
    call_index = 0
    for ev in events:
        if ev.name == "Method::execute":
            total = last_runs(ev)
        elif ev.is_delegated_op and ev.name != "DELEGATE_CALL":
            pending.append(ev)
        elif ev.name == "DELEGATE_CALL":
            nodes = list((ev.module_hierarchy or {}).items())
            ops = [_NODE_SUFFIX.sub("", k) for k, _ in nodes]
            kernels = [_KERNEL_SUFFIX.sub("", k.name) for k in pending]
            owner = align_kernels(kernels, ops)
            for k_ev, kname, j in zip(pending, kernels, owner):
                node, stack = nodes[j] if j >= 0 else ("?", {})
                module = list(stack.values())[-1][0] if stack else None
                add((call_index, j), node, ops[j] if j >= 0 else kname, module or None,
                    f"CPU ({k_ev.delegate_backend_name or 'delegate'})", kname, last_runs(k_ev))
            pending, call_index = [], call_index + 1
        elif ev.perf_data is not None and not ev.name.startswith(("Method::", "Program::")):
            stack = ev.module_hierarchy or {}
            first = next(iter(stack.values()), {}) if stack else {}
            module = list(first.values())[-1][0] if first else None
            op = ev.op_types[0] if ev.op_types else ev.name
            add(("native", ev.name), ev.name, op, module or None, "CPU (portable kernels)", ev.name, last_runs(ev))
    if total is None:
        total = wall
    out_layers = [{"name": l["name"], "op_type": l["op_type"], "module": l["module"], "ms": percentiles(l["samples"]),
                   "compute_unit": l["compute_unit"], "kernels": l["kernels"]} for l in (layers[k] for k in order)]
    sums = [sum(layers[k]["samples"][r] for k in order) for r in range(runs)]
    version = package_version("executorch")
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "measured",
        "device": _host_device(version),
        "artifact": {"path": str(artifact), "sha256": _sha256(artifact)},
        "threads": 1,
        "delegate": "xnnpack" if any("Xnnpack" in (l["compute_unit"]) for l in out_layers) else "portable",
        "warmup_runs": warmup,
        "runs": runs,
        "total_ms": percentiles(total),
        "layers_sum_ms": percentiles(sums),
        "mapping": "ETDump delegate kernels aligned in execution order to the ETRecord's delegated graph ops; "
                   "modules from their nn_module_stack",
        "notes": ["per-kernel times from ETDump (executorch runtime, Python host harness)",
                  "total_ms is ETDump's Method::execute time of the same runs",
                  f"wall-clock p50 of those runs in Python: {percentiles(wall)['p50']:.3f} ms"],
        "producer": "lwdeploy.profiling.executorch_host (Python)",
        "layers": out_layers,
    }
