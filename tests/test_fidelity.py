"""Fidelity report: the numbers are recomputed here by hand on small cases, and per-layer SQNR / keep_float
are checked on a tiny net quantized with ExecuTorch's XNNPACK PT2E quantizer (fast: 32×32)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lwdeploy.errors import LwdeployError
from lwdeploy.quantization.fidelity import compare_outputs, fidelity_report, layer_sqnr, sqnr_db, worst_layers


def test_identical_outputs_are_perfect():
    ref = torch.randn(6, 10)
    rep = compare_outputs(ref, ref.clone())
    assert rep["top1_agreement"] == 1.0 and rep["top5_containment"] == 1.0
    assert rep["max_abs_diff"] == 0.0 and math.isinf(rep["output_sqnr_db"])


def test_agreement_and_containment_are_counted_per_image():
    ref = torch.tensor([[9., 8, 7, 6, 5, 0, 0], [9., 8, 7, 6, 5, 0, 0], [9., 8, 7, 6, 5, 0, 0],
                        [9., 8, 7, 6, 5, 0, 0]])
    out = ref.clone()
    out[1, 1] = 10.0      # top-1 moves to float's #2: disagrees, still inside float's top-5
    out[2, 6] = 10.0      # top-1 moves outside float's top-5
    rep = compare_outputs(ref, out)
    assert rep["n"] == 4
    assert rep["top1_agreement"] == pytest.approx(2 / 4)
    assert rep["top5_containment"] == pytest.approx(3 / 4)
    assert rep["max_abs_diff"] == pytest.approx(10.0)


def test_sqnr_matches_its_definition():
    ref = torch.tensor([3.0, 4.0])          # ‖ref‖² = 25
    assert sqnr_db(ref, ref + torch.tensor([1.0, 0.0])) == pytest.approx(10 * math.log10(25.0))


def test_report_accepts_artifact_outputs_as_arrays():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5)).eval()
    x = torch.randn(3, 3, 2, 2)
    with torch.no_grad():
        out = model(x).numpy()
    rep = fidelity_report(model, out, x)
    assert rep["top1_agreement"] == 1.0 and rep["images"] == 3
    with pytest.raises(ValueError):
        fidelity_report(model, out[:, :4], x)


def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()


def _quantize(model, x, keep=None):
    pytest.importorskip("executorch", reason="ExecuTorch not installed (its XNNPACK quantizer is used here)")
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                          get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from lwdeploy.quantization.keep_float import wrap

    q = wrap(XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)), keep, model)
    gm = torch.export.export(model, (x[:1],), strict=True).module()
    gm = prepare_pt2e(gm, q)
    with torch.no_grad():
        for i in range(len(x)):
            gm(x[i:i + 1])
    return convert_pt2e(gm), q


def test_per_layer_sqnr_and_keep_float():
    model, x = _tiny(), torch.randn(8, 3, 32, 32)
    gm, _ = _quantize(model, x)
    rows = layer_sqnr(model, gm, x[:4])
    names = [r["layer"] for r in rows]
    assert "1" in names and "3" in names      # conv+relu is one int8 op: tapped at the relu, by module path
    assert all(5 < r["sqnr_db"] < 80 for r in rows)            # int8: noisy but close
    rep = fidelity_report(model, gm, x, per_layer=True)
    assert rep["per_layer"]["layers"] and len(rep["per_layer"]["worst"]) <= 10
    assert worst_layers(rows, 1)[0]["drop_db"] == max(r["drop_db"] for r in rows if r["drop_db"] is not None)

    # keep conv "2" and its relu "3" float: no int8 weight feeds that conv, and the output gets closer to float
    kept, q = _quantize(model, x, keep=["2", "3"])
    assert q.unmatched == []
    conv_nodes = [n for n in kept.graph.nodes if n.op == "call_function" and "conv2d" in str(n.target)]
    weight_srcs = [str(n.args[1].target) if isinstance(n.args[1], torch.fx.Node) else "" for n in conv_nodes]
    assert sum("dequantize_per_channel" in s for s in weight_srcs) == len(conv_nodes) - 1
    # (its output is still quantized where conv "4" reads it, so compare the SQNR at "3" itself)
    sqnr3 = {r["layer"]: r["sqnr_db"] for r in layer_sqnr(model, kept, x[:4])}["3"]
    assert sqnr3 > {r["layer"]: r["sqnr_db"] for r in rows}["3"]


def _each(gm, x):
    with torch.no_grad():
        return torch.cat([gm(x[i:i + 1]) for i in range(len(x))])


def test_keep_float_rejects_unknown_paths():
    pytest.importorskip("executorch", reason="ExecuTorch not installed")
    model, x = _tiny(), torch.randn(2, 3, 32, 32)
    with pytest.raises(LwdeployError):
        _quantize(model, x, keep=["blocks.99"])


@pytest.mark.parametrize("target", ["executorch", "tflite"])
def test_relu6_outputs_are_quantized_on_zero_to_six(target):
    """conv → BN → ReLU6: the quantize sits after the clamp with scale 6/255, zp −128; none after the conv."""
    pytest.importorskip("executorch" if target == "executorch" else "litert_torch", reason=f"{target} not installed")
    from lwdeploy.quantization.pt2e import quantize

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
                          nn.Conv2d(8, 4, 1)).eval()
    model[0].weight.data *= 20          # conv output far wider than [0, 6]: the case that lost precision
    x = torch.randn(6, 3, 16, 16)
    gm = quantize(model, x[:1], target, [x[i:i + 1] for i in range(6)]).module
    clamps = [n for n in gm.graph.nodes if n.op == "call_function" and "hardtanh" in str(n.target)]
    assert len(clamps) == 1
    conv = clamps[0].args[0]
    assert "conv" in str(conv.target) and "quantize" not in " ".join(str(u.target) for u in conv.users)
    q = [u for u in clamps[0].users if "quantize_per_tensor" in str(u.target)]
    assert q and q[0].args[1] == pytest.approx(6 / 255) and q[0].args[2] == -128


@pytest.mark.parametrize("target", ["executorch", "tflite"])
def test_hardswish_add_relu6_is_one_fused_int8_op(target):
    """lowering's hard-swish x·(relu6(x + 3)·⅙) (TFLite's int8 form; ExecuTorch's too when a model spells it out):
    F.relu6 exports as aten.relu6 (not hardtanh). Its ADD must not be quantized on its own range: the quantize
    sits after the clamp on [0, 6], so XNNPACK fuses the clamp into the ADD (before: a separate Clamp op +
    requantization per hard-swish in ExecuTorch)."""
    pytest.importorskip("executorch" if target == "executorch" else "litert_torch", reason=f"{target} not installed")
    from lwdeploy.quantization.lowering import QuantHardSwish
    from lwdeploy.quantization.pt2e import quantize

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), QuantHardSwish(), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(6, 3, 16, 16) * 3
    gm = quantize(model, x[:1], target, [x[i:i + 1] for i in range(6)]).module
    relu6 = [n for n in gm.graph.nodes if n.op == "call_function" and "relu6" in str(n.target)]
    assert len(relu6) == 1
    add = relu6[0].args[0]
    assert "add" in str(add.target), "the clamp must read the ADD directly (no quantize/dequantize between)"
    q = [u for u in relu6[0].users if "quantize_per_tensor" in str(u.target)]
    assert q and q[0].args[1] == pytest.approx(6 / 255) and q[0].args[2] == -128
