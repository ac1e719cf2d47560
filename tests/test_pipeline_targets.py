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
