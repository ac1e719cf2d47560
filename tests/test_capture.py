"""PT2E graph capture: non-strict export + source tags quantizes exactly like strict (dynamo) export, and the
graph-aware XNNPACK quantizer annotates exactly like the stock one."""

from __future__ import annotations

import pytest
import torch
import tiny_convnet as tiny
from torch import nn

from lwdeploy.quantization import capture as capture_mod
from lwdeploy.quantization import quantize

OURS = capture_mod.capture


class EveryTaggedOp(nn.Module):
    """Residual add, SE-style mul, channel concat, max pool and adaptive average pool: the ops litert-torch's
    annotators find by source function."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU6())
        self.b = nn.Conv2d(8, 8, 3, 1, 1, groups=8)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.gate = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = self.a(x)
        y = y + self.b(y)
        y = torch.cat([y, self.b(y)], 1)
        y = self.pool(y)
        y = y * torch.sigmoid(self.gate(self.gap(y)))
        return self.fc(torch.flatten(self.gap(y), 1))


def _strict(model, example):
    return torch.export.export(model, (example,), strict=True).module()


def _untagged(model, example):
    return torch.export.export(model, (example,), strict=False).module()


def _qdq(gm) -> list[tuple[str, str]]:
    """Every quantize/dequantize node with the op it reads: the annotation's footprint."""
    return [(str(n.target), str(getattr(n.args[0], "target", ""))) for n in gm.graph.nodes
            if n.op == "call_function" and "quantize" in str(n.target)]


def _quantized(monkeypatch, capture, model, target):
    monkeypatch.setattr(capture_mod, "capture", capture)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    calib = [torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    qm = quantize(model, x, target, calib, bias_correction=False)
    with torch.no_grad():
        return _qdq(qm.module), qm.module(x)


@pytest.mark.parametrize("target", ["tflite", "executorch"])
@pytest.mark.parametrize("build", [EveryTaggedOp, tiny.build], ids=["tagged_ops", "tiny_convnet"])
def test_capture_quantizes_like_strict_export(monkeypatch, target, build):
    torch.manual_seed(0)
    model = build().eval()
    strict_qdq, strict_out = _quantized(monkeypatch, _strict, model, target)
    ours_qdq, ours_out = _quantized(monkeypatch, OURS, model, target)
    assert ours_qdq == strict_qdq
    assert torch.equal(ours_out, strict_out)


def test_litert_annotators_need_the_source_tags(monkeypatch):
    """Without the tags litert-torch leaves adds/muls/cat/pools unannotated: the test above would be vacuous."""
    model = EveryTaggedOp().eval()
    strict_qdq, _ = _quantized(monkeypatch, _strict, model, "tflite")
    untagged_qdq, _ = _quantized(monkeypatch, _untagged, model, "tflite")
    assert len(untagged_qdq) < len(strict_qdq)
    graph = _untagged(model, torch.randn(1, 3, 32, 32)).graph
    assert capture_mod.tag_source_functions(graph) == 6  # 1 add, 1 mul, 1 cat, 1 max pool, 2 adaptive pools
    assert capture_mod.tag_source_functions(graph) == 0  # already tagged: left alone


def test_graph_aware_xnnpack_quantizer_annotates_like_the_stock_one(monkeypatch):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer

    import lwdeploy.quantization.xnnpack as xq

    model = tiny.build().eval()
    ours, ours_out = _quantized(monkeypatch, OURS, model, "executorch")
    monkeypatch.setattr(xq, "GraphAwareXNNPACKQuantizer", XNNPACKQuantizer)
    stock, stock_out = _quantized(monkeypatch, OURS, model, "executorch")
    assert ours == stock and torch.equal(ours_out, stock_out)
