"""The manifest: a JSON record written beside every artifact — what it is, how it was made, and the proof.

Fields: model (name, family, width, resolution, classes, params/MACs), artifact (file, sha256, size),
io (input/output spec), preprocessing, quantization, calibration, verification (fidelity vs PyTorch float,
host latency, structural checks), tool versions. No timestamps: the same export gives the same manifest.
"""

from __future__ import annotations

import hashlib
import platform
from importlib import metadata
from pathlib import Path

SCHEMA_VERSION = 1
TOOLS = ("lwdeploy", "torch", "executorch", "litert-torch", "ai-edge-litert", "coremltools", "torchao",
         "torch-pruning", "numpy")


def sha256_of(path: Path) -> str:
    """sha256 of a file, or of a directory bundle (.mlpackage) as its sorted relative paths and contents."""
    h = hashlib.sha256()
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def size_of(path: Path) -> int:
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def tool_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in TOOLS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def manifest_path(artifact: Path) -> Path:
    return Path(str(artifact) + ".json")
