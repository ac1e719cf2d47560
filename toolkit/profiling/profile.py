"""Artifact → report: pick the harness for the artifact's runtime and the place it runs (host or an adb serial)."""

from __future__ import annotations

import json
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

from ..errors import LwdeployError
from .report import validate_report

RUNTIME_BY_SUFFIX = {".tflite": "litert", ".pte": "executorch", ".mlpackage": "coreml", ".mlmodel": "coreml"}


def runtime_of(artifact: Path) -> str:
    runtime = RUNTIME_BY_SUFFIX.get(artifact.suffix.lower())
    if runtime is None:
        raise LwdeployError(f"don't know how to profile '{artifact.name}'",
                            "expected a .tflite, .pte, .mlpackage or .mlmodel artifact")
    return runtime


def litert_library() -> Path:
    """libLiteRt.so from the ai-edge-litert wheel: the same runtime the host verification uses."""
    try:
        import ai_edge_litert
    except ImportError:
        raise LwdeployError("LiteRT profiling needs the ai-edge-litert package", "pip install ai-edge-litert") from None
    lib = Path(ai_edge_litert.__file__).parent / "libLiteRt.so"
    if not lib.is_file():
        raise LwdeployError(f"{lib} is missing", "reinstall ai-edge-litert (the wheel ships libLiteRt.so)")
    return lib


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def runner_command(runner: Path | str, model: str, lib: str, out: str, *, runs: int, warmup: int, threads: int,
                   runtime_version: str, artifact_name: str) -> list[str]:
    return [str(runner), "--runtime", "litert", "--model", model, "--lib", lib, "--out", out, "--runs", str(runs),
            "--warmup", str(warmup), "--threads", str(threads), "--runtime-version", runtime_version,
            "--artifact-name", artifact_name]


def profile_litert_host(artifact: Path, *, runs: int, warmup: int, threads: int, timeout: float = 600) -> dict:
    from .build_runner import ensure_runner

    runner = ensure_runner()
    with tempfile.TemporaryDirectory(prefix="lwdeploy-profile-") as tmp:
        out = Path(tmp) / "report.json"
        cmd = runner_command(runner, str(artifact.resolve()), str(litert_library()), str(out), runs=runs,
                             warmup=warmup, threads=threads, runtime_version=package_version("ai-edge-litert"),
                             artifact_name=str(artifact))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise LwdeployError(f"the LiteRT runner took longer than {timeout:.0f}s", "try fewer --runs") from None
        if proc.returncode != 0 or not out.is_file():
            msg = [l for l in proc.stderr.splitlines() if l.startswith("lwdeploy-runner:")]
            raise LwdeployError(f"the LiteRT runner failed on {artifact.name}: {msg[-1] if msg else proc.stderr[-500:]}",
                                "is it a valid .tflite file?")
        return validate_report(json.loads(out.read_text()))


def profile_artifact(artifact: str | Path, *, device: str = "host", runs: int = 50, warmup: int = 10,
                     threads: int = 1, etrecord: str | Path | None = None) -> dict:
    artifact = Path(artifact)
    if not artifact.exists():
        raise LwdeployError(f"no artifact at {artifact}", "pass the .tflite/.pte/.mlpackage written by `lwdeploy export`")
    if runs < 1 or warmup < 0 or threads < 1:
        raise LwdeployError("--runs and --threads must be >= 1 and --warmup >= 0")
    runtime = runtime_of(artifact)
    if runtime == "coreml":
        if device != "host":
            raise LwdeployError("Core ML models cannot be profiled over adb", "Core ML runs on Apple devices only")
        from .coreml_estimate import estimate_coreml

        return validate_report(estimate_coreml(artifact))
    if device == "host":
        if runtime == "litert":
            return profile_litert_host(artifact, runs=runs, warmup=warmup, threads=threads)
        from .executorch_host import profile_executorch_host

        return profile_executorch_host(artifact, runs=runs, warmup=warmup, threads=threads, etrecord=etrecord)
    from .adb import AdbProfiler

    return AdbProfiler(serial=device).profile(artifact, runs=runs, warmup=warmup, threads=threads, etrecord=etrecord)
