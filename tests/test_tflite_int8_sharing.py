"""TFLite int8 same-scale ops (quantization/tflite_int8.py): the graph rewrites are exact in float, data-movement
ops share their input's qparams, and a net with split + padded average pools converts to int8 and matches
float (litert-torch refused it before: "same scale constraint" on SLICE and PAD)."""

from __future__ import annotations

import torch
from torch import nn

from lwdeploy.models.layers import channel_shuffle
from lwdeploy.quantization.tflite_int8 import (TFLiteInt8Quantizer, border_divisor_map,
                                               avg_pools_to_depthwise, splits_to_slices)

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
    assert avg_pools_to_depthwise(gm) == 1
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


def test_unpadded_avg_pool_is_a_depthwise_conv_too():
    # CondenseNet's transition pools: XNNPACK's delegate has no int8 AVERAGE_POOL_2D
    for pool in (nn.AvgPool2d(2), nn.AvgPool2d(2, count_include_pad=False), nn.AvgPool2d(3, 2)):
        gm = _check_pool(pool, 16)
        assert aten.mul.Tensor not in _targets(gm)          # whole windows: no border map


def test_global_and_ceil_mode_pools_are_left_alone():
    x = torch.randn(1, 3, 8, 8)
    for pool in (nn.AvgPool2d(8), nn.AvgPool2d(3, 2, 1, ceil_mode=True)):
        gm = torch.export.export(Pool(pool).eval(), (x,)).module()
        assert avg_pools_to_depthwise(gm) == 0
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


# ---------------------------------------------------------------------------------------------------------
# NAS cells (NASNet-A / PNASNet-5 / AmoebaNet-A): the float islands and delegate splits of issue #4
# ---------------------------------------------------------------------------------------------------------

def _export(net, x):
    return torch.export.export(net.eval(), (x,)).module()


@torch.no_grad()
def test_strided_max_pool_with_non_same_padding_is_a_same_pool_and_a_subsampling_conv():
    from lwdeploy.quantization.tflite_int8 import strided_max_pools_to_same

    # odd sizes: PyTorch's symmetric padding IS "SAME" there (litert-torch emits no PADV2)
    for size, k, s, rewritten in [(16, 3, 2, 1), (17, 3, 2, 0), (15, 3, 2, 0), (16, 3, 1, 0), (16, 5, 2, 1)]:
        torch.manual_seed(0)
        net = Pool(nn.MaxPool2d(k, s, k // 2)).eval()
        x = torch.randn(2, 3, size, size) * 3 - 4          # mostly negative: a wrong pad value would win
        gm = _export(net, x)
        assert strided_max_pools_to_same(gm) == rewritten, (size, k, s)
        assert torch.equal(gm(x), net(x))
        if rewritten:
            pools = [n for n in gm.graph.nodes if n.target is aten.max_pool2d.default]
            assert [list(p.args[2]) for p in pools] == [[1, 1]]


@torch.no_grad()
def test_batchnorm_after_a_cat_of_convs_is_folded_into_them():
    from torchao.quantization.pt2e.utils import _fuse_conv_bn_

    from lwdeploy.models.families.nas_cells import FactorizedReduce
    from lwdeploy.quantization.batchnorm_fold import batchnorm_through_cat

    torch.manual_seed(0)
    net = FactorizedReduce(6, 10).eval()
    net.bn.running_mean.uniform_(-1, 1), net.bn.running_var.uniform_(0.5, 2), net.bn.weight.data.uniform_(0.5, 2)
    x = torch.randn(2, 6, 8, 8)
    gm = _export(net, x)
    _fuse_conv_bn_(gm)                       # what prepare_pt2e does first: it finds no conv → BN here
    assert aten.batch_norm.default in _targets(gm)
    assert batchnorm_through_cat(gm) == 1
    assert aten.batch_norm.default not in _targets(gm)
    assert torch.allclose(gm(x), net(x), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_batchnorm_after_a_channel_shuffle_is_folded_into_the_conv():
    from torchao.quantization.pt2e.utils import _fuse_conv_bn_

    from lwdeploy.models.families.condensenet import DenseLayer
    from lwdeploy.quantization.batchnorm_fold import _channel_source, batchnorm_through_channel_permutation

    torch.manual_seed(0)
    layer = DenseLayer(16, 8, 4, 4)                # conv1: 1×1 group conv → shuffle(4) → norm2
    # the stem conv feeds the layer's pre-activation BN AND its cat: that BN must not fold into the stem
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), layer).eval()
    for bn in (layer.conv1.norm, layer.norm2):
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 2)
        bn.bias.data.uniform_(-1, 1)
    x = torch.randn(1, 3, 8, 8)
    gm = _export(net, x)
    assert sum(n.target is aten.batch_norm.default for n in gm.graph.nodes) == 2
    assert batchnorm_through_channel_permutation(gm) == 1
    assert sum(n.target is aten.batch_norm.default for n in gm.graph.nodes) == 1   # the pre-activation BN
    assert torch.allclose(gm(x), net(x), atol=1e-5, rtol=1e-5)
    gm = _export(net, x)
    _fuse_conv_bn_(gm)       # what prepare_pt2e does first: norm2 reads no conv, so it stays
    assert any(n.target is aten.batch_norm.default and n.args[0].target is aten.flatten.using_ints
               for n in gm.graph.nodes)
    # the probe: a shuffle permutes channels; a spatial transpose keeps them (BN commutes with it); channels and
    # rows swapped and reshaped back mix channels (BN does not commute)
    shuffle = _export(Shuffle(), torch.randn(1, 8, 3, 3))
    moves = [n for n in shuffle.graph.nodes if n.op == "call_function"]
    assert _channel_source(moves, torch.empty(1, 8, 3, 3)).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    hw = [n for n in _export(SpatialT(), torch.randn(1, 8, 3, 3)).graph.nodes if n.op == "call_function"]
    assert _channel_source(hw, torch.empty(1, 8, 3, 3)).tolist() == list(range(8))
    mix = [n for n in _export(MixChannels(), torch.randn(1, 8, 3, 3)).graph.nodes if n.op == "call_function"]
    assert _channel_source(mix, torch.empty(1, 8, 3, 3)) is None


class Shuffle(nn.Module):
    def forward(self, x):
        return x.unflatten(1, (2, -1)).transpose(1, 2).flatten(1, 2)


class SpatialT(nn.Module):
    def forward(self, x):
        return x.transpose(2, 3)


class MixChannels(nn.Module):
    def forward(self, x):
        return x.transpose(1, 2).reshape(x.shape)


@torch.no_grad()
def test_cat_of_more_than_five_inputs_is_nested():
    from lwdeploy.quantization.tflite_int8 import MAX_CAT_INPUTS, wide_cats_nested

    class Cat(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.convs = nn.ModuleList(nn.Conv2d(3, 2 + i % 3, 1) for i in range(n))

        def forward(self, x):
            return torch.cat([c(x) for c in self.convs], 1)

    x = torch.randn(1, 3, 4, 4)
    for n, rewritten in [(5, 0), (6, 1), (9, 1)]:
        net = Cat(n).eval()
        gm = _export(net, x)
        assert wide_cats_nested(gm) == rewritten
        cats = [c for c in gm.graph.nodes if c.target is aten.cat.default]
        assert all(len(c.args[0]) <= MAX_CAT_INPUTS for c in cats) and len(cats) == 1 + rewritten
        assert torch.equal(gm(x), net(x))


class SharedReLU(nn.Module):
    """A conv read by two ReLUs and an add: litert-torch fused one ReLU into the conv and left the conv float."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)

    def forward(self, x):
        y = self.a(x)
        return self.b(torch.relu(y)) + self.c(torch.relu(y)) + y


@torch.no_grad()
def test_relus_of_a_shared_value_become_one_add_relu():
    from lwdeploy.quantization.tflite_int8 import merge_duplicate_relus, unfusable_relus_to_add_relu

    net, x = SharedReLU().eval(), torch.randn(2, 3, 6, 6)
    gm = _export(net, x)
    assert merge_duplicate_relus(gm) == 1
    assert unfusable_relus_to_add_relu(gm) == 1
    relu = next(n for n in gm.graph.nodes if n.target is aten.relu.default)
    assert relu.args[0].target is aten.add.Tensor
    assert torch.equal(gm(x), net(x))


def test_conv_read_by_a_relu_and_others_keeps_its_own_int8_output():
    from litert_torch.quantize import pt2e_quantizer as pq

    gm = _export(SharedReLU(), torch.randn(1, 3, 6, 6))
    q = TFLiteInt8Quantizer().set_global(pq.get_symmetric_quantization_config(is_per_channel=True))
    gm = q.transform_for_annotation(gm)
    q.annotate(gm)
    conv_a = next(n for n in gm.graph.nodes if n.target is aten.conv2d.default)
    assert conv_a.meta["quantization_annotation"].output_qspec is not None      # None: computed in float
    relu = next(n for n in gm.graph.nodes if n.target is aten.relu.default)
    assert relu.meta["quantization_annotation"].output_qspec is not None
    assert relu.args[0].meta["quantization_annotation"].output_qspec is None    # the ADD fuses the ReLU


class NASBits(nn.Module):
    """The NAS-cell forms that left float islands or split XNNPACK's int8 delegate: a conv read by ReLUs (separable
    stacks, FactorizedReduce) and by an add, a stride-2 max-pool with padding on an even size (PADV2), a BN after a
    cat of two convs (FactorizedReduce), an add read by a ReLU and a cat, a 6-input cat, a ReLU of a cat."""

    def __init__(self):
        from lwdeploy.models.families.nas_cells import FactorizedReduce, SeparableStack, make_op

        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.BatchNorm2d(8))
        self.sep = SeparableStack(8, 8, 3, 2)
        self.pool = make_op("max_pool_3x3", 8, 8, 2)
        self.reduce = FactorizedReduce(8, 8)
        self.sep2 = SeparableStack(8, 8, 3, 1)
        self.head = nn.Conv2d(48, 10, 1)

    def forward(self, x):
        y = self.stem(x)
        a, b, c = self.sep(y), self.pool(y), self.reduce(y)
        d = a + b
        e = self.sep2(d)
        return self.head(torch.relu(torch.cat([a, b, c, d, e, b + c], 1)))


def test_nas_cell_forms_convert_to_one_int8_xnnpack_partition():
    import contextlib
    import sys
    import tempfile
    from pathlib import Path

    import pytest

    pytest.importorskip("litert_torch", reason="litert-torch not installed")
    import litert_torch
    from litert_torch.quantize.quant_config import QuantConfig

    from benchmarks.int8_bench import tflite_op_counts, tflite_partitions, tflite_run
    from lwdeploy.quantization.pt2e import quantize

    torch.manual_seed(0)
    net = NASBits().eval()
    x = torch.rand(24, 3, 16, 16)
    with torch.no_grad():                    # BN statistics of the data, as settle_batchnorm gives zoo models
        net.train()(x)
    net.eval()
    with tempfile.TemporaryDirectory() as d, contextlib.redirect_stdout(sys.stderr):
        qm = quantize(net, x[:1], "tflite", list(x[:16].split(1)))
        edge = litert_torch.convert(qm.module, (x[:1],), quant_config=QuantConfig(pt2e_quantizer=qm.quantizer))
        path = Path(d) / "nas.tflite"
        path.write_bytes(edge.model_content())
        ops, partitions = tflite_op_counts(path), tflite_partitions(path, threads=1)
        out = torch.from_numpy(tflite_run(path, x[16:], threads=1)).reshape(8, -1)
    with torch.no_grad():
        ref = net(x[16:]).reshape(8, -1)
    rewritten = qm.quantizer.rewritten
    assert rewritten["max_pool_to_same"] == 1 and qm.scheme["batchnorms_folded_through_cat"] == 1, rewritten
    assert rewritten["wide_cats_nested"] == 1 and rewritten["relu_as_add_relu"] >= 3, rewritten
    assert ops["QUANTIZE"] + ops["DEQUANTIZE"] == 0, ops     # before: float CONV_2D/ADD/RELU/SUB/MUL islands
    assert ops["PADV2"] == 0 and ops["RELU"] == 0, ops        # XNNPACK runs neither in int8
    assert partitions == 1, (partitions, ops)
    sqnr = 10 * torch.log10(ref.pow(2).sum() / (out - ref).pow(2).sum())
    assert sqnr > 20, float(sqnr)
