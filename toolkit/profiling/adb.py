"""Profile on an Android phone over adb: push the native runner, the runtime libraries (libLiteRt.so, or the
ExecuTorch .so files) and the artifact to /data/local/tmp, run, pull the report (and ETDump), clean up.

Talks to the adb server through `adbutils` (default 127.0.0.1:5037, or $ANDROID_ADB_SERVER_PORT). The phone needs
the runner cross-built for its ABI (android_app/runner/README.md) and LiteRT's Android libLiteRt.so: pass them as
`runner=`/`litert_lib=` or $LWDEPLOY_ANDROID_RUNNER / $LWDEPLOY_ANDROID_LITERT (and, for .pte, a folder of
ExecuTorch .so files built for the phone in $LWDEPLOY_ANDROID_EXECUTORCH_LIBS). A device whose ABI is the host's
(an x86_64 test device) gets the host-built runner and the wheel's library.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import time
import uuid
from pathlib import Path

from ..errors import LwdeployError
from .report import validate_report

REMOTE_ROOT = "/data/local/tmp"
HOST_ABI = {"x86_64": "x86_64", "AMD64": "x86_64", "aarch64": "arm64-v8a", "arm64": "arm64-v8a"}.get(platform.machine(), "")


class DeviceGone(LwdeployError):
    pass


class AdbProfiler:
    def __init__(self, serial: str | None = None, *, host: str = "127.0.0.1", port: int | None = None,
                 runner: str | Path | None = None, litert_lib: str | Path | None = None,
                 timeout: float = 300.0, retries: int = 3):
        import adbutils

        self.port = int(port or os.environ.get("ANDROID_ADB_SERVER_PORT", 5037))
        self.client = adbutils.AdbClient(host=host, port=self.port, socket_timeout=30)
        self.serial = serial
        self.runner = runner or os.environ.get("LWDEPLOY_ANDROID_RUNNER")
        self.litert_lib = litert_lib or os.environ.get("LWDEPLOY_ANDROID_LITERT")
        self.timeout = timeout
        self.retries = retries

    # ---- devices ----
    def serials(self) -> list[str]:
        try:
            return [d.serial for d in self.client.device_list()]
        except Exception as e:  # the adb server itself is unreachable
            raise LwdeployError(f"cannot reach the adb server on 127.0.0.1:{self.port} ({e})",
                                "start it with `adb start-server`, or set ANDROID_ADB_SERVER_PORT") from None

    def device(self):
        serials = self.serials()
        if not serials:
            raise LwdeployError("no Android device is connected", "plug one in and allow USB debugging (`adb devices`)")
        if self.serial is None:
            if len(serials) > 1:
                raise LwdeployError(f"{len(serials)} devices connected", f"pass --device one of {', '.join(serials)}")
            self.serial = serials[0]
        if self.serial not in serials:
            raise LwdeployError(f"device '{self.serial}' is not connected", f"connected: {', '.join(serials)}")
        return self.client.device(serial=self.serial)

    def _gone_or(self, err: Exception, doing: str) -> LwdeployError:
        try:
            present = self.serial in [d.serial for d in self.client.device_list()]
        except Exception:
            present = False
        if not present:
            return DeviceGone(f"device {self.serial} disconnected while {doing}",
                              "reconnect it and rerun; no report was written")
        return LwdeployError(f"adb failed while {doing}: {err}", "check the cable / `adb devices`; no report was written")

    def _retry(self, doing: str, fn):
        last: Exception | None = None
        for attempt in range(self.retries):
            try:
                return fn()
            except LwdeployError:
                raise
            except Exception as e:  # adbutils.AdbError, AdbTimeout, socket errors
                last = e
                err = self._gone_or(e, doing)
                if isinstance(err, DeviceGone):
                    raise err from None
                time.sleep(0.2 * (attempt + 1))
        raise self._gone_or(last, doing) from None

    # ---- profiling ----
    def _host_abi_device(self, dev) -> tuple[bool, str]:
        abi = self._retry("reading the device ABI", lambda: dev.shell("getprop ro.product.cpu.abi", timeout=30)).strip()
        return bool(abi) and abi == HOST_ABI, abi

    def _payload(self, dev, runtime: str) -> tuple[Path, list[Path]]:
        """The runner and the runtime libraries to push, for the device's ABI."""
        et_libs = os.environ.get("LWDEPLOY_ANDROID_EXECUTORCH_LIBS")
        if self.runner and (self.litert_lib if runtime == "litert" else et_libs):
            libs = [Path(self.litert_lib)] if runtime == "litert" else sorted(Path(et_libs).glob("*.so"))
            return Path(self.runner), libs
        same_abi, abi = self._host_abi_device(dev)
        if not same_abi:
            need = "LWDEPLOY_ANDROID_LITERT" if runtime == "litert" else "LWDEPLOY_ANDROID_EXECUTORCH_LIBS"
            raise LwdeployError(f"device {self.serial} is {abi or 'of unknown ABI'}: it needs the runner cross-built "
                                "for it", f"build it with the NDK (android_app/runner/README.md) and set "
                                f"LWDEPLOY_ANDROID_RUNNER and {need}")
        from .build_runner import ensure_runner, executorch_cmake_dir, runner_capabilities
        from .profile import litert_library

        runner = Path(self.runner) if self.runner else ensure_runner()
        if runtime == "litert":
            return runner, [Path(self.litert_lib or litert_library())]
        if "executorch" not in runner_capabilities(runner):
            raise LwdeployError("the runner was built without ExecuTorch", "install the executorch wheel and rebuild")
        return runner, sorted((executorch_cmake_dir().parents[1] / "lib").glob("*.so"))

    def profile(self, artifact: str | Path, *, runs: int = 50, warmup: int = 10, threads: int = 1,
                etrecord: str | Path | None = None) -> dict:
        from .profile import package_version, runner_command, runtime_of

        artifact = Path(artifact)
        runtime = runtime_of(artifact)
        if runtime not in ("litert", "executorch"):
            raise LwdeployError(f"{runtime} artifacts cannot be profiled over adb", "use --device host")
        if runtime == "executorch":
            from .executorch_host import find_etrecord

            etrecord = find_etrecord(artifact, etrecord)  # fail before touching the device
        dev = self.device()
        runner, libs = self._payload(dev, runtime)
        remote = f"{REMOTE_ROOT}/lwdeploy-{uuid.uuid4().hex[:8]}"
        r_runner, r_model, r_out, r_dump = (f"{remote}/lwdeploy-runner", f"{remote}/{artifact.name}",
                                            f"{remote}/report.json", f"{remote}/run.etdp")
        try:
            self._retry("creating the work folder", lambda: self._sh(dev, f"mkdir -p {shlex.quote(remote)}", 30))
            self._retry("pushing the runner", lambda: dev.sync.push(str(runner), r_runner, mode=0o755))
            for lib in libs:
                self._retry(f"pushing {lib.name}", lambda lib=lib: dev.sync.push(str(lib), f"{remote}/{lib.name}",
                                                                               mode=0o644))
            self._retry("pushing the artifact", lambda: dev.sync.push(str(artifact), r_model, mode=0o644))
            if runtime == "litert":
                cmd = runner_command(r_runner, r_model, f"{remote}/{libs[0].name}", r_out, runs=runs, warmup=warmup,
                                     threads=threads, runtime_version=package_version("ai-edge-litert"),
                                     artifact_name=str(artifact))
            else:
                cmd = [r_runner, "--runtime", "executorch", "--model", r_model, "--etdump", r_dump, "--out", r_out,
                       "--runs", str(runs), "--warmup", str(warmup), "--threads", str(threads),
                       "--runtime-version", package_version("executorch"), "--artifact-name", str(artifact)]
            line = f"cd {shlex.quote(remote)} && LD_LIBRARY_PATH={shlex.quote(remote)} " + shlex.join(cmd)
            try:
                result = dev.shell2(line, timeout=self.timeout)
            except Exception as e:  # one attempt only: re-running a half-finished profile is not a retry
                raise self._gone_or(e, "the runner was running") from None
            if result.returncode != 0:
                msg = [l for l in result.output.splitlines() if l.startswith("lwdeploy-runner:")]
                raise LwdeployError(f"the runner failed on device {self.serial} (exit {result.returncode}): "
                                    f"{msg[-1] if msg else result.output[-400:]}", "see the message above")
            raw = self._retry("pulling the report", lambda: dev.sync.read_bytes(r_out))
            dump = self._retry("pulling the ETDump", lambda: dev.sync.read_bytes(r_dump)) \
                if runtime == "executorch" else None
        finally:
            try:
                self._sh(dev, f"rm -rf {shlex.quote(remote)}", 30)
            except Exception:
                pass  # best effort: a vanished device cannot be cleaned
        try:
            report = json.loads(raw)
        except ValueError:
            raise LwdeployError(f"the report pulled from {self.serial} is not JSON", "no report was written") from None
        if runtime == "executorch":
            import tempfile

            from .executorch_host import finish_report

            with tempfile.TemporaryDirectory(prefix="lwdeploy-etdump-") as tmp:
                (Path(tmp) / "run.etdp").write_bytes(dump)
                return finish_report(report, Path(tmp) / "run.etdp", etrecord)
        return validate_report(report)

    @staticmethod
    def _sh(dev, line: str, timeout: float) -> str:
        res = dev.shell2(line, timeout=timeout)
        if res.returncode != 0:
            raise LwdeployError(f"`{line}` failed on the device: {res.output.strip()[-300:]}")
        return res.output
