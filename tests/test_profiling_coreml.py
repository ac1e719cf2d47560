"""Core ML: the static estimate is labelled as one and counts MACs from the spec correctly."""

import json

import pytest

from lwdeploy.cli import main
from lwdeploy.profiling.report import validate_report
from profiling_fixtures import tiny_net


@pytest.fixture(scope="module")
def tiny_mlpackage(tmp_path_factory):
    ct = pytest.importorskip("coremltools", reason="coremltools is needed to build the test .mlpackage")
    import torch

    model, example = tiny_net()
    ep = torch.export.export(model, example).run_decompositions({})
    path = tmp_path_factory.mktemp("coreml") / "tiny.mlpackage"
    ct.convert(ep, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17).save(str(path))
    return path


def test_coreml_estimate_is_labelled_and_counts_conv_macs(tiny_mlpackage, tmp_path):
    out = tmp_path / "est.json"
    assert main(["profile", str(tiny_mlpackage), "--out", str(out)]) == 0
    report = validate_report(json.loads(out.read_text()))
    assert report["kind"] == "estimate" and report["device"]["runtime"] == "coreml"
    assert any("ESTIMATE" in n for n in report["notes"])
    convs = [l for l in report["layers"] if l["op_type"] == "conv"]
    assert len(convs) == 4
    # stem: 16 x 32 x 32 outputs, each 3 x 3 x 3 MACs; blocks.0: 32 x 32 x 32 outputs, 16 x 3 x 3 each
    assert convs[0]["kernels"][0].startswith(f"{16 * 32 * 32 * 27} MACs")
    assert convs[1]["kernels"][0].startswith(f"{32 * 32 * 32 * 16 * 9} MACs")
    assert report["total_ms"]["p50"] == pytest.approx(sum(l["ms"]["p50"] for l in report["layers"]))
    assert "static estimate" in out.with_suffix(".html").read_text()


def test_coreml_cannot_go_over_adb(tiny_mlpackage, capsys):
    assert main(["profile", str(tiny_mlpackage), "--device", "SERIAL1"]) == 2
    assert "Apple" in capsys.readouterr().err
