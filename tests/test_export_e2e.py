"""The main job end to end through the CLI: artifact + manifest, verified on the host."""

import hashlib
import json


def test_export_int8_tflite_and_float_executorch(cli, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = cli("export", "mobilenet_v3_small", "-r", "64", "--int8", "-t", "tflite",
                            "--calib-samples", "8", "--heldout-samples", "8", "--out", out, "--json")
    assert code == 0, err
    assert "scikit-image sample photos" in err  # the calibration source is said on screen
    manifest = json.loads(stdout)
    art = out / "mobilenet_v3_small_100_r64_int8.tflite"
    assert manifest["artifact"]["file"] == art.name
    assert manifest["artifact"]["sha256"] == hashlib.sha256(art.read_bytes()).hexdigest()
    assert json.loads((out / (art.name + ".json")).read_text()) == manifest
    checks = manifest["verification"]["checks"]
    assert manifest["verification"]["ran_on_host"] is True
    assert checks["conv_ops"] > 0 and checks["conv_ops_int8"] == checks["conv_ops"]
    fid = manifest["verification"]["fidelity"]
    assert fid["n"] == 8 and 0 <= fid["top1_agreement"] <= 1 and fid["cosine"] > 0.5
    assert manifest["calibration"]["calibration_images"] == 8
    assert manifest["quantization"]["per_channel"] is True
    assert manifest["tools"]["torch"].startswith("2.13")
    # nothing half-written or temporary left behind
    assert sorted(p.name for p in out.iterdir()) == [art.name, art.name + ".json"]

    code, stdout, err = cli("export", "mobilenet_v3_small", "-r", "64", "-t", "executorch",
                            "--calib-samples", "8", "--heldout-samples", "8", "--out", out, "--json")
    assert code == 0, err
    m = json.loads(stdout)
    assert m["artifact"]["file"].endswith("_fp32.pte")
    assert m["verification"]["fidelity"]["max_abs_diff"] < 1e-3  # float export matches PyTorch
    assert (out / m["artifact"]["file"].replace(".pte", ".etrecord")).exists()
