"""The native runner, built here, profiling a real .tflite on the host; and the ExecuTorch host harness."""

import hashlib
import json
import subprocess

import pytest

from lwdeploy.cli import main
from lwdeploy.profiling.report import coverage, validate_report
from profiling_fixtures import tiny_pte, tiny_tflite  # noqa: F401  (session fixtures)


@pytest.fixture(scope="module")
def runner():
    from lwdeploy.profiling.build_runner import ensure_runner, find_cmake, find_compiler

    if find_cmake() is None or find_compiler() is None:
        pytest.skip("building the native runner needs cmake and a C++17 compiler (apt-get install cmake g++)")
    return ensure_runner()


def test_op_name_table_matches_installed_litert():
    schema = pytest.importorskip("ai_edge_litert.schema_py_generated")
    from lwdeploy.profiling.build_runner import op_names_source, runner_source_dir

    committed = (runner_source_dir() / "src" / "tflite_op_names.inc").read_text()
    assert committed == op_names_source(schema.BuiltinOperator), "run build_runner --regen-op-names"


@pytest.mark.parametrize("name, module", [
    ("pkg.Net/torch.nn.modules.container.Sequential_blocks/pkg.Block_0/torch.nn.modules.conv.Conv2d_conv;1",
     "blocks.0.conv"),
    ("pkg.Net/pkg.Block_stem/torch.nn.modules.batchnorm.BatchNorm2d_bn;;pkg.Net/pkg.Block_stem/torch.nn.modules.conv.Conv2d_conv;1",
     "stem"),  # a fused conv+bn names its parent layer
    ("pkg.Net/pkg.Block_stem/pkg.Act_act_fn;", "stem.act_fn"),  # attributes may contain "_"
    # a depthwise conv fused with its ReLU, whose name also carries the producer of its input
    ("N/S_blocks/G_ghost1/C_cheap/R_act;;N/S_blocks/G_ghost1/C_primary/R_act;;N/S_blocks/G_ghost1/C_cheap/K_conv;",
     "blocks.ghost1.cheap"),
    # the same names as lwdeploy's exports write them (converters/tflite_pack.py module_path_name)
    ("/blocks.0.conv;1", "blocks.0.conv"),
    ("/stem.bn;;/stem.conv;1", "stem"),
    ("/stem.act_fn;", "stem.act_fn"),
    ("/blocks.ghost1.cheap.act;;/blocks.ghost1.primary.act;;/blocks.ghost1.cheap.conv;", "blocks.ghost1.cheap"),
    ("/;2", "null"),
    ("arith.constant3", "null"),
    ("serving_default_output_0_output", "null"),
    ("torch.export._trace._non_strict_export.<locals>.Wrapper;3", "null"),
])
def test_runner_maps_tensor_names_to_modules(runner, name, module):
    out = subprocess.run([str(runner), "--module-of", name], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == module


def test_runner_reads_repacked_names_as_the_originals(runner):
    from lwdeploy.converters.tflite_pack import module_path_name

    names = ["pkg.Net/torch.nn.modules.container.Sequential_blocks/pkg.Block_0/torch.nn.modules.conv.Conv2d_conv;1",
             "pkg.Net/pkg.Block_stem/torch.nn.modules.batchnorm.BatchNorm2d_bn;;pkg.Net/pkg.Block_stem/C_conv;1",
             "N/S_blocks/G_ghost1/C_cheap/R_act;;N/S_blocks/G_ghost1/C_primary/R_act;;N/S_blocks/G_ghost1/C_cheap/K_conv;"]
    for name in names:
        short = module_path_name(name)
        assert short.startswith("/") and len(short) < len(name)
        mapped = [subprocess.run([str(runner), "--module-of", n], capture_output=True, text=True,
                                 check=True).stdout.strip() for n in (name, short)]
        assert mapped[0] == mapped[1] != "null"


def test_runner_rejects_bad_arguments_without_writing(runner, tmp_path):
    out = tmp_path / "r.json"
    res = subprocess.run([str(runner), "--runtime", "litert", "--model", "x.tflite", "--out", str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "--lib" in res.stderr and not out.exists()


def test_host_litert_profile_is_real_and_maps_modules(runner, tiny_tflite, tmp_path, capsys):
    path, model = tiny_tflite
    out = tmp_path / "tiny.json"
    assert main(["profile", str(path), "--runs", "15", "--warmup", "3", "--out", str(out)]) == 0
    report = validate_report(json.loads(out.read_text()))
    assert report["artifact"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert report["device"]["runtime"] == "litert" and report["runs"] == 15
    modules = {n for n, _ in model.named_modules()}
    named = [l["module"] for l in report["layers"] if l["module"]]
    assert named and set(named) <= modules, set(named) - modules
    assert {"stem", "fc"} <= {m.split(".")[0] for m in named}
    cov = coverage(report)
    assert cov["named_fraction"] >= 0.9
    # kernel times happen inside the timed run: their per-run sum cannot exceed it
    assert 0 < report["layers_sum_ms"]["p50"] <= report["total_ms"]["p50"] * 1.02 + 0.01
    assert out.with_suffix(".html").read_text().count("<rect") >= 3


def test_profile_user_mistakes_are_one_line_errors(runner, tmp_path, capsys):
    assert main(["profile", str(tmp_path / "missing.tflite")]) == 2
    (tmp_path / "m.onnx").write_bytes(b"x")
    assert main(["profile", str(tmp_path / "m.onnx")]) == 2
    (tmp_path / "bad.tflite").write_bytes(b"not a model")
    assert main(["profile", str(tmp_path / "bad.tflite"), "--runs", "1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 3


def test_host_executorch_profile_maps_delegate_kernels(tiny_pte, tmp_path):
    path, model = tiny_pte
    out = tmp_path / "tiny_pte.json"
    assert main(["profile", str(path), "--runs", "10", "--warmup", "2", "--out", str(out)]) == 0
    report = validate_report(json.loads(out.read_text()))
    assert report["device"]["runtime"] == "executorch"
    from lwdeploy.profiling.build_runner import ensure_runner, runner_capabilities

    if "executorch" in runner_capabilities(ensure_runner()):  # the run happened in the native runner
        assert report["producer"].startswith("lwdeploy-runner (native ExecuTorch)")
    named = [l["module"] for l in report["layers"] if l["module"]]
    assert set(named) <= {n for n, _ in model.named_modules()}
    assert coverage(report)["named_fraction"] >= 0.9
    assert any(l["module"] == "stem.conv" and l["op_type"].startswith("aten_convolution") for l in report["layers"])
    assert report["layers_sum_ms"]["p50"] <= report["total_ms"]["p50"] * 1.02 + 0.01


def test_executorch_without_etrecord_says_how_to_fix(tiny_pte, tmp_path, capsys):
    path, _ = tiny_pte
    lone = tmp_path / "lone.pte"
    lone.write_bytes(path.read_bytes())
    assert main(["profile", str(lone), "--runs", "1"]) == 2
    assert "ETRecord" in capsys.readouterr().err


@pytest.mark.parametrize("threads", [1, 2])
def test_host_executorch_profile_runs_with_the_threads_it_reports(tiny_pte, tmp_path, threads):
    # XNNPACK's threadpool defaults to every core: before the runner reset it, `--threads 1` reports ran on 2
    path, _ = tiny_pte
    out = tmp_path / f"tiny_{threads}.json"
    assert main(["profile", str(path), "--runs", "2", "--warmup", "0", "--threads", str(threads),
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["threads"] == threads
