"""Report schema, statistics, kernel alignment and the HTML/compare pages (no runtime needed)."""

import copy
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from lwdeploy.cli import cli, main
from lwdeploy.errors import LwdeployError
from lwdeploy.profiling.align import align_kernels, kernel_can_implement
from lwdeploy.profiling.html import compare_html, report_html
from lwdeploy.profiling.report import by_module, coverage, percentiles, validate_report


def _report(runtime="litert", model="Pixel 8", scale=1.0):
    layers = [
        {"name": "#0 CONV_2D", "op_type": "CONV_2D", "module": "stem.conv", "compute_unit": "CPU (XNNPACK)",
         "ms": {"p10": 0.9 * scale, "p50": 1.0 * scale, "p90": 1.2 * scale}},
        {"name": "#1 ADD", "op_type": "ADD", "module": "blocks.0.add", "compute_unit": "CPU (XNNPACK)",
         "ms": {"p10": 0.4 * scale, "p50": 0.5 * scale, "p90": 0.6 * scale}},
        {"name": "#2 TRANSPOSE", "op_type": "TRANSPOSE", "module": None, "compute_unit": "CPU (XNNPACK)",
         "ms": {"p10": 0.05, "p50": 0.1, "p90": 0.2}},
    ]
    return {"schema_version": "1.0", "kind": "measured",
            "device": {"model": model, "os": "Android 15", "abi": "arm64-v8a", "runtime": runtime,
                       "runtime_version": "2.3.0"},
            "artifact": {"path": "m.tflite", "sha256": "a" * 64}, "threads": 1, "delegate": "xnnpack",
            "warmup_runs": 2, "runs": 10, "total_ms": {"p10": 1.5, "p50": 1.7 * scale, "p90": 2.0 * scale},
            "layers": layers}


def test_valid_report_passes_and_broken_ones_fail():
    validate_report(_report())
    for mutate in (lambda r: r.pop("layers"), lambda r: r["layers"][0].pop("module"),
                   lambda r: r["artifact"].update(sha256="xyz"), lambda r: r["device"].update(runtime="tensorrt"),
                   lambda r: r["total_ms"].pop("p90"), lambda r: r.update(runs=0)):
        bad = copy.deepcopy(_report())
        mutate(bad)
        with pytest.raises(LwdeployError, match="schema"):
            validate_report(bad)


def test_percentiles_match_numpy():
    rng = np.random.default_rng(0)
    xs = rng.gamma(2.0, 1.0, size=37)
    p = percentiles(xs)
    assert p["p10"] == pytest.approx(np.percentile(xs, 10))
    assert p["p50"] == pytest.approx(np.percentile(xs, 50))
    assert p["p90"] == pytest.approx(np.percentile(xs, 90))


def test_coverage_and_grouping():
    r = _report()
    cov = coverage(r)
    assert cov["layers_over_total"] == pytest.approx(1.6 / 1.7)
    assert cov["named_fraction"] == pytest.approx(1.5 / 1.6)
    assert by_module(r, depth=1)[0] == ("stem", pytest.approx(1.0))


def test_alignment_follows_order_and_kind():
    kernels = ["Transpose (ND, X32)", "Convolution (NHWC, F32) IGEMM", "Clamp (NC)", "Convolution (NHWC, F32) DWConv",
               "Add (ND)", "Fully Connected (NC, F32) GEMM"]
    ops = ["aten_convolution_default", "aten__native_batch_norm_legit_no_training_default", "aten_relu_default",
           "aten_convolution_default", "aten_add_tensor", "aten_linear_default"]
    owner = align_kernels(kernels, ops)
    assert owner == [0, 0, 2, 3, 4, 5]  # the inserted transpose goes with the op it feeds
    assert kernel_can_implement("Fully Connected (NC, QS8, QC8W) GEMM", "CONV_2D")
    assert not kernel_can_implement("Add (ND)", "aten_convolution_default")


def test_html_is_self_contained_and_names_modules():
    page = report_html(_report())
    assert "<svg" in page and "stem" in page and "blocks.0" in page
    assert not re.search(r"(src|href)=\"https?://", page)  # nothing fetched from anywhere
    cmp_page = compare_html([_report(), _report("executorch", "host", 2.0)], ["a", "b"])
    assert cmp_page.count("<rect") >= 4


def test_compare_cli_prints_side_by_side_table(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_report()))
    b.write_text(json.dumps(_report("executorch", "host", 2.0)))
    res = CliRunner().invoke(cli, ["compare", str(a), str(b), "--depth", "1"])
    assert res.exit_code == 0, res.output
    line = next(l for l in res.output.splitlines() if l.startswith("stem"))
    assert [float(x) for x in line.split()[1:]] == [1.0, 2.0]
    assert (tmp_path / "compare.html").is_file()


def test_compare_rejects_invalid_report_with_one_line(tmp_path, capsys):
    a = tmp_path / "a.json"
    a.write_text(json.dumps({"schema_version": "1.0"}))
    assert main(["compare", str(a), str(a)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: report does not match the schema") and "Traceback" not in err


def test_compare_by_kernel_class_lines_up_float_and_int8(tmp_path):
    """'Convolution (NHWC, F32) DWConv' and '… (NHWC, QC8) DWConv' are one row: where int8 did (not) pay off."""
    from lwdeploy.profiling.report import by_kernel, kernel_class

    def rep(dtype, dw_ms, gemm_ms):
        r = _report("executorch", "host")
        r["layers"] = [
            {"name": "#0", "op_type": "aten_convolution_default", "module": "blocks.0.dw", "compute_unit": "CPU",
             "kernels": [f"Convolution (NHWC, {dtype}) DWConv"], "ms": {"p10": dw_ms, "p50": dw_ms, "p90": dw_ms}},
            {"name": "#1", "op_type": "aten_convolution_default", "module": "blocks.0.pw", "compute_unit": "CPU",
             "kernels": [f"Fully Connected (NC, {dtype}) GEMM"], "ms": {"p10": gemm_ms, "p50": gemm_ms, "p90": gemm_ms}},
            {"name": "#2", "op_type": "aten_convolution_default", "module": "blocks.1.dw", "compute_unit": "CPU",
             "kernels": [f"Convolution (NHWC, {dtype}) DWConv"], "ms": {"p10": dw_ms, "p50": dw_ms, "p90": dw_ms}},
            {"name": "#3", "op_type": "ADD", "module": None, "compute_unit": "CPU", "ms": {"p10": 0, "p50": 0.1, "p90": 0}},
        ]
        return r

    assert kernel_class({"kernels": ["Convert (NC)", "Transpose (ND, X8)"]}) == "Convert + Transpose"
    assert by_kernel(rep("QC8", 0.5, 0.25))[0] == ("Convolution DWConv", 1.0)
    a, b = tmp_path / "f.json", tmp_path / "q.json"
    a.write_text(json.dumps(rep("F32", 0.6, 1.0)))
    b.write_text(json.dumps(rep("QC8", 0.5, 0.25)))
    res = CliRunner().invoke(cli, ["compare", str(a), str(b), "--by", "kernel", "--html", str(tmp_path / "k.html")])
    assert res.exit_code == 0, res.output
    rows = {l.rsplit(None, 2)[0].strip(): [float(x) for x in l.split()[-2:]] for l in res.output.splitlines()
            if l.startswith(("Convolution", "Fully", "ADD"))}
    assert rows == {"Convolution DWConv": [1.2, 1.0], "Fully Connected GEMM": [1.0, 0.25], "ADD": [0.1, 0.1]}
    assert "per kernel class" in (tmp_path / "k.html").read_text()
