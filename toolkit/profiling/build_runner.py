"""Build the native runner (android_app/runner) for this host, once per source version.

    python -m lwdeploy.profiling.build_runner          # prints the binary's path
    python -m lwdeploy.profiling.build_runner --regen-op-names

With the executorch wheel installed the runner also links its runtime (ExecuTorch + XNNPACK + ETDump).
Needs a C++17 compiler and CMake >= 3.19 (`apt-get install g++ cmake` or `pip install cmake`). Output goes to
~/.cache/lwdeploy/runner/<hash of the sources>/ (or $LWDEPLOY_CACHE), never into the source tree.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import LwdeployError

BINARY = "lwdeploy-runner"


def runner_source_dir() -> Path:
    src = Path(__file__).resolve().parents[2] / "android_app" / "runner"
    if not (src / "CMakeLists.txt").is_file():
        raise LwdeployError("the native runner sources (android_app/runner) are not next to this lwdeploy install",
                            "profile from a source checkout (pip install -e .)")
    return src


def executorch_cmake_dir() -> Path | None:
    """The executorch wheel's CMake config, if the wheel is installed (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("executorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    cfg = Path(list(spec.submodule_search_locations)[0]) / "share" / "cmake"
    return cfg if (cfg / "executorch-config.cmake").is_file() else None


def _source_hash(src: Path) -> str:
    h = hashlib.sha256()
    et = executorch_cmake_dir()  # a runner built with ExecuTorch links that wheel: rebuild when it moves
    h.update(str(et).encode() + b"\0" + ((et / "executorch-config-version.cmake").read_bytes() if et else b""))
    for p in sorted([src / "CMakeLists.txt", *(src / "src").iterdir()]):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def find_cmake() -> str | None:
    """CMake from this environment (pip's `cmake`, in the test extra) before the system's: CI runs the venv's
    python without putting its bin/ on PATH."""
    here = Path(sys.executable).parent / "cmake"
    if here.is_file():
        return str(here)
    try:
        import cmake as cmake_pkg

        exe = Path(cmake_pkg.CMAKE_BIN_DIR) / "cmake"
        if exe.is_file():
            return str(exe)
    except (ImportError, AttributeError):
        pass
    return shutil.which("cmake")


def find_compiler() -> str | None:
    return shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


def cache_root() -> Path:
    return Path(os.environ.get("LWDEPLOY_CACHE", Path.home() / ".cache" / "lwdeploy"))


def ensure_runner(verbose: bool = False) -> Path:
    """Path to a host-built runner for the current sources, building it if needed."""
    src = runner_source_dir()
    out = cache_root() / "runner" / _source_hash(src)
    binary = out / BINARY
    if binary.is_file():
        return binary
    cmake = find_cmake()
    if cmake is None:
        raise LwdeployError("building the native runner needs CMake", "apt-get install cmake (or pip install cmake)")
    if find_compiler() is None:
        raise LwdeployError("building the native runner needs a C++17 compiler", "apt-get install g++")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=out.parent))
    try:
        gen = ["-G", "Ninja"] if shutil.which("ninja") else []
        et = executorch_cmake_dir()
        et_flags = [f"-Dexecutorch_DIR={et}"] if et else []
        for cmd in ([cmake, "-S", str(src), "-B", str(work), "-DCMAKE_BUILD_TYPE=Release", *gen, *et_flags],
                    [cmake, "--build", str(work), "--parallel", "2"]):
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = (proc.stdout + proc.stderr)[-2000:]
                raise LwdeployError(f"building the native runner failed:\n{tail}", "needs a C++17 compiler (g++ >= 9)")
        staged = work / "out"
        staged.mkdir()
        shutil.copy2(work / BINARY, staged / BINARY)
        try:
            os.replace(staged, out)  # atomic: a concurrent build that won the race is as good as ours
        except OSError:
            if not binary.is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return binary


def runner_capabilities(binary: Path) -> set[str]:
    """Runtimes built into `binary` ("litert", and "executorch" when the wheel was found at build time)."""
    proc = subprocess.run([str(binary), "--capabilities"], capture_output=True, text=True, timeout=30)
    return set(proc.stdout.split()) if proc.returncode == 0 else {"litert"}


def regen_op_names() -> Path:
    from ai_edge_litert import schema_py_generated as schema

    target = runner_source_dir() / "src" / "tflite_op_names.inc"
    target.write_text(op_names_source(schema.BuiltinOperator))
    return target


def op_names_source(builtin_operator) -> str:
    items = sorted((v, k) for k, v in vars(builtin_operator).items() if not k.startswith("_") and isinstance(v, int))
    if [v for v, _ in items] != list(range(len(items))):
        raise RuntimeError("BuiltinOperator codes are not contiguous")
    lines = [
        "// TFLite BuiltinOperator names indexed by op code (= LiteRtOpCode).",
        "// Generated from ai_edge_litert.schema_py_generated.BuiltinOperator by",
        "// `python -m lwdeploy.profiling.build_runner --regen-op-names`; tests/test_profiling_runner.py checks it is current.",
        "static const char* const kTflOpNames[] = {",
        *[f'    "{k}",' for _, k in items],
        "};",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if "--regen-op-names" in sys.argv:
        print(regen_op_names())
    else:
        print(ensure_runner())
