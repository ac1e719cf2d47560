"""The main job end to end through the CLI: artifact + manifest, verified on the host."""

import hashlib
import json

import pytest


def test_export_int8_tflite_and_float_executorch(cli, tmp_path):
    out = tmp_path / "out"
    # ReLU6 network: random weights still give bounded activations, so 16 calibration crops cover the
    # held-out range (MobileNetV3's random head has single outlier logits that few crops cannot calibrate)
    code, stdout, err = cli("export", "mobilenet_v2", "-w", "0.5", "-r", "64", "--int8", "-t", "tflite",
                            "--calib-samples", "16", "--heldout-samples", "8", "--out", out, "--json")
    assert code == 0, err
    assert "scikit-image sample photos" in err  # the calibration source is said on screen
    manifest = json.loads(stdout)
    art = out / "mobilenet_v2_100_w0.5_r64_int8.tflite"
    assert manifest["artifact"]["file"] == art.name
    assert manifest["artifact"]["sha256"] == hashlib.sha256(art.read_bytes()).hexdigest()
    assert json.loads((out / (art.name + ".json")).read_text()) == manifest
    checks = manifest["verification"]["checks"]
    assert manifest["verification"]["ran_on_host"] is True
    assert checks["conv_ops"] > 0 and checks["conv_ops_int8"] == checks["conv_ops"]
    fid = manifest["verification"]["fidelity"]
    # random weights make int8 logits noisy (no trained structure); a broken scale or zero point gives
    # SQNR ≈ 0 dB and cosine ≲ 0.4, which these bounds catch. Real-weight fidelity: tests/test_fidelity.py.
    assert fid["n"] == 8 and 0 <= fid["top1_agreement"] <= 1, fid
    assert fid["sqnr_db"] > 3 and fid["cosine"] > 0.75, fid
    assert manifest["calibration"]["calibration_images"] == 16
    assert manifest["quantization"]["per_channel"] is True
    assert manifest["tools"]["torch"].startswith("2.13")
    # nothing half-written or temporary left behind
    assert sorted(p.name for p in out.iterdir()) == [art.name, art.name + ".json"]

    # two targets: converted in two processes, verified one after the other
    code, stdout, err = cli("export", "mobilenet_v3_small", "-r", "64", "-t", "executorch", "-t", "coreml",
                            "--calib-samples", "8", "--heldout-samples", "8", "--out", out, "--json", "--jobs", "2")
    assert code == 0, err
    assert "(2 processes)" in err
    m, coreml = json.loads(stdout)
    assert coreml["artifact"]["file"].endswith("_fp32.mlpackage") and coreml["verification"]["ran_on_host"] is False
    assert m["artifact"]["file"].endswith("_fp32.pte")
    assert m["verification"]["fidelity"]["max_abs_diff"] < 1e-3  # float export matches PyTorch
    # which blocks lowering rewrote: MobileNetV3-Small's 9 SE hard-sigmoid gates (their +3 folded into a bias)
    gates = m["conversion"]["lowering"]["ScaledReLU6"]
    assert len(gates) == 9 and all(g.endswith("se.gate") for g in gates)
    assert coreml["conversion"].get("lowering", {}) == {}          # Core ML converts the model's own forms
    assert (out / m["artifact"]["file"].replace(".pte", ".etrecord")).exists()
    # per-stage wall/CPU seconds in every manifest (the matrix shows the slowest stage)
    assert m["timings"]["convert"]["to_edge_transform_and_lower"]["cpu_s"] > 0
    assert coreml["timings"]["convert"]["ct_convert"]["wall_s"] > 0
    assert "reference_forward" in m["timings"]["shared"] and "inspect" in coreml["timings"]["verify"]


@pytest.mark.heavy  # ExecuTorch int8 lowering costs ~40 CPU-s even for a tiny graph
def test_int8_executorch_and_coreml_share_one_calibration(cli, tmp_path):
    """int8 ExecuTorch + Core ML: one lowering and one calibrated PT2E program, handed to a worker process for
    Core ML (torch.export.save bytes); both artifacts int8."""
    out = tmp_path / "out"
    code, stdout, err = cli("export", "mobilenet_v2", "-w", "0.5", "-r", "32", "--int8", "-t", "executorch",
                            "-t", "coreml", "--calib-samples", "8", "--heldout-samples", "8", "--out", out, "--json",
                            "--jobs", "2", "--no-etrecord")
    assert code == 0, err
    assert "quantizing once" in err and "handing the calibrated int8 program to a worker" in err
    et, coreml = json.loads(stdout)
    # calibrated once: only ExecuTorch's manifest books the PT2E stages, Core ML's says it shares them
    assert et["timings"]["convert"]["quantize.calibrate"]["cpu_s"] > 0
    assert not any(k.startswith("quantize.") for k in coreml["timings"]["convert"])
    assert "shared" in coreml["quantization"] and coreml["quantization"]["calibration_images"] == 8
    assert et["quantization"]["calibration_images"] == 8
    assert coreml["verification"]["checks"]["int8"] is True
    assert et["verification"]["checks"]["delegates"] == {"XnnpackBackend": 1}
    # random weights at 32 px: int8 logits are noisy; a broken scale or zero point gives cosine ≲ 0.4
    assert et["verification"]["fidelity"]["cosine"] > 0.6, et["verification"]["fidelity"]


def test_keep_float_budget_reaches_the_quantizer(cli, tmp_path):
    code, stdout, err = cli("export", "mobilenet_v2", "-w", "0.5", "-r", "64", "--int8", "-t", "tflite",
                            "--keep-float-budget", "0.2", "--calib-samples", "8", "--heldout-samples", "8",
                            "--out", tmp_path, "--json")
    assert code == 0, err
    budget = json.loads(stdout)["quantization"]["keep_float_budget"]
    assert budget["budget_mac_share"] == 0.2 and 0 <= budget["mac_share"] <= 0.2
    assert json.loads(stdout)["quantization"]["keep_float"] == budget["chosen"]


def test_summary_precision_names_fp16():
    from lwdeploy.commands.export import _precision

    assert _precision({"quantization": {"scheme": "float16 weights (post-training), float32 activations"}}) == "fp16"
    assert _precision({"quantization": {"scheme": "none (float16 compute)"}}) == "fp16"
    assert _precision({"quantization": {"scheme": "int8 static (PT2E)"}, "calibration": {}}) == "int8"
    assert _precision({"quantization": {"scheme": "none (float32)"}}) == "fp32"


@pytest.mark.heavy  # two int8 exports to all three targets (ExecuTorch lowering ~40 CPU-s each)
def test_same_command_twice_gives_identical_artifacts(cli, tmp_path):
    """Reproducibility through the CLI, int8 (calibration order, shared PT2E program, worker processes):
    .tflite, .pte and every file of the .mlpackage are byte-identical; only the ETRecord is not, and its
    manifest says why."""
    from lwdeploy.manifest import sha256_of

    digests = []
    for run in ("a", "b"):
        code, stdout, err = cli("export", "mobilenet_v2", "-w", "0.5", "-r", "32", "--int8", "-t", "all",
                                "--calib-samples", "4", "--heldout-samples", "4", "--out", tmp_path / run, "--json")
        assert code == 0, err
        manifests = json.loads(stdout)
        digests.append({m["artifact"]["file"]: sha256_of(tmp_path / run / m["artifact"]["file"]) for m in manifests})
        assert all(m["artifact"]["sha256"] == digests[-1][m["artifact"]["file"]] for m in manifests)
    assert len(digests[0]) == 3 and digests[0] == digests[1]
    pte = next(m for m in manifests if m["artifact"]["target"] == "executorch")
    assert "id()" in pte["conversion"]["reproducible"][".etrecord"]
