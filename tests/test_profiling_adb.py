"""The adb path against a fake adb server on loopback: the same AdbProfiler/adbutils code a phone would see."""

import hashlib
import json

import pytest

from fake_adb import FakeAdbServer
from lwdeploy.cli import main
from lwdeploy.errors import LwdeployError
from lwdeploy.profiling.adb import AdbProfiler, DeviceGone
from lwdeploy.profiling.report import validate_report
from profiling_fixtures import tiny_pte, tiny_tflite  # noqa: F401


@pytest.fixture(scope="module", autouse=True)
def host_runner():
    from lwdeploy.profiling.build_runner import ensure_runner, find_cmake, find_compiler

    if find_cmake() is None or find_compiler() is None:
        pytest.skip("the fake device runs the host-built runner: needs cmake and a C++17 compiler")
    return ensure_runner()


@pytest.fixture
def fake(tmp_path):
    with FakeAdbServer(tmp_path / "device") as server:
        yield server


def test_profile_over_adb_pushes_runs_pulls_and_cleans_up(fake, tiny_tflite):
    path, model = tiny_tflite
    report = AdbProfiler("FAKE0001", port=fake.port).profile(path, runs=5, warmup=1)
    validate_report(report)
    assert report["artifact"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert report["runs"] == 5 and report["layers"]
    assert any("lwdeploy-runner --runtime litert" in c for c in fake.commands)
    assert any(c.startswith("rm -rf /data/local/tmp/lwdeploy-") for c in fake.commands)
    assert list((fake.root / "data/local/tmp").iterdir()) == []  # nothing left on the device


def test_cli_profile_with_serial_writes_valid_report(fake, tiny_tflite, tmp_path, monkeypatch):
    path, _ = tiny_tflite
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(fake.port))
    out = tmp_path / "phone.json"
    assert main(["profile", str(path), "--device", "FAKE0001", "--runs", "3", "--warmup", "1", "--out", str(out)]) == 0
    validate_report(json.loads(out.read_text()))
    assert out.with_suffix(".html").is_file()


def test_device_vanishing_mid_run_gives_clear_error_and_no_report(fake, tiny_tflite, tmp_path, monkeypatch, capsys):
    path, _ = tiny_tflite
    fake.vanish_on = "lwdeploy-runner --runtime"
    with pytest.raises(DeviceGone, match="disconnected"):
        AdbProfiler("FAKE0001", port=fake.port, retries=2).profile(path, runs=3, warmup=1)
    fake.online = True
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(fake.port))
    out = tmp_path / "never.json"
    assert main(["profile", str(path), "--device", "FAKE0001", "--runs", "3", "--out", str(out)]) == 2
    assert "disconnected" in capsys.readouterr().err
    assert not out.exists() and not out.with_suffix(".html").exists()


def test_unknown_serial_and_foreign_abi_are_user_errors(fake, tiny_tflite, tmp_path):
    path, _ = tiny_tflite
    with pytest.raises(LwdeployError, match="not connected"):
        AdbProfiler("NOPE", port=fake.port).profile(path)
    with FakeAdbServer(tmp_path / "arm", serial="ARM1", abi="arm64-v8a") as arm:
        with pytest.raises(LwdeployError, match="cross-built"):
            AdbProfiler("ARM1", port=arm.port, runner=None, litert_lib=None).profile(path)


def test_no_adb_server_is_a_user_error(tiny_tflite):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(LwdeployError, match="adb server"):
        AdbProfiler("X", port=port).profile(tiny_tflite[0])


def test_flaky_push_is_retried(fake, tiny_tflite):
    fake.flaky_sends = 1
    report = AdbProfiler("FAKE0001", port=fake.port, retries=3).profile(tiny_tflite[0], runs=3, warmup=1)
    validate_report(report)
    assert fake.sends == 4  # runner (twice), library, model


def test_hanging_runner_times_out_with_a_clear_error(fake, tiny_tflite):
    fake.hang_on = "lwdeploy-runner --runtime"
    with pytest.raises(LwdeployError, match="while the runner was running"):
        AdbProfiler("FAKE0001", port=fake.port, timeout=2).profile(tiny_tflite[0], runs=3, warmup=1)


def test_pte_over_adb_pushes_executorch_runtime_and_maps_etdump(fake, tiny_pte, host_runner):
    from lwdeploy.profiling.build_runner import runner_capabilities

    if "executorch" not in runner_capabilities(host_runner):
        pytest.skip("the host runner was built without ExecuTorch (executorch wheel not found at build time)")
    path, model = tiny_pte
    report = AdbProfiler("FAKE0001", port=fake.port).profile(path, runs=4, warmup=1)
    assert report["device"]["runtime"] == "executorch" and report["producer"].startswith("lwdeploy-runner (native")
    assert {l["module"] for l in report["layers"] if l["module"]} <= {n for n, _ in model.named_modules()}
    assert any(c.startswith("rm -rf") for c in fake.commands)
    assert list((fake.root / "data/local/tmp").iterdir()) == []
