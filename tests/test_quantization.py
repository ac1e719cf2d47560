"""PT2E int8: each target's quantizer gives per-channel weights and calibrated static activations."""

from __future__ import annotations

import math

import pytest
import torch
import tiny_convnet as tiny

from lwdeploy.errors import LwdeployError
from lwdeploy.quantization import QUANTIZER_BUILDERS, quantize


def _sqnr(out: torch.Tensor, ref: torch.Tensor) -> float:
    return 10 * math.log10(float((ref**2).sum()) / float(((out - ref) ** 2).sum()))


def _ops(gm) -> list[str]:
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]


def _first_activation_scale(gm) -> float:
    for n in gm.graph.nodes:
        if n.op == "call_function" and "quantize_per_tensor" in str(n.target) and "dequantize" not in str(n.target):
            return float(n.args[1])
    raise AssertionError("no activation quantize node")


@pytest.fixture(scope="module")
def net():
    return tiny.build()


@pytest.mark.parametrize("target", ["tflite", "executorch", "coreml"])
def test_per_channel_static_and_close_to_float(target, net):
    calib = list(tiny.images(8, seed=2).split(1))
    qm = quantize(net, calib[0], target, calib)
    ops = _ops(qm.module)
    assert any("dequantize_per_channel" in o for o in ops), "weights must be per-channel"
    assert any("quantize_per_tensor" in o for o in ops), "activations must be statically quantized"
    assert not any("choose_qparams" in o for o in ops), "dynamic quantization must not appear"
    assert qm.scheme["per_channel"] and qm.scheme["static"] and qm.scheme["calibration_images"] == 8
    assert qm.scheme["target"] == target and qm.quantizer is not None
    assert not qm.module.training
    x = tiny.images(16, seed=3)
    with torch.no_grad():
        ref = net(x)
        out = torch.cat([qm.module(xi[None]) for xi in x])
    assert _sqnr(out, ref) > 15


def test_calibration_sets_activation_ranges(net):
    calib = list(tiny.images(4, seed=2).split(1))
    small = quantize(net, calib[0], "executorch", calib)
    large = quantize(net, calib[0], "executorch", [c * 8 for c in calib])
    # the input quantizer's scale follows the calibration data's range
    assert _first_activation_scale(large.module) > 4 * _first_activation_scale(small.module)


def test_needs_calibration_and_a_known_quantizer(net):
    x = tiny.images(1, seed=0)
    with pytest.raises(LwdeployError, match="calibration"):
        quantize(net, x, "tflite", [])
    with pytest.raises(LwdeployError, match="no int8 quantizer"):
        quantize(net, x, "onnx", [x])
    assert {"tflite", "executorch", "coreml", "coreml-native"} <= set(QUANTIZER_BUILDERS)


def test_coreml_native_observers_become_torchao():
    """CoreMLQuantizer's torch.ao FakeQuantize(observer=…) constructors map to torchao observers."""
    from torch.ao.quantization import FakeQuantize, PerChannelMinMaxObserver
    from torchao.quantization.pt2e import observer as ao_observer

    from lwdeploy.quantization.pt2e import _to_torchao_observer

    ctr = FakeQuantize.with_args(observer=PerChannelMinMaxObserver, dtype=torch.qint8,
                                 qscheme=torch.per_channel_symmetric)
    new = _to_torchao_observer(ctr)
    obs = new()
    assert isinstance(obs, ao_observer.PerChannelMinMaxObserver)
    assert obs.dtype == torch.qint8 and obs.qscheme == torch.per_channel_symmetric


@pytest.mark.heavy
def test_coreml_native_quantizer_runs(net):
    """coremltools' own CoreMLQuantizer through the torchao shim (minutes: it re-exports 405 patterns)."""
    calib = list(tiny.images(4, seed=2).split(1))
    qm = quantize(net, calib[0], "coreml", calib, quantizer="coreml-native")
    assert any("dequantize_per_channel" in o for o in _ops(qm.module))


def test_unsplat_biases_nudges_only_uniform_nonzero_biases():
    from torch import nn

    from lwdeploy.quantization.pt2e import unsplat_biases

    class ThreeConvs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
            with torch.no_grad():
                self.a.bias.fill_(3.0)        # uniform, non-zero: litert-torch would make it a splat
                self.b.bias.zero_()           # zero is the same in every scale: left alone
                self.c.bias.copy_(torch.arange(4.0))

        def forward(self, x):
            return self.c(self.b(self.a(x)))

    gm = torch.export.export(ThreeConvs(), (torch.randn(1, 4, 2, 2),)).module()
    before = {k: v.clone() for k, v in gm.state_dict().items() if k.endswith("bias")}
    assert unsplat_biases(gm) == 1
    after = {k: v for k, v in gm.state_dict().items() if k.endswith("bias")}
    assert len(set(after["a.bias"].tolist())) > 1
    assert torch.allclose(after["a.bias"], before["a.bias"], rtol=1e-6, atol=0)
    assert torch.equal(after["b.bias"], before["b.bias"]) and torch.equal(after["c.bias"], before["c.bias"])


def test_tflite_int8_uniform_bias_with_per_channel_scales():
    """A conv whose bias is the same on every channel (a random-init SE excite conv after the hard-sigmoid +3
    fold) with very different per-channel weight scales: litert-torch quantized such a bias with the first
    channel's scale only (MobileNetV3-Small TFLite int8 output SQNR -0.3 dB). The .tflite must match float."""
    pytest.importorskip("litert_torch", reason="litert-torch not installed")
    import contextlib
    import sys
    import tempfile
    from pathlib import Path

    from torch import nn

    from benchmarks.int8_bench import export_tflite, tflite_run

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(8, 16, 1), nn.ReLU6()).eval()
    with torch.no_grad():
        net[0].weight.mul_(torch.logspace(-1.5, 0.5, 16).view(16, 1, 1, 1))   # scales 100× apart
        net[0].bias.fill_(3.0)
    x = torch.randn(32, 8, 4, 4)
    with tempfile.TemporaryDirectory() as d, contextlib.redirect_stdout(sys.stderr):
        path = export_tflite(net, x[:1], Path(d) / "b.tflite", int8=True, calib=list(x[:16].split(1)))
        out = torch.from_numpy(tflite_run(path, x[16:], threads=1))
    with torch.no_grad():
        ref = net(x[16:]).reshape(16, -1)
    assert _sqnr(out.reshape(16, -1), ref) > 25


def _fused_int8(model):
    """conv+BN folded as PT2E folds it, weights rounded as the PT2E quantizers round them."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from lwdeploy.quantization.bias_correction import int8_weight

    m = copy.deepcopy(model).eval()
    fused = fuse_conv_bn_eval(m[0], m[1])
    fused.weight.data = int8_weight(fused.weight.data)
    return fused


def test_bias_correction_removes_the_mean_shift_of_int8_weights():
    from torch import nn

    from lwdeploy.quantization.bias_correction import correct_biases

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16)).eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.01, 0.1)     # small variance: a large folded weight, a coarse int8 step
        net[1].weight.uniform_(0.5, 2)
    x = torch.rand(8, 16, 12, 12) * 4                   # post-ReLU inputs: not zero-mean
    with torch.no_grad():
        ref = net(x).mean((0, 2, 3))
        plain = _fused_int8(net)(x).mean((0, 2, 3))
        corrected_net, n = correct_biases(net, list(x.split(2)))
        corrected = _fused_int8(corrected_net)(x).mean((0, 2, 3))
    assert n == 1
    assert float((plain - ref).abs().max()) > 1e-3            # int8 weights shift the channel means …
    assert float((corrected - ref).abs().max()) < 1e-5        # … and the corrected bias takes it back
    assert float(net[1].bias.abs().max()) == 0.0, "correct_biases must work on a copy"


def test_quantize_records_bias_correction_and_keeps_the_callers_model(net):
    before = {k: v.clone() for k, v in net.state_dict().items()}
    calib = list(tiny.images(4, seed=2).split(1))
    on = quantize(net, calib[0], "executorch", calib)
    off = quantize(net, calib[0], "executorch", calib, bias_correction=False)
    assert on.scheme["bias_correction"].split()[0] not in ("0", "off")
    assert off.scheme["bias_correction"] == "off"
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())


def test_choose_within_budget_takes_worst_layers_that_fit():
    from lwdeploy.quantization.keep_float import choose_within_budget

    rows = [{"layer": "a", "drop_db": 1.0}, {"layer": "b", "drop_db": 9.0}, {"layer": "c", "drop_db": 5.0},
            {"layer": "d", "drop_db": 3.0}, {"layer": "act", "drop_db": 20.0}, {"layer": "e", "drop_db": -2.0},
            {"layer": "f", "drop_db": None}]
    macs = {"a": 10, "b": 60, "c": 5, "d": 20, "e": 1, "f": 4}      # "act" holds no weights: not a candidate
    chosen, share = choose_within_budget(rows, macs, 0.30)
    assert chosen == ["c", "d"] and share == pytest.approx(0.25)     # b (60 %) does not fit; e has no drop
    assert choose_within_budget(rows, macs, 0.01) == ([], 0.0)


def test_keep_float_budget_keeps_the_chosen_layers_float(net):
    calib = list(tiny.images(8, seed=2).split(1))
    plain = quantize(net, calib[0], "executorch", calib)
    qm = quantize(net, calib[0], "executorch", calib, keep_float_budget=0.5)
    info = qm.scheme["keep_float_budget"]
    modules = dict(net.named_modules())
    assert info["chosen"] and info["mac_share"] <= 0.5
    assert all(isinstance(modules[p], (torch.nn.Conv2d, torch.nn.Linear)) for p in info["chosen"])
    per_channel = lambda gm: sum("dequantize_per_channel" in o for o in _ops(gm))   # noqa: E731
    assert per_channel(qm.module) == per_channel(plain.module) - len(info["chosen"])
    with pytest.raises(LwdeployError):
        quantize(net, calib[0], "executorch", calib, keep_float_budget=1.5)


class _ConvsCatBN(torch.nn.Module):
    """MixNet's mixed depthwise conv: channel slices through different kernels, concatenated, then BN."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, 1, 1)
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(4, 4, k, 1, k // 2, groups=4) for k in (3, 5))
        self.bn = torch.nn.BatchNorm2d(8)

    def forward(self, x):
        y = self.stem(x)
        return torch.relu(self.bn(torch.cat([self.convs[0](y[:, :4]), self.convs[1](y[:, 4:])], 1)))


def _quantize_with_bn_statistics(model, target, var: tuple[float, float], weight: tuple[float, float]):
    """`model.bn` given non-identity statistics, then int8 (no bias correction) calibrated on 4 random 16² crops.
    Returns the QuantizedModel and its output SQNR against float on 8 other crops."""
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(*var)
        model.bn.weight.uniform_(*weight)
    model.eval()
    calib = [torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    qm = quantize(model, calib[0], target, calib, bias_correction=False)
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        return qm, _sqnr(torch.cat([qm.module(xi[None]) for xi in x]), model(x))


@pytest.mark.parametrize("target", ["executorch", "tflite"])
def test_batchnorm_after_cat_is_folded_for_every_target(target):
    torch.manual_seed(0)
    qm, sqnr = _quantize_with_bn_statistics(_ConvsCatBN(), target, var=(0.5, 2), weight=(0.5, 1.5))
    # a BN left in the quantized graph is a float op between dequantize/quantize: a delegate partition break
    assert not any("batch_norm" in o for o in _ops(qm.module))
    assert qm.scheme["batchnorms_folded_through_cat"] == 1
    assert sqnr > 25


class _ShuffleBN(torch.nn.Module):
    """CondenseNet's dense layer core: a 1×1 group conv, a channel shuffle, then BN."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, 1, 1)
        self.conv = torch.nn.Conv2d(8, 8, 1, groups=2, bias=False)
        self.bn = torch.nn.BatchNorm2d(8)
        self.head = torch.nn.Conv2d(8, 8, 3, 1, 1)

    def forward(self, x):
        y = self.conv(torch.relu(self.stem(x))).unflatten(1, (2, -1)).transpose(1, 2).flatten(1, 2)
        return self.head(torch.relu(self.bn(y)))


@pytest.mark.parametrize("target", ["executorch", "tflite"])
def test_batchnorm_after_a_shuffle_is_folded_into_the_conv(target):
    torch.manual_seed(0)
    qm, sqnr = _quantize_with_bn_statistics(_ShuffleBN(), target, var=(0.2, 2), weight=(0.5, 2.5))
    assert qm.scheme["batchnorms_folded_through_shuffle"] == 1 and "batchnorms_as_depthwise" not in qm.scheme
    assert not any("batch_norm" in o for o in _ops(qm.module))
    assert sqnr > 25


class _SharedConvBN(torch.nn.Module):
    """Pre-activation dense block (CondenseNet's stem): the conv's output is normalised AND concatenated."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, 1, 1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.conv = torch.nn.Conv2d(8, 8, 1)

    def forward(self, x):
        y = self.stem(x)
        return torch.cat([y, self.conv(torch.relu(self.bn(y)))], 1).mean((2, 3))


@pytest.mark.parametrize("target", ["executorch", "tflite"])
def test_batchnorm_on_a_conv_with_other_readers_is_not_folded_into_it(target):
    torch.manual_seed(0)
    qm, sqnr = _quantize_with_bn_statistics(_SharedConvBN(), target, var=(0.2, 0.5), weight=(1.5, 2.5))
    assert qm.scheme["batchnorms_as_depthwise"] == 1
    assert sqnr > 25  # folded into the stem, the BN also rescaled the concatenated copy: SQNR < 10 dB


class _DenseBN(torch.nn.Module):
    """CondenseNet's dense layer: the block input and a conv's output concatenated, then pre-activation BN."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, 1, 1)
        self.conv = torch.nn.Conv2d(8, 8, 1)
        self.bn = torch.nn.BatchNorm2d(16)
        self.head = torch.nn.Conv2d(16, 8, 1)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        return self.head(torch.relu(self.bn(torch.cat([y, self.conv(y)], 1))))


@pytest.mark.parametrize("target", ["executorch", "tflite"])
def test_standalone_batchnorm_becomes_an_int8_depthwise_conv(target):
    torch.manual_seed(0)
    qm, sqnr = _quantize_with_bn_statistics(_DenseBN(), target, var=(0.5, 2), weight=(0.5, 1.5))
    # neither vendor quantizer annotates a BN after a cat: left alone it ran float between two Converts
    assert not any("batch_norm" in o for o in _ops(qm.module))
    assert qm.scheme["batchnorms_as_depthwise"] == 1
    assert sqnr > 25


class _DenseChain(torch.nn.Module):
    """Two dense layers: each concatenates its input with a conv of it, so the second cat reads the first."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, 1, 1)
        self.conv1, self.conv2 = torch.nn.Conv2d(8, 4, 1), torch.nn.Conv2d(12, 4, 1)
        self.head = torch.nn.Conv2d(16, 8, 1)

    def forward(self, x):
        y = self.stem(x)
        y = torch.cat([y, torch.relu(self.conv1(y))], 1)
        y = torch.cat([y, torch.relu(self.conv2(y))], 1)
        return self.head(y)


def test_a_shared_spec_is_dropped_only_with_the_annotation_it_names():
    from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec

    from lwdeploy.quantization.keep_float import _refers_to

    graph = torch.fx.Graph()
    stem, cat = graph.placeholder("stem"), graph.placeholder("cat")
    dropped = {stem}                                     # the float layer's annotation is gone
    assert not _refers_to(SharedQuantizationSpec((stem, cat)), dropped)   # the cat's own input spec
    assert _refers_to(SharedQuantizationSpec((cat, stem)), dropped)       # the float layer's input spec
    assert _refers_to(SharedQuantizationSpec(stem), dropped)              # the float layer's output spec
    assert not _refers_to(SharedQuantizationSpec(cat), dropped)


@pytest.mark.parametrize("target", ["tflite", "executorch"])
def test_cats_after_a_float_stem_stay_int8_with_one_scale(target):
    torch.manual_seed(0)
    model = _DenseChain().eval()
    calib = [torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    qm = quantize(model, calib[0], target, calib, keep_float=["stem"], bias_correction=False)
    cats = [n for n in qm.module.graph.nodes if n.op == "call_function" and "cat" in str(n.target)]
    assert len(cats) == 2 and any(str(n.target) == "aten.conv2d.default" for n in qm.module.graph.nodes)
    for cat in cats:
        # every input int8 on the cat's own output scale: the cat shares one scale through the edge from its
        # first input, the float stem's too (keep_float used to drop it, and each cat then ran float)
        ins = [a for a in cat.args[0]]
        assert all("dequantize" in str(a.target) for a in ins), [str(a.target) for a in ins]
        (out,) = cat.users
        assert "quantize" in str(out.target)
        assert {float(a.args[1]) for a in ins} == {float(out.args[1])}


class _ShuffleSplit(torch.nn.Module):
    """ShuffleNet v2's unit boundary: concat → channel shuffle (unflatten/transpose/flatten) → channel split."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(3, 4, 1)
        self.head = torch.nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1).unflatten(1, (2, 4)).transpose(1, 2).flatten(1, 2)
        return self.head(y[:, :4]) + y[:, 4:]


@pytest.mark.parametrize("target", ["executorch", "tflite"])
def test_channel_shuffle_and_split_run_in_int8(target):
    from lwdeploy.quantization.shared_qparams import MOVES

    torch.manual_seed(0)
    model = _ShuffleSplit().eval()
    calib = [torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    qm = quantize(model, calib[0], target, calib, bias_correction=False)
    moves = [n for n in qm.module.graph.nodes if n.op == "call_function" and n.target in MOVES]
    assert len(moves) >= 4  # unflatten, transpose, flatten, two slices (export may merge none of them)
    # every move reads int8 (a dequantize right before it): XNNPACK's own list lacks unflatten, so before
    # shared_qparams the whole shuffle and both slices read float
    assert all("dequantize" in str(n.args[0].target) for n in moves), \
        [(str(n.target), str(n.args[0].target)) for n in moves if "dequantize" not in str(n.args[0].target)]


@pytest.mark.parametrize("k, stride, dilation, padding, groups", [
    (1, 1, 1, 0, 1), (1, 2, 1, 0, 4), (3, 1, 1, 1, 1), (3, 2, 1, 1, 8), (5, 2, 2, 4, 8), (3, 1, 1, "same", 1)])
def test_conv_mean_shift_equals_the_mean_of_the_convolution(k, stride, dilation, padding, groups):
    from lwdeploy.quantization.bias_correction import conv_mean_shift

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 16, k, stride, padding, dilation, groups=groups).double()
    x = torch.randn(3, 8, 11, 9, dtype=torch.float64)
    dw = torch.randn_like(conv.weight)
    ref = torch.nn.functional.conv2d(x, dw, None, conv.stride, conv.padding, conv.dilation, groups).mean((2, 3))
    assert torch.allclose(conv_mean_shift(x, conv, dw), ref, atol=1e-12)


class _HardSwishNet(torch.nn.Module):
    """conv → hard-swish in lowering.py's int8 form x·(relu6(x + 3)·⅙) → conv."""

    def __init__(self):
        from lwdeploy.quantization.lowering import QuantHardSwish

        super().__init__()
        self.a, self.act, self.b = torch.nn.Conv2d(3, 8, 3, 1, 1), QuantHardSwish(), torch.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(self.act(self.a(x)))


@pytest.mark.parametrize("target", ["executorch", "tflite"])
def test_hard_sigmoid_output_is_quantized_on_its_fixed_range(target):
    torch.manual_seed(0)
    model = _HardSwishNet().eval()
    calib = [3 * torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    qm = quantize(model, calib[0], target, calib, bias_correction=False)
    assert qm.scheme["hardsigmoid_fixed_range"].endswith(": 1 MULs")
    # the ⅙ MUL's output: exactly [0, 1] on the clamp's grid (scale 1/255, zero point -128), not an estimate
    muls = [n for n in qm.module.graph.nodes if n.op == "call_function" and "mul" in str(n.target)]
    scales = {(round(float(u.args[1]) * 255, 6), int(u.args[2])) for m in muls for u in m.users
              if "quantize_per_tensor" in str(u.target) and "dequantize" not in str(u.target)}
    assert (1.0, -128) in scales, scales
    x = 3 * torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        assert _sqnr(torch.cat([qm.module(xi[None]) for xi in x]), model(x)) > 25


def test_moves_above_rank_5_stay_float_for_executorch_and_core_ml():
    from lwdeploy.quantization.shared_qparams import MOVES

    class Unfold(torch.nn.Module):  # MobileViT's patch unfold: a rank-6 view between two convs
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 4, 1)

        def forward(self, x):
            y = self.a(x).unflatten(2, (2, 2)).unflatten(4, (2, 2)).transpose(3, 4)
            return self.b(y.flatten(4, 5).flatten(2, 3))

    calib = [torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    qm = quantize(Unfold().eval(), calib[0], "executorch", calib, bias_correction=False)
    rank6 = [n for n in qm.module.graph.nodes if n.op == "call_function" and n.target in MOVES
             and n.meta["val"].dim() > 5]
    # Core ML shares this program and its quantize op takes rank <= 5 (the matrix's MobileViT int8 cell failed)
    assert rank6 and not any("quantize" in str(u.target) for n in rank6 for u in n.users)


def test_slow_int8_depthwise_picks_5x5_and_channel_multiplier_depthwise_layers_only():
    import lwdeploy.models as zoo
    from lwdeploy.quantization.keep_float import slow_int8_depthwise
    from lwdeploy.quantization.lowering import TiledDepthwiseConv2d, lower

    mnv3 = zoo.create("mobilenet_v3_large_100")
    paths = slow_int8_depthwise(mnv3)
    modules = dict(mnv3.named_modules())
    assert len(paths) == 6 and all(modules[p].conv.kernel_size == (5, 5) for p in paths)   # ConvBNActs, whole
    assert slow_int8_depthwise(zoo.create("mobilenet_v2_100")) == []                        # 3×3 only
    mixnet = lower(zoo.create("mixnet_s"), "executorch")
    tiled = [n for n, m in mixnet.named_modules() if isinstance(m, TiledDepthwiseConv2d)]
    kept = slow_int8_depthwise(mixnet)
    assert tiled and set(tiled) <= set(kept) and not any(p.startswith(t + ".") for p in kept for t in tiled)

    # MicroNet's channel-multiplier convs (groups == in < out) run as a grouped IGEMM: kept float as well
    micronet = zoo.create("micronet_m0")
    modules = dict(micronet.named_modules())
    multipliers = [n for n, m in modules.items() if isinstance(m, torch.nn.Conv2d) and 1 < m.groups == m.in_channels
                   < m.out_channels]
    kept = slow_int8_depthwise(micronet)
    assert len(multipliers) == 7 and all(any(n == k or n.startswith(k + ".") for k in kept) for n in multipliers)


def test_executorch_int8_leaves_5x5_depthwise_and_rgb_stem_float_and_tflite_does_not():
    """ExecuTorch's int8 5×5 depthwise kernel and its int8 3-channel stem conv are slower than their float
    ones: those convs stay float there."""
    model = _ConvsCatBN().eval()
    calib = [torch.randn(1, 3, 16, 16) for _ in range(4)]
    et = quantize(model, calib[0], "executorch", calib)
    tfl = quantize(model, calib[0], "tflite", calib)
    assert et.scheme["float_depthwise"]["layers"] == ["convs.1"] and et.scheme["keep_float"] == []
    assert et.scheme["float_stem"]["layers"] == ["stem"]
    assert "float_depthwise" not in tfl.scheme and "float_stem" not in tfl.scheme
    per_channel = lambda gm: sum("dequantize_per_channel" in o for o in _ops(gm))   # noqa: E731
    assert (per_channel(et.module), per_channel(tfl.module)) == (1, 3)      # the 3×3; TFLite: stem and 5×5 too


def test_rgb_stem_is_the_one_conv_reading_the_image():
    import lwdeploy.models as zoo
    from lwdeploy.quantization.keep_float import rgb_stem

    x = torch.randn(1, 3, 64, 64)
    assert rgb_stem(zoo.create("mobilenet_v2_100").eval(), x) == ["stem"]            # a ConvBNAct, kept whole
    shufflenet = zoo.create("shufflenet_v2_050").eval()
    assert rgb_stem(shufflenet, x) == ["stem.0"] and shufflenet.get_submodule("stem.0").in_channels == 3
    assert rgb_stem(zoo.create("squeezenet_1_0").eval(), x) == []             # a 7×7 stem gains from int8
    assert rgb_stem(_ShuffleSplit().eval(), torch.randn(1, 3, 8, 8)) == []   # two convs read the image: neither
    gray = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.Conv2d(8, 3, 1), torch.nn.Conv2d(3, 4, 3))
    assert rgb_stem(gray.eval(), torch.randn(1, 1, 8, 8)) == []              # a later 3-channel conv is no stem


def test_fashion_table_from_json_rerun_replaces_row_in_place(tmp_path, capsys):
    import json

    from benchmarks.int8_bench import main

    def row(model, acc):
        return {"model": model, "resolution": 32, "fashion": True, "float_acc": acc, "tolerance_pt": 0.3,
                "train": {"epochs": 1, "images": 100, "wall_s": 1.0, "cpu_s": 1.0}, "test_images": 100,
                "targets": {"tflite": {"int8_acc": acc, "drop_pt": 0.0, "met": True, "top1_agreement": 1.0}}}

    first, rerun = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"rows": [row("aa", 50.0), {"model": "bb", "error": "RuntimeError: too small"},
                                          row("cc", 70.0)]}))
    rerun.write_text(json.dumps({"rows": [row("bb", 60.0)]}))
    assert main(["--fashion", "--from-json", str(first), str(rerun)]) == 0
    out = capsys.readouterr().out
    models = [ln.split("|")[1].strip() for ln in out.splitlines() if ln.startswith("| ")][1:]
    assert models == ["aa", "bb", "cc"]  # bb's re-run row, in bb's place; its FAILED row is gone
    assert "FAILED" not in out and "| 60.00 |" in out


def test_fashion_keep_float_groups_table():
    from benchmarks.int8_bench import groups_markdown

    cell = {"int8_acc": 70.0, "drop_pt": 0.5, "met": False, "top1_agreement": 0.9}
    row = {"model": "m", "test_images": 10000, "targets": {"tflite": cell},
           "keep_float_groups": {"tflite": {".fuse": {**cell, "int8_acc": 70.4, "drop_pt": 0.1, "modules": 16},
                                            "stem": {"error": "RuntimeError: x", "modules": 6}}}}
    lines = groups_markdown([row]).splitlines()
    assert [ln.split("|")[3].strip() for ln in lines[2:]] == ["(none)", ".fuse", "stem"]
    assert "| 70.40 | +0.10 | 0.32 | 0.900 |" in lines[3] and "FAILED: RuntimeError: x" in lines[4]
    assert groups_markdown([{k: v for k, v in row.items() if k != "keep_float_groups"}]) == ""


def test_calibration_recipes_change_one_thing_and_put_it_back():
    import torchao.quantization.pt2e.quantize_pt2e as qp

    import lwdeploy.quantization.fixed_ranges as fixed_ranges
    from benchmarks.calibration_recipes import _minmax, _relu6_observed, main, markdown

    spec, prepare = fixed_ranges.RELU6_SPEC, qp.prepare_pt2e
    with _relu6_observed():
        assert fixed_ranges.RELU6_SPEC is not spec
        assert "HistogramObserver" in repr(fixed_ranges.RELU6_SPEC.observer_or_fake_quant_ctr)
    for where in ("output", "input"):
        with _minmax(where):
            assert qp.prepare_pt2e is not prepare
    assert fixed_ranges.RELU6_SPEC is spec and qp.prepare_pt2e is prepare
    with pytest.raises(SystemExit) as exit_:
        main(["--recipes", "default,no-such-recipe"])     # refused before any model is built
    assert exit_.value.code == 2
    fid = {"top1_agreement": 0.947, "top5_containment": 1.0, "output_sqnr_db": 22.55}
    table = markdown([{"recipe": "default", "target": "executorch", "quantize_cpu_s": 24.5, "fidelity": fid,
                       "fidelity_first_200": {**fid, "top1_agreement": 0.965}}], 200)
    assert table.splitlines()[2] == "| executorch | default | 0.947 | 1.000 | 22.55 | 0.965 | 24.5 |"
