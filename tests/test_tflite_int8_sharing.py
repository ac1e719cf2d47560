"""TFLite int8 same-scale ops (quantization/tflite_int8.py): the graph rewrites are exact in float, data-movement
ops share their input's qparams, and a net with split + padded average pools converts to int8 and matches
float (litert-torch refused it before: "same scale constraint" on SLICE and PAD)."""

from __future__ import annotations

import torch
from torch import nn

from lwdeploy.models.layers import channel_shuffle
from lwdeploy.quantization.tflite_int8 import (TFLiteInt8Quantizer, border_divisor_map,
                                               padded_avg_pools_to_depthwise, splits_to_slices)

aten = torch.ops.aten


def _targets(gm) -> list:
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


class Pool(nn.Module):
    def __init__(self, pool: nn.Module):
        super().__init__()
        self.conv, self.pool = nn.Conv2d(3, 6, 3, padding=1), pool

    def forward(self, x):
        return self.pool(self.conv(x))


@torch.no_grad()
def _check_pool(pool: nn.Module, size: int):
    torch.manual_seed(0)
    net = Pool(pool).eval()
    x = torch.randn(2, 3, size, size) * 3
    gm = torch.export.export(net, (x,)).module()
    assert padded_avg_pools_to_depthwise(gm) == 1
    assert aten.avg_pool2d.default not in _targets(gm)
    assert torch.allclose(gm(x), net(x), atol=1e-5, rtol=1e-5)
    return gm


def test_padded_avg_pool_with_count_include_pad_is_a_depthwise_conv():
    for k, s, p, size in [(3, 2, 1, 32), (3, 2, 1, 33), (3, 1, 1, 32), (5, 1, 2, 33)]:
        gm = _check_pool(nn.AvgPool2d(k, s, p), size)
        assert aten.mul.Tensor not in _targets(gm)          # count_include_pad: the conv alone is exact
        convs = [n for n in gm.graph.nodes if n.target is aten.conv2d.default]
        assert convs[-1].args[-1] == 6                       # groups = channels: depthwise


def test_padded_avg_pool_without_count_include_pad_fixes_the_border_divisor():
    # NASNet/PNASNet/ShuffleNet use count_include_pad=False: border windows divide by fewer pixels
    for k, s, p, size in [(3, 2, 1, 32), (3, 2, 1, 33), (3, 1, 1, 32)]:
        gm = _check_pool(nn.AvgPool2d(k, s, p, count_include_pad=False), size)
        assert aten.mul.Tensor in _targets(gm)


def test_border_divisor_map_counts_valid_pixels():
    m = border_divisor_map(4, 4, [3, 3], [1, 1], [1, 1])
    assert m.shape == (1, 1, 4, 4)
    assert m[0, 0, 0, 0] == 9 / 4 and m[0, 0, 0, 1] == 9 / 6 and m[0, 0, 1, 1] == 1


def test_unpadded_and_ceil_mode_pools_are_left_alone():
    x = torch.randn(1, 3, 8, 8)
    for pool in (nn.AvgPool2d(2), nn.AvgPool2d(3, 2, 1, ceil_mode=True)):
        gm = torch.export.export(Pool(pool).eval(), (x,)).module()
        assert padded_avg_pools_to_depthwise(gm) == 0
        assert aten.avg_pool2d.default in _targets(gm)


class Split(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 1)

    def forward(self, x):
        y = self.conv(x)
        a, b = torch.split(y, 6, dim=1)
        c, d, e = torch.chunk(y, 3, dim=-1)
        return a * 2 + b, c + d + e[..., : c.shape[-1]]


@torch.no_grad()
def test_split_and_chunk_become_slices_with_the_same_values():
    net = Split().eval()
    x = torch.randn(1, 3, 6, 9)
    gm = torch.export.export(net, (x,)).module()
    assert splits_to_slices(gm) == 2
    targets = _targets(gm)
    assert aten.split.Tensor not in targets and aten.chunk.default not in targets
    for got, want in zip(gm(x), net(x)):
        assert torch.equal(got, want)


def test_data_movement_ops_share_their_input_qparams():
    from litert_torch.quantize import pt2e_quantizer as pq
    from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec

    x = torch.randn(1, 3, 6, 9)
    gm = torch.export.export(Split().eval(), (x,), strict=True).module()
    q = TFLiteInt8Quantizer().set_global(pq.get_symmetric_quantization_config(is_per_channel=True))
    gm = q.transform_for_annotation(gm)
    q.annotate(gm)
    slices = [n for n in gm.graph.nodes if n.target is aten.slice.Tensor]
    assert len(slices) >= 5
    for n in slices:
        ann = n.meta["quantization_annotation"]
        assert isinstance(ann.output_qspec, SharedQuantizationSpec)
        assert all(isinstance(s, SharedQuantizationSpec) for s in ann.input_qspec_map.values())
    assert q.rewritten["split_to_slices"] == 2 and q.rewritten["shared_qparams"] >= len(slices)


def test_relu6_range_reaches_the_reader_after_a_channel_shuffle():
    """ReLU6's fixed [0, 6] range passes through the shuffle's reshape/transpose (shared qparams); the conv
    that reads it must take that range too, or its own observer becomes a requantization folded into the
    TRANSPOSE (MicroNet: scale 6/255 vs 5.997/255, refused by TFLite)."""
    from litert_torch.quantize import pt2e_quantizer as pq

    from lwdeploy.quantization.fixed_ranges import RELU6_SPEC, FixedReLU6Ranges

    class Shuffle(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.act, self.b = nn.Conv2d(3, 8, 1), nn.ReLU6(), nn.Conv2d(8, 8, 1)

        def forward(self, x):
            return self.b(channel_shuffle(self.act(self.a(x)), 2))

    gm = torch.export.export(Shuffle().eval(), (torch.randn(1, 3, 4, 4),), strict=True).module()
    inner = TFLiteInt8Quantizer().set_global(pq.get_symmetric_quantization_config(is_per_channel=True))
    q = FixedReLU6Ranges(inner)
    gm = q.transform_for_annotation(gm)
    q.annotate(gm)
    conv_b = [n for n in gm.graph.nodes if n.target is aten.conv2d.default][-1]
    assert conv_b.meta["quantization_annotation"].input_qspec_map[conv_b.args[0]] is RELU6_SPEC
    assert q.fixed == 1 and q.fixed_readers == 1


class SameScaleNet(nn.Module):
    """The four failing matrix cells in miniature: DiCENet's AvgPool2d(3, 2, 1), NASNet's
    AvgPool2d(3, 1, 1, count_include_pad=False), MicroNet's split of a 1×1 coefficient tensor and its channel
    shuffle of a ReLU6 output."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU6())
        self.down = nn.AvgPool2d(3, 2, 1)
        self.same = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.fc = nn.Linear(8, 16)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = channel_shuffle(self.stem(x), 2)          # MicroNet: ReLU6 → shuffle → conv (TRANSPOSE)
        y = self.same(self.down(y)) + self.down(y)
        coef = self.fc(y.mean((2, 3)))[:, :, None, None]
        a, b = torch.split(coef, 8, dim=1)
        return self.head(y * (a + 1.0) + b).mean((2, 3))


def test_split_and_padded_pools_convert_to_tflite_int8_and_match_float():
    import contextlib
    import sys
    import tempfile
    from pathlib import Path

    import pytest

    pytest.importorskip("litert_torch", reason="litert-torch not installed")
    import litert_torch
    from litert_torch.quantize.quant_config import QuantConfig

    from benchmarks.int8_bench import tflite_op_counts, tflite_run
    from lwdeploy.quantization.pt2e import quantize

    torch.manual_seed(0)
    net = SameScaleNet().eval()
    x = torch.rand(24, 3, 32, 32)
    with tempfile.TemporaryDirectory() as d, contextlib.redirect_stdout(sys.stderr):
        qm = quantize(net, x[:1], "tflite", list(x[:16].split(1)))
        edge = litert_torch.convert(qm.module, (x[:1],), quant_config=QuantConfig(pt2e_quantizer=qm.quantizer))
        path = Path(d) / "s.tflite"
        path.write_bytes(edge.model_content())
        ops = tflite_op_counts(path)
        out = torch.from_numpy(tflite_run(path, x[16:], threads=1)).reshape(8, -1)
    with torch.no_grad():
        ref = net(x[16:]).reshape(8, -1)
    # the pools are depthwise convs; the one PAD left is litert-torch's for the stride-2 conv on an even input
    # (PyTorch's symmetric padding is not TF "SAME" there, see lowering.py) and shares its input's qparams
    assert ops["AVERAGE_POOL_2D"] == 0 and ops["DEPTHWISE_CONV_2D"] == 2 and ops["PAD"] <= 1, ops
    assert ops["QUANTIZE"] + ops["DEQUANTIZE"] <= 2, ops     # int8 throughout, no float island
    sqnr = 10 * torch.log10(ref.pow(2).sum() / (out - ref).pow(2).sum())
    assert sqnr > 20, float(sqnr)


def test_nasnet_cell_branches_on_a_float_add_convert_to_tflite_int8():
    """NASNet/PNASNet: a cell state (an add litert-torch leaves float) read by a stride-2 separable conv, a
    padded max-pool and a padded average pool. Each reader observed the float tensor on its own and
    litert-torch met two scales on one PAD; now the max-pool observes its input edge and every reader
    shares that one observer."""
    import contextlib
    import sys

    import pytest

    pytest.importorskip("litert_torch", reason="litert-torch not installed")
    import litert_torch
    from litert_torch.quantize.quant_config import QuantConfig

    import tempfile
    from pathlib import Path

    from benchmarks.int8_bench import tflite_run
    from lwdeploy.models.families.nas_cells import SeparableStack, make_op
    from lwdeploy.quantization.pt2e import quantize

    class Cell(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, 1, 1), nn.Conv2d(3, 8, 3, 1, 1)
            self.ops = nn.ModuleList([SeparableStack(8, 8, 5, 2), make_op("max_pool_3x3", 8, 8, 2),
                                      make_op("avg_pool_3x3", 8, 8, 2)])

        def forward(self, x):
            y = torch.cat([self.a(x), self.b(x)], 1)[:, :8] + self.b(x)
            return self.ops[0](y) + self.ops[1](y) + self.ops[2](y)

    torch.manual_seed(0)
    net = Cell().eval()
    x = torch.rand(20, 3, 32, 32)
    with contextlib.redirect_stdout(sys.stderr):
        qm = quantize(net, x[:1], "tflite", list(x[:16].split(1)))
        edge = litert_torch.convert(qm.module, (x[:1],), quant_config=QuantConfig(pt2e_quantizer=qm.quantizer))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.tflite"
        path.write_bytes(edge.model_content())
        out = torch.from_numpy(tflite_run(path, x[16:], threads=1)).reshape(4, -1)
    with torch.no_grad():
        ref = net(x[16:]).reshape(4, -1)
    sqnr = 10 * torch.log10(ref.pow(2).sum() / (out - ref).pow(2).sum())
    assert sqnr > 20, float(sqnr)
