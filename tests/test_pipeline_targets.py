"""--target takes repeated options and comma-separated lists (`--target tflite,executorch,coreml`)."""

from __future__ import annotations

import pytest

from lwdeploy.errors import LwdeployError
from lwdeploy.pipeline import resolve_targets


def test_comma_separated_and_repeated_targets_resolve_in_order_without_duplicates():
    assert resolve_targets(["tflite,executorch", "coreml"]) == ["tflite", "executorch", "coreml"]
    assert resolve_targets([" coreml , tflite ", "tflite"]) == ["coreml", "tflite"]
    assert sorted(resolve_targets(["all,tflite"])) == ["coreml", "executorch", "tflite"]
    assert resolve_targets([]) == ["tflite"]


def test_an_unknown_name_inside_a_list_is_named():
    with pytest.raises(LwdeployError, match="onnxx"):
        resolve_targets(["tflite,onnxx"])


def test_a_session_builds_the_float_side_once_for_both_precisions(tmp_path):
    from lwdeploy.pipeline import export

    kw = dict(resolution=48, calib_samples=4, heldout_samples=4, keep_going=False)
    session: dict = {}
    fp32 = export("mobilenet_v3_small_100", ["tflite"], out_dir=tmp_path / "s", session=session, **kw)[0]
    assert {"build_model", "settle_batchnorm", "reference_forward"} <= set(fp32["timings"]["shared"])
    int8 = export("mobilenet_v3_small_100", ["tflite"], out_dir=tmp_path / "s", int8=True, session=session, **kw)[0]
    assert not {"build_model", "settle_batchnorm", "reference_forward"} & set(int8["timings"]["shared"])
    # the same int8 artifact and fidelity as a run that builds everything itself
    fresh = export("mobilenet_v3_small_100", ["tflite"], out_dir=tmp_path / "f", int8=True, **kw)[0]
    assert int8["artifact"]["sha256"] == fresh["artifact"]["sha256"]
    assert int8["verification"]["fidelity"] == fresh["verification"]["fidelity"]
    # another size is another model: the session is rebuilt, not reused
    other = export("mobilenet_v3_small_100", ["tflite"], out_dir=tmp_path / "o", session=session,
                   **{**kw, "resolution": 64})[0]
    assert "build_model" in other["timings"]["shared"] and session["key"][1] == 64


def test_a_program_its_runtime_cannot_load_is_an_error_and_not_written(tmp_path, monkeypatch):
    """XNNPACK compiles the delegate at load time and can refuse a program the exporter accepted (it did for an
    int8 pad + pool form of DiCENet); such a file must not be left behind as if it were an artifact."""
    pytest.importorskip("executorch", reason="ExecuTorch is not installed")
    from lwdeploy.converters.base import Verification
    from lwdeploy.converters.executorch import ExecuTorchConverter
    from lwdeploy.pipeline import export

    def refuses(self, path, inputs, reference):
        return Verification(False, {"loads": "FAILED: Failed to create StaticConstantPad node (invalid_parameter)"},
                            None, None, [])

    monkeypatch.setattr(ExecuTorchConverter, "verify", refuses)
    kw = dict(resolution=32, calib_samples=2, heldout_samples=2, jobs=1, options={"etrecord": True})
    with pytest.raises(LwdeployError, match=r"cannot load .*StaticConstantPad.*nothing was written"):
        export("mobilenet_v1_025", ["executorch"], out_dir=tmp_path / "a", **kw)
    assert not [p for p in (tmp_path / "a").rglob("*") if p.is_file()]
    # a matrix run (keep_going) records it as that cell's error and goes on
    manifest = export("mobilenet_v1_025", ["executorch"], out_dir=tmp_path / "b", keep_going=True, **kw)[0]
    assert "cannot load" in manifest["error"]
    assert not [p for p in (tmp_path / "b").rglob("*") if p.is_file()]
