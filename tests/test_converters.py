"""Real conversions of a tiny net to every target, float and int8, verified on the host.

Fidelity bounds are on logits (SQNR, cosine): top-1 agreement with random weights and random inputs is
not a meaningful number. The zoo-model versions of these checks are marked heavy.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import tiny_convnet as tiny
from torch import nn

from lwdeploy.converters import TARGETS, get_converter
from lwdeploy.converters.base import ExportRequest
from lwdeploy.errors import LwdeployError

N_HELDOUT = 16
LABELS = [f"class_{i}" for i in range(tiny.CLASSES)]


@pytest.fixture(scope="module")
def net():
    return tiny.build()


@pytest.fixture(scope="module")
def data(net):
    x = tiny.images(N_HELDOUT, seed=1)
    with torch.no_grad():
        ref = net(x)
    calib = list(tiny.images(16, seed=2).split(1))
    return x, ref, calib


_CACHE: dict = {}


def export(target: str, int8: bool, net, data, tmp_dir: Path, **options):
    """Convert + verify once per (target, int8, options) for the whole module."""
    key = (target, int8, tuple(sorted(options.items())))
    if key not in _CACHE:
        x, ref, calib = data
        conv = get_converter(target)
        out = tmp_dir / f"tiny_{target}_{'int8' if int8 else 'fp32'}_{len(_CACHE)}{conv.suffix}"
        req = ExportRequest(net, x[:1].clone(), tiny.INFO, out, int8=int8, calib=calib if int8 else [],
                            labels=LABELS, options=options)
        result = conv.convert(req)
        _CACHE[key] = (result, conv.verify(result.path, x, ref))
    return _CACHE[key]


@pytest.fixture(scope="module")
def tmp_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("converters")


# ---------------------------------------------------------------- the table


def test_targets_table_rows_are_complete():
    assert set(TARGETS) == {"tflite", "executorch", "coreml"}
    suffixes = {t.name: t.suffix for t in TARGETS.values()}
    assert suffixes == {"tflite": ".tflite", "executorch": ".pte", "coreml": ".mlpackage"}
    for t in TARGETS.values():
        assert t.title and t.description and ":" in t.module
        assert t.int8
        for opt in t.options:
            assert isinstance(opt.default, opt.type), (t.name, opt.key)
    assert TARGETS["coreml"].runs_on_host is False
    assert TARGETS["tflite"].runs_on_host and TARGETS["executorch"].runs_on_host


def test_unknown_target_names_close_match():
    with pytest.raises(LwdeployError) as e:
        get_converter("tflight")
    assert "tflight" in str(e.value) and "tflite" in (e.value.hint or "")


# ---------------------------------------------------------------- TFLite


def test_tflite_float_matches_pytorch_and_stores_metadata(net, data, tmp_dir):
    from lwdeploy.converters.inspect_tflite import read_metadata

    result, ver = export("tflite", False, net, data, tmp_dir)
    assert result.path.is_file() and result.path.suffix == ".tflite" and result.seconds > 0
    assert ver.ran_on_host
    assert ver.fidelity["n"] == N_HELDOUT
    assert ver.fidelity["max_abs_diff"] < 1e-3 and ver.fidelity["top1_agreement"] == 1.0
    assert ver.checks["inputs"][0]["shape"] == [1, 3, tiny.RES, tiny.RES]
    assert ver.checks["inputs"][0]["dtype"] == "float32"
    assert ver.checks["outputs"][0]["shape"] == [1, tiny.CLASSES]
    assert ver.checks["conv_ops"] == 7 and ver.checks["conv_ops_int8"] == 0
    assert ver.latency_ms["p50"] > 0 and ver.latency_ms["p10"] <= ver.latency_ms["p50"] <= ver.latency_ms["p90"]
    meta = read_metadata(result.path)
    assert meta["labels"] == LABELS and meta["input"]["mean"] == list(tiny.INFO.mean)


def test_tflite_int8_runs_convolutions_in_int8(net, data, tmp_dir):
    result, ver = export("tflite", True, net, data, tmp_dir)
    q = result.quantization
    assert q["per_channel"] and q["static"] and q["calibration_images"] == 16
    assert "PT2EQuantizer" in q["quantizer"]
    checks = ver.checks
    assert checks["conv_ops"] == 7
    assert checks["conv_ops_int8"] == checks["conv_ops"], checks["float_convs"]
    assert all(checks["fully_connected_int8"])
    assert checks["inputs"][0]["dtype"] == "int8" and "quantization" in checks["inputs"][0]
    assert ver.latency_ms["warmup"] >= 100
    # logits-level fidelity: a broken scale/zero-point gives SQNR near 0 dB or below
    assert ver.fidelity["sqnr_db"] > 15, ver.fidelity
    assert ver.fidelity["cosine"] > 0.98, ver.fidelity


def test_tflite_nhwc_input_has_no_layout_transpose(net, data, tmp_dir):
    _, plain = export("tflite", False, net, data, tmp_dir)
    result, ver = export("tflite", False, net, data, tmp_dir, nhwc=True)
    assert ver.checks["inputs"][0]["shape"] == [1, tiny.RES, tiny.RES, 3]
    assert ver.checks["transpose"] < plain.checks["transpose"] or plain.checks["transpose"] == 0
    assert ver.checks["transpose"] == 0, ver.checks["op_histogram"]
    assert ver.fidelity["max_abs_diff"] < 1e-3
    assert any("NHWC" in n for n in result.notes)


def test_tflite_fp16_weights_halve_size_and_match_float(net, data, tmp_dir):
    fp32, plain = export("tflite", False, net, data, tmp_dir)
    result, ver = export("tflite", False, net, data, tmp_dir, fp16=True)
    c = ver.checks
    # the TFLite fp16 form: every conv/FC weight a FLOAT16 constant read through a DEQUANTIZE op
    n_weights = c["conv_ops"] + len(c["fully_connected_int8"])
    assert c["float16_tensors"] == n_weights == c["dequantize"] == 8, c["op_histogram"]
    assert plain.checks["float16_tensors"] == 0 and plain.checks["dequantize"] == 0
    assert c["inputs"][0]["dtype"] == "float32" and c["xnnpack"] == "delegated"
    f16 = result.details["float16"]
    assert f16["float16_bytes"] < f16["float32_bytes"] and f16["size_ratio"] < 0.85  # tiny net: graph overhead
    assert result.quantization["scheme"].startswith("float16 weights")
    # float16 weights carry ~11 bits of mantissa: logits stay very close to float32
    assert ver.fidelity["sqnr_db"] > 40 and ver.fidelity["top1_agreement"] == 1.0, ver.fidelity


def test_tflite_fp16_large_weights_keep_their_data(tmp_dir):
    """Above 256 KB of weights ai-edge-quantizer stores buffers after the flatbuffer (offset/size); adding the
    metadata afterwards must keep them (a repack once dropped them: 'Constant buffer specified an out of range
    offset' at load)."""
    big = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 512), nn.ReLU(), nn.Linear(512, 512)).eval()  # ~1 MB of float32 weights
    x = tiny.images(4, seed=3)
    with torch.no_grad():
        ref = big(x)
    conv = get_converter("tflite")
    result = conv.convert(ExportRequest(big, x[:1], tiny.INFO, tmp_dir / "big_fp16.tflite", options={"fp16": True}))
    ver = conv.verify(result.path, x, ref)  # loads: the weight data is in the file
    assert ver.checks["float16_tensors"] == 3 and ver.checks["metadata"].get("lwdeploy", 0) > 0
    assert result.details["float16"]["size_ratio"] < 0.6
    assert ver.fidelity["sqnr_db"] > 40, ver.fidelity


def test_tflite_fp16_and_int8_are_exclusive(net, data, tmp_dir):
    x, _, calib = data
    req = ExportRequest(net, x[:1], tiny.INFO, tmp_dir / "both.tflite", int8=True, calib=calib, options={"fp16": True})
    with pytest.raises(LwdeployError, match="fp16"):
        get_converter("tflite").convert(req)
    assert not (tmp_dir / "both.tflite").exists()


# ---------------------------------------------------------------- ExecuTorch


def test_executorch_float_fully_delegated_and_matches(net, data, tmp_dir):
    result, ver = export("executorch", False, net, data, tmp_dir)
    assert result.path.suffix == ".pte" and result.path.stat().st_size > 1000
    assert result.details["delegate_partitions"] >= 1
    assert ver.checks["delegates"] == {"XnnpackBackend": ver.checks["delegate_partitions"]}
    # Only the dim-order copies of 0-d constants (from the hard-swish/hard-sigmoid decompositions) may stay
    # outside XNNPACK; every convolution, activation, pool and linear must be delegated.
    assert set(ver.checks["kernels_outside_delegate"]) <= {"dim_order_ops::_to_dim_order_copy.out"}, ver.checks
    assert ver.checks["delegate_partitions"] == 1
    assert ver.checks["inputs"][0] == {"shape": [1, 3, tiny.RES, tiny.RES], "dtype": "float32", "layout": "NCHW"}
    assert ver.fidelity["max_abs_diff"] < 1e-3 and ver.fidelity["top1_agreement"] == 1.0


@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
def test_executorch_nhwc_input_has_no_layout_transpose(net, data, tmp_dir, int8):
    from executorch.runtime import Runtime

    _, plain = export("executorch", int8, net, data, tmp_dir, etrecord=False)
    result, ver = export("executorch", int8, net, data, tmp_dir, etrecord=False, nhwc=True)
    # same shape, channels-last dim order: the bytes are H,W,C and XNNPACK reads them without a transpose
    assert ver.checks["inputs"][0]["shape"] == [1, 3, tiny.RES, tiny.RES]
    assert ver.checks["inputs"][0]["layout"] == "NHWC" and plain.checks["inputs"][0]["layout"] == "NCHW"
    transposes = ver.checks["xnnpack_nodes"].get("XNNStaticTranspose", 0)
    assert transposes == plain.checks["xnnpack_nodes"]["XNNStaticTranspose"] - 1, ver.checks["xnnpack_nodes"]
    assert plain.checks["transpose"] == 1 and ver.checks["transpose"] == 0  # the ones that move data
    # verify() fed channels-last tensors: the outputs match PyTorch as closely as the NCHW program's do
    if int8:
        assert ver.fidelity["sqnr_db"] > 15 and abs(ver.fidelity["sqnr_db"] - plain.fidelity["sqnr_db"]) < 1
    else:
        assert ver.fidelity["max_abs_diff"] < 1e-3
    # the runtime does not convert layouts: NCHW bytes given to this program are misread (what as_pte_input is for)
    x, ref, _ = data
    method = Runtime.get().load_program(result.path).load_method("forward")
    wrong = method.execute((x[:1].contiguous(),))[0]
    right = method.execute((x[:1].contiguous(memory_format=torch.channels_last),))[0]
    assert (right - ref[:1]).abs().max() < (wrong - ref[:1]).abs().max()


def test_inspect_pte_reports_an_unreadable_xnnpack_graph_instead_of_failing(net, data, tmp_dir, monkeypatch):
    from lwdeploy.converters import executorch as et

    result, ver = export("executorch", False, net, data, tmp_dir)
    nodes = ver.checks["xnnpack_nodes"]
    assert nodes["XNNConv2d"] + nodes.get("XNNDepthwiseConv2d", 0) == 7, nodes  # the tiny net's 7 convolutions

    def no_flatc(blob):
        raise FileNotFoundError("flatc")

    monkeypatch.setattr(et, "xnnpack_graph_facts", no_flatc)
    checks = et.inspect_pte(result.path)
    assert checks["xnnpack_nodes"].startswith("not read: FileNotFoundError") and checks["delegate_partitions"] == 1


class _ShuffleNet(nn.Module):
    """conv → channel shuffle → conv: the shuffle's flatten of a permuted tensor is a copy + view in torch.export."""

    def __init__(self, shuffle: bool):
        super().__init__()
        self.shuffle = shuffle
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(16, 16, 1), nn.ReLU())
        self.out = nn.Sequential(nn.Conv2d(16, 32, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(32, tiny.CLASSES))

    def forward(self, x):
        x = self.mid(self.stem(x))
        if self.shuffle:
            from lwdeploy.models.layers import channel_shuffle

            x = channel_shuffle(x, 2)
        return self.out(x)


def test_executorch_int8_channel_shuffle_stays_int8(data, tmp_path):
    """The copy torch.export writes for the shuffle's flatten is dropped before partitioning
    (executorch._transform_passes): XNNPACK took it in float only, and the reshape after it ran in float
    between two Converts."""
    from lwdeploy.converters.executorch import inspect_pte

    x, _, calib = data
    converts, reshapes = {}, {}
    for shuffle in (False, True):
        net = _ShuffleNet(shuffle).eval()
        out = tmp_path / f"shuffle_{shuffle}.pte"
        req = ExportRequest(net, x[:1].clone(), tiny.INFO, out, int8=True, calib=calib, options={"etrecord": False})
        get_converter("executorch").convert(req)
        checks = inspect_pte(out)
        nodes = checks["xnnpack_nodes"]
        converts[shuffle], reshapes[shuffle] = nodes.get("XNNConvert", 0), nodes.get("XNNStaticReshape", 0)
        assert checks["quantize"] + checks["dequantize"] == converts[shuffle]
    assert reshapes[True] == reshapes[False] + 2, reshapes  # the shuffle's unflatten and flatten are delegated
    assert converts[True] == converts[False], converts


def test_executorch_int8_matches_float(net, data, tmp_dir):
    result, ver = export("executorch", True, net, data, tmp_dir, etrecord=True)
    assert "XNNPACKQuantizer" in result.quantization["quantizer"]
    assert result.details["delegate_partitions"] == 1
    # torch's nn.Hardswish between int8 ops is delegated (lowering.py keeps it for ExecuTorch int8)
    assert result.details["ops_in_delegate"].get("hardswish") == 1, result.details
    assert not any("hardswish" in op for op in result.details["ops_outside_delegate"]), result.details
    assert ver.fidelity["sqnr_db"] > 15 and ver.fidelity["cosine"] > 0.98, ver.fidelity
    etrecord = result.path.with_suffix(".etrecord")
    assert etrecord in result.extra_files and etrecord.stat().st_size > 0


def test_executorch_stages_are_typed_values(net, data, tmp_dir):
    from executorch.exir import EdgeProgramManager, ExecutorchProgramManager

    from lwdeploy.converters.executorch import ExecuTorchConverter

    x, _, _ = data
    stages = ExecuTorchConverter().lower(ExportRequest(net, x[:1], tiny.INFO, tmp_dir / "unused.pte"))
    assert isinstance(stages.exported, torch.export.ExportedProgram)
    assert isinstance(stages.edge, EdgeProgramManager)
    assert isinstance(stages.program, ExecutorchProgramManager)
    assert stages.delegation["delegate_partitions"] == 1
    assert all("dim_order" in op for op in stages.delegation["ops_outside_delegate"]), stages.delegation


def test_executorch_coreml_delegate_is_checked_structurally(net, data, tmp_dir):
    result, ver = export("executorch", False, net, data, tmp_dir, delegate="coreml", etrecord=False)
    d = result.details
    assert d["delegate"] == "coreml" and d["delegate_partitions"] >= 1
    convs = d["ops_in_delegate"].get("conv2d", 0) + d["ops_in_delegate"].get("convolution", 0)
    assert convs == 7, d  # the convolutions went to Core ML
    assert ver.checks["delegates"].get("CoreMLBackend") == d["delegate_partitions"]
    assert ver.ran_on_host is False and ver.fidelity is None and ver.latency_ms is None
    assert "iOS/macOS" in ver.checks["loads"] and any("structural" in n for n in ver.notes)


def test_executorch_unknown_delegate_is_a_user_error(net, data, tmp_dir):
    x, _, _ = data
    with pytest.raises(LwdeployError, match="delegate"):
        get_converter("executorch").convert(ExportRequest(net, x[:1], tiny.INFO, tmp_dir / "bad.pte",
                                                          options={"delegate": "npu"}))


# ---------------------------------------------------------------- Core ML (structural on Linux)


def test_coreml_float_structure(net, data, tmp_dir):
    result, ver = export("coreml", False, net, data, tmp_dir)
    assert result.path.is_dir() and (result.path / "Manifest.json").is_file()
    assert ver.ran_on_host is False and ver.fidelity is None and any("macOS" in n for n in ver.notes)
    c = ver.checks
    assert c["model_type"] == "mlProgram"
    assert c["inputs"] == [{"name": "image", "type": "imageType", "width": tiny.RES, "height": tiny.RES, "color": "RGB"}]
    assert c["outputs"][0]["name"] == "logits" and c["outputs"][0]["shape"] == [1, tiny.CLASSES]
    assert c["conv_ops"] == 7 and c["int8"] is False
    assert c["metadata"]["lwdeploy.labels"].splitlines() == LABELS


def test_coreml_export_leaves_no_temporary_package(net, data, tmp_path, monkeypatch):
    """coremltools removes ct.convert's temporary .mlpackage only at interpreter exit, which pipeline worker
    processes never reach: the converter removes it itself."""
    import tempfile

    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    x, _, _ = data
    result = get_converter("coreml").convert(ExportRequest(net, x[:1].clone(), tiny.INFO, tmp_path / "m.mlpackage"))
    assert (result.path / "Manifest.json").is_file()
    assert list(temp.glob("*.mlpackage")) == []


def test_coreml_int8_has_quantized_weights_and_activations(net, data, tmp_dir):
    result, ver = export("coreml", True, net, data, tmp_dir)
    c = ver.checks
    assert c["int8"] and c["quantized_weight_ops"] >= 7 and c["activation_quantize_ops"] > 0
    assert "iOS17" in " ".join(result.notes)


def test_coreml_int8_rejects_old_deployment_target(net, data, tmp_dir):
    x, _, calib = data
    req = ExportRequest(net, x[:1], tiny.INFO, tmp_dir / "old.mlpackage", int8=True, calib=calib,
                        options={"min_target": "iOS16"})
    with pytest.raises(LwdeployError, match="iOS17"):
        get_converter("coreml").convert(req)


def test_coreml_normalisation_fold_is_exact(net):
    """ImageType gives pixel/255 − mean; the folded model on that must equal the original on normalised input."""
    from lwdeploy.converters.coreml import prepare_normalisation

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    pixels = torch.randint(0, 256, (4, 3, tiny.RES, tiny.RES)).float()
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    normalised = (pixels / 255 - m) / s
    folded, image = prepare_normalisation(net, normalised[:1], mean, std)
    assert image["scale"] == pytest.approx(1 / 255) and image["bias"] == [-v for v in mean]
    assert "folded" in image["how"]
    image_output = pixels * image["scale"] + torch.tensor(image["bias"]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(folded(image_output), net(normalised), rtol=1e-4, atol=1e-5)
    assert not torch.equal(folded.stem[0].weight, net.stem[0].weight)   # the caller's model is untouched...
    assert net.stem[0].weight is not folded.stem[0].weight

    # a model whose first op is not a convolution gets an explicit (still exact) per-channel multiply
    odd = nn.Sequential(nn.Identity(), nn.AvgPool2d(1), *list(net.stem), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    wrapped, image = prepare_normalisation(odd, normalised[:1], mean, std)
    assert "multiply" in image["how"]
    with torch.no_grad():
        torch.testing.assert_close(wrapped(image_output), odd(normalised), rtol=1e-4, atol=1e-5)

    # equal std: ImageType alone is exact, the model is returned unchanged
    same, image = prepare_normalisation(net, normalised[:1], (0.5,) * 3, (0.5,) * 3)
    assert same is net and image["scale"] == pytest.approx(1 / 127.5) and image["bias"] == [-1.0] * 3


_SEEDED_COREML = """
import sys
import tiny_convnet as tiny
from pathlib import Path
from lwdeploy.converters import get_converter
from lwdeploy.converters.base import ExportRequest
net, x = tiny.build(), tiny.images(4, seed=2)
get_converter("coreml").convert(ExportRequest(net, x[:1], tiny.INFO, Path(sys.argv[1]), int8=True,
                                              calib=list(x.split(1))))
"""


def test_coreml_bytes_do_not_depend_on_the_process_hash_seed(tmp_path):
    """Two processes (different PYTHONHASHSEED) once wrote the same Core ML spec with its protobuf maps in
    different orders; the package must be identical anyway (deterministic serialization)."""
    import os
    import subprocess
    import sys

    from lwdeploy.manifest import sha256_of

    here = Path(__file__).parent
    outs = []
    for seed in ("1", "2"):
        out = tmp_path / f"seed{seed}.mlpackage"
        subprocess.run([sys.executable, "-c", _SEEDED_COREML, str(out)], cwd=here, check=True, capture_output=True,
                       env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(here)})
        outs.append(sha256_of(out))
    assert outs[0] == outs[1]


# ---------------------------------------------------------------- errors


class _Odd(nn.Module):
    """A conv and a hard-swish under `body`: the error tests name `body.1 (Hardswish)`."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Hardswish())

    def forward(self, x):
        return self.body(x)


def test_unsupported_operator_error_names_op_and_module():
    from lwdeploy.converters.diagnose import unsupported_operator

    model, x = _Odd().eval(), torch.randn(1, 3, 8, 8)
    exc = RuntimeError("Lowering not found: aten.hardswish.default")
    err = unsupported_operator(exc, "tflite", model=model, example=x)
    assert isinstance(err, LwdeployError)
    assert "hardswish" in err.message and "tflite" in err.message and "body.1 (Hardswish)" in err.message
    assert err.hint
    assert unsupported_operator(RuntimeError("out of memory"), "tflite", model=model, example=x) is None


def test_failure_on_a_node_names_operator_module_target_and_hint():
    """A converter that breaks while processing a graph node (no 'unsupported' in its message — e.g. coremltools'
    numpy TypeError) still yields operator, PyTorch module, target and a hint, found from the traceback."""
    from lwdeploy.converters.diagnose import explain_failure

    model, x = _Odd().eval(), torch.randn(1, 3, 8, 8)
    graph = torch.export.export(model, (x,))

    def fake_converter():  # walks the graph like the converters' frontends do, and breaks on hardswish
        for node in graph.graph.nodes:
            if node.op == "call_function" and "hardswish" in str(node.target):
                raise TypeError("only 0-dimensional arrays can be converted to Python scalars")

    try:
        fake_converter()
    except TypeError as e:
        err = explain_failure(e, "coreml", graph=graph)
    assert isinstance(err, LwdeployError)
    assert "coreml" in err.message and "hardswish" in err.message and "body.1 (Hardswish)" in err.message
    assert "TypeError: only 0-dimensional" in err.message and "--target" in err.hint

    class CoremlNode:  # coremltools' InternalTorchIRNode: kind + outputs (named after the exported node)
        kind, outputs = "hardswish", ["hardswish"]

    def frontend():
        node = CoremlNode()  # noqa: F841  (found in this frame's locals)
        raise ValueError("bad shape")

    try:
        frontend()
    except ValueError as e:
        err = explain_failure(e, "coreml", graph=graph)
    assert "operator hardswish in module body.1 (Hardswish)" in err.message, err.message
    try:
        raise RuntimeError("disk full")
    except RuntimeError as e:  # no node anywhere: a plain bug, not dressed up as an operator problem
        assert explain_failure(e, "tflite", graph=graph) is None


# ---------------------------------------------------------------- zoo model (heavy)


@pytest.mark.heavy
@pytest.mark.parametrize("target", ["tflite", "executorch", "coreml"])
def test_zoo_model_int8_per_target(target, tmp_path):
    from lwdeploy.models import create, get_info

    net = create("mobilenet_v3_small_100")
    tiny.recalibrate_batchnorm(net, 96)
    x = torch.randn(8, 3, 96, 96)
    with torch.no_grad():
        ref = net(x)
    conv = get_converter(target)
    req = ExportRequest(net, x[:1], get_info("mobilenet_v3_small_100"), tmp_path / f"m{conv.suffix}", int8=True,
                        calib=list(torch.randn(16, 3, 96, 96).split(1)))
    ver = conv.verify(conv.convert(req).path, x, ref)
    if ver.ran_on_host:
        assert ver.fidelity["cosine"] > 0.9, ver.fidelity
    else:
        assert ver.checks["int8"]


# ---------------------------------------------------------------- reproducibility


@pytest.mark.parametrize("target", ["tflite", "executorch", "coreml"])
def test_same_export_twice_gives_identical_bytes(target, net, data, tmp_dir):
    from lwdeploy.manifest import sha256_of

    first, _ = export(target, False, net, data, tmp_dir)
    x, _, _ = data
    conv = get_converter(target)
    again = conv.convert(ExportRequest(net, x[:1].clone(), tiny.INFO, tmp_dir / f"again{conv.suffix}",
                                       labels=LABELS))
    # the whole artifact: for the .mlpackage folder every file incl. Manifest.json (content-derived item ids)
    assert sha256_of(first.path) == sha256_of(again.path)
    assert "byte-identical" in str(first.details["reproducible"])
    if target == "coreml":
        import json

        from lwdeploy.converters.coreml import inspect_mlpackage

        manifest = json.loads((again.path / "Manifest.json").read_text())
        assert manifest["rootModelIdentifier"] in manifest["itemInfoEntries"]
        assert inspect_mlpackage(again.path)["conv_ops"] == 7  # coremltools still reads the package
    if target == "executorch":  # the ETRecord holds Python object ids: the manifest says so
        assert "id()" in first.details["reproducible"][".etrecord"]


def test_tflite_int8_stores_each_quantization_vector_once(net, data, tmp_dir):
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema

    from lwdeploy.converters.inspect_tflite import size_breakdown
    from lwdeploy.converters.tflite_pack import repack

    result, ver = export("tflite", True, net, data, tmp_dir)
    packed = result.path.read_bytes()
    model = schema.Model.GetRootAsModel(packed, 0)
    graph = model.Subgraphs(0)
    zero_points = [graph.Tensors(i).Quantization().ZeroPointAsNumpy() for i in range(graph.TensorsLength())
                   if graph.Tensors(i).Quantization() is not None]
    per_channel = [z for z in zero_points if isinstance(z, np.ndarray) and z.size > 1]
    assert len(per_channel) > len({z.ctypes.data for z in per_channel})  # tensors share stored vectors
    # the same model: repacking changes no value (outputs bit for bit), and a second repack saves nothing more
    assert len(repack(packed)) == len(packed)
    from ai_edge_litert.interpreter import Interpreter

    x = data[0][:1].numpy()
    outs = []
    for content in (packed, _unshared(packed)):
        it = Interpreter(model_content=content, num_threads=1)
        it.allocate_tensors()
        d = it.get_input_details()[0]
        scale, zp = d["quantization"]
        it.set_tensor(d["index"], x if d["dtype"] == np.float32 else np.round(x / scale + zp).astype(d["dtype"]))
        it.invoke()
        outs.append(it.get_tensor(it.get_output_details()[0]["index"]).copy())
    assert np.array_equal(*outs)
    unshared = _unshared(packed)
    assert len(unshared) > len(packed)
    full = schema.Model.GetRootAsModel(unshared, 0)
    saved = (size_breakdown(full, full.Subgraphs(0), len(unshared))["quantization_params"]
             - size_breakdown(model, graph, len(packed))["quantization_params"])
    assert 0 < saved <= len(unshared) - len(packed) + 64   # the breakdown counts a shared vector once


def test_tflite_tensors_are_named_by_module_path(net, data, tmp_dir):
    from ai_edge_litert import schema_py_generated as schema

    from lwdeploy.converters.tflite_pack import module_path_name

    result, _ = export("tflite", True, net, data, tmp_dir)
    graph = schema.Model.GetRootAsModel(result.path.read_bytes(), 0).Subgraphs(0)
    names = [graph.Tensors(i).Name().decode() for i in range(graph.TensorsLength())]
    paths = {c[1:] for n in names for c in n.split(";") if c.startswith("/") and len(c) > 1}
    assert paths and paths <= {n for n, _ in net.named_modules()}, paths
    assert not any("torch.nn.modules" in n for n in names)
    # litert-torch's spelling → "/" + the module path; names without a module stack stay; a short name stays
    long = "pkg.Net/torch.nn.modules.container.Sequential_blocks/pkg.Block_0/torch.nn.modules.conv.Conv2d_conv;1"
    assert module_path_name(long) == "/blocks.0.conv;1" == module_path_name("/blocks.0.conv;1")
    fused = "pkg.Net/pkg.B_stem/pkg.Act_act_fn;;pkg.Net/pkg.B_stem/C_conv;"
    assert module_path_name(fused) == "/stem.act_fn;;/stem.conv;"
    for kept in ("serving_default_args_0", "arith.constant2", "pkg.Net/not a module", "/act_fn;1"):
        assert module_path_name(kept) == kept


def _unshared(model_bytes: bytes) -> bytes:
    """The schema's own object-API packer: every vector written anew (what litert-torch writes)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    builder = flatbuffers.Builder(len(model_bytes))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


class _Residual(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(4, 4, 1), torch.nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.a(x) + self.b(x)


def test_tflite_verify_refuses_int8_add_that_would_abort_the_interpreter(tmp_path):
    """A pruned MobileNetV3-Small without BN re-estimation gave an int8 ADD with input scale 1.35e5 and output
    scale 0.0235: LiteRT's ADD kernel fails a CHECK on that and aborts the process (SIGABRT, no Python error).
    verify must name the op and refuse before the interpreter is built."""
    pytest.importorskip("litert_torch", reason="litert-torch not installed")
    import contextlib
    import sys

    from ai_edge_litert import schema_py_generated as schema

    from benchmarks.int8_bench import export_tflite
    from lwdeploy.converters.inspect_tflite import inspect_tflite
    from lwdeploy.converters.tflite import TFLiteConverter

    torch.manual_seed(0)
    net = _Residual().eval()
    x = torch.randn(8, 4, 8, 8)
    with contextlib.redirect_stdout(sys.stderr):
        good = export_tflite(net, x[:1], tmp_path / "good.tflite", int8=True, calib=list(x.split(1)))
    assert inspect_tflite(good)["add_rescale_out_of_range"] == []
    model = schema.ModelT.InitFromPackedBuf(bytearray(good.read_bytes()), 0)
    graph = model.subgraphs[0]
    add_code = [i for i, c in enumerate(model.operatorCodes)
                if max(c.builtinCode, c.deprecatedBuiltinCode) == schema.BuiltinOperator.ADD]
    add = next(op for op in graph.operators if op.opcodeIndex in add_code)
    out_q = graph.tensors[add.outputs[0]].quantization
    out_q.scale = [float(out_q.scale[0]) * 1e-7]   # output range 10⁷× narrower than the inputs'
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(bytes(builder.Output()))
    found = inspect_tflite(bad)["add_rescale_out_of_range"]
    assert len(found) == 1 and found[0]["type"] == "ADD" and found[0]["ratio"] > 1
    with pytest.raises(RuntimeError, match="int8 ADD .* would abort"):
        TFLiteConverter().verify(bad, x[:2], net(x[:2]).detach())


def test_tflite_size_breakdown_accounts_for_every_byte(net, data, tmp_dir):
    fp_result, fp = export("tflite", False, net, data, tmp_dir)
    q_result, q = export("tflite", True, net, data, tmp_dir)
    weights = sum(m.weight.numel() for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    for result, ver in ((fp_result, fp), (q_result, q)):
        b = ver.checks["size_bytes"]
        assert b["file"] == result.path.stat().st_size and b["other"] >= 0
        assert sum(b["constants"].values()) + b["quantization_params"] + b["tensor_names"] + b["other"] == b["file"]
    f, i = fp.checks["size_bytes"], q.checks["size_bytes"]
    assert f["quantization_params"] == 0 and f["constants"]["float32"] >= 4 * weights
    assert i["constants"]["int8"] >= weights and i["constants"].get("float32", 0) < f["constants"]["float32"] / 10
    # per-channel: a float32 scale and an int64 zero point per output channel of every weight (and its bias)
    channels = sum(m.weight.shape[0] for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert i["quantization_params"] >= 12 * channels
