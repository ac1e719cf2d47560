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
