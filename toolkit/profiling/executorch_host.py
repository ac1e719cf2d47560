"""ExecuTorch: run the .pte with ETDump on, read the dump with the devtools Inspector and the ETRecord, and tie
every delegate kernel to the PyTorch module of the graph op it implements.

The run happens in the native runner (android_app/runner, linked against the executorch wheel's runtime) when it
was built with ExecuTorch, else in the executorch Python runtime. Either way the ETDump is read here on the host,
because the ETRecord (the map back to PyTorch) is a host-side file.
"""

from __future__ import annotations

import hashlib
import platform
import re
import tempfile
import time
import warnings
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


def _example_inputs(method, artifact: Path) -> list:
    import torch

    from lwdeploy.converters.executorch import as_pte_input, inspect_pte

    # the runtime's metadata has no dim order: an --nhwc program's channels-last input is read from the file
    layouts = [t.get("layout", "NCHW") for t in inspect_pte(artifact, xnnpack_nodes=False)["inputs"]]
    meta = method.metadata
    inputs = []
    for i in range(meta.num_inputs()):
        tm = meta.input_tensor_meta(i)
        dtype = {6: torch.float32, 1: torch.int8, 0: torch.uint8, 3: torch.int32, 4: torch.int64}.get(
            int(tm.dtype()), torch.float32)
        shape = list(tm.sizes())
        x = torch.rand(shape).to(dtype) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype)
        inputs.append(as_pte_input(x, layouts[i]) if i < len(layouts) else x)
    return inputs


def find_etrecord(artifact: Path, etrecord: str | Path | None) -> Path:
    etrecord = Path(etrecord) if etrecord else artifact.with_suffix(".etrecord")
    if not etrecord.is_file():
        raise LwdeployError(f"no ETRecord at {etrecord}: without it kernels cannot be tied to PyTorch modules",
                            "export with generate_etrecord=True and save it next to the .pte (or pass --etrecord)")
    return etrecord


def finish_report(report: dict, dump: Path, etrecord: Path) -> dict:
    """Fill a native runner's ExecuTorch report (run fields + total) with layers from its ETDump."""
    from .report import validate_report

    layers, sums, _ = layers_from_etdump(dump, etrecord, report["runs"])
    report["layers"] = layers
    report["layers_sum_ms"] = percentiles(sums)
    report["delegate"] = "xnnpack" if any("Xnnpack" in l["compute_unit"] for l in layers) else "portable"
    report["mapping"] = ("ETDump delegate kernels aligned in execution order to the ETRecord's delegated graph ops; "
                         "modules from their nn_module_stack")
    report["notes"] = [n for n in report.get("notes", []) if not n.startswith("etdump:")] + [
        "per-kernel times from the runner's ETDump, mapped on the host with the ETRecord"]
    report["producer"] = "lwdeploy-runner (native ExecuTorch) + lwdeploy.profiling.executorch_host (ETRecord mapping)"
    return validate_report(report)


def profile_executorch_host(artifact: Path, *, runs: int, warmup: int, threads: int = 1,
                            etrecord: str | Path | None = None) -> dict:
    etrecord = find_etrecord(artifact, etrecord)
    try:
        import executorch  # noqa: F401
    except ImportError:
        raise LwdeployError("ExecuTorch profiling needs the executorch package", "pip install executorch") from None
    from .build_runner import ensure_runner, runner_capabilities

    try:
        runner = ensure_runner()
    except LwdeployError:
        runner = None  # no compiler here: the Python runtime can still run it
    if runner is not None and "executorch" in runner_capabilities(runner):
        return _profile_native(runner, artifact, etrecord, runs=runs, warmup=warmup, threads=threads)
    return _profile_python(artifact, etrecord, runs=runs, warmup=warmup, threads=threads)


def _profile_native(runner: Path, artifact: Path, etrecord: Path, *, runs: int, warmup: int, threads: int) -> dict:
    import json
    import subprocess

    from .profile import package_version

    with tempfile.TemporaryDirectory(prefix="lwdeploy-et-") as tmp:
        out, dump = Path(tmp) / "report.json", Path(tmp) / "run.etdp"
        cmd = [str(runner), "--runtime", "executorch", "--model", str(artifact.resolve()), "--etdump", str(dump),
               "--out", str(out), "--runs", str(runs), "--warmup", str(warmup), "--threads", str(threads),
               "--runtime-version", package_version("executorch"), "--artifact-name", str(artifact)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 or not out.is_file():
            msg = [l for l in proc.stderr.splitlines() if l.startswith("lwdeploy-runner:")]
            raise LwdeployError(f"the ExecuTorch runner failed on {artifact.name}: "
                                f"{msg[-1] if msg else proc.stderr[-500:]}", "is it a valid .pte file?")
        return finish_report(json.loads(out.read_text()), dump, etrecord)


def _profile_python(artifact: Path, etrecord: Path, *, runs: int, warmup: int, threads: int) -> dict:
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
    from executorch.runtime import Runtime

    from .profile import package_version

    _unsafe_reset_threadpool(threads)  # XNNPACK's pool defaults to every core

    program = Runtime.get().load_program(artifact, enable_etdump=True)
    method = program.load_method("forward")
    inputs = _example_inputs(method, artifact)
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
        layers, sums, total = layers_from_etdump(dump, etrecord, runs)
    if total is None:
        total = wall
    out_layers = layers
    version = package_version("executorch")
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "measured",
        "device": _host_device(version),
        "artifact": {"path": str(artifact), "sha256": _sha256(artifact)},
        "threads": threads,
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
        "producer": "lwdeploy.profiling.executorch_host (Python runtime; native runner built without ExecuTorch)",
        "layers": out_layers,
    }


def layers_from_etdump(dump: Path, etrecord: Path, runs: int) -> tuple[list[dict], list[float], list[float] | None]:
    """Per-layer samples of the last `runs` executions in `dump`, their per-run sums, and Method::execute times."""
    from executorch.devtools import Inspector

    with warnings.catch_warnings():
        # the ETRecord's schema reader warns once per op kwarg it does not model ("Unsupported kwarg
        # encountered: aten_hardtanh_default_3, {'min_val': 0, ...}"): hundreds of lines, none of them actionable
        warnings.filterwarnings("ignore", message="Unsupported kwarg encountered", category=UserWarning)
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
    out_layers = [{"name": l["name"], "op_type": l["op_type"], "module": l["module"], "ms": percentiles(l["samples"]),
                   "compute_unit": l["compute_unit"], "kernels": l["kernels"]} for l in (layers[k] for k in order)]
    sums = [sum(layers[k]["samples"][r] for k in order) for r in range(runs)]
    return out_layers, sums, total
