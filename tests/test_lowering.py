"""Lowering rewrites blocks for a runtime; it must compute the same function in float and leave the caller's
model alone. The structural effect (no TRANSPOSE / PAD / QUANTIZE islands in the .tflite) is checked by
the heavy test at the bottom, which converts a small hard-swish + SE + stride-2 network."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import lwdeploy.models as zoo
from lwdeploy.errors import LwdeployError
from lwdeploy.models import layers
from lwdeploy.quantization.lowering import (MAX_DW_TAPS, ExcludePadAvgPool2d, IncludePadAvgPool2d,
                                            AvgPoolDepthwiseConv, DepthwiseUpsample, QuantHardSigmoid, QuantHardSwish, ScaledReLU6,
                                            SpaceToDepthConv,
                                            TFSameConv2d, TiledDepthwiseConv2d, _is_same, lower, rewrites)

ZOO_SMALL = ["mobilenet_v3_small_100", "mobilenet_v3_large_100", "ghostnet_100", "efficientnet_lite0",
             "mobilenet_v2_100"]


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _random_batchnorm_statistics(net: nn.Module) -> None:
    """Non-trivial statistics and affine terms in every BatchNorm2d, or a fold would be an identity."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-1, 1)


def _outside_xnnpack(model: nn.Module, x: torch.Tensor) -> list[str]:
    """The ops ExecuTorch's XNNPACK partitioner leaves outside its delegate in `model`'s float program."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    edge = to_edge_transform_and_lower(torch.export.export(model, (x,)), partitioner=[XnnpackPartitioner()])
    return [str(n.target) for n in edge.exported_program().graph.nodes if n.op == "call_function"
            and "executorch_call_delegate" not in str(n.target) and "getitem" not in str(n.target)]


@pytest.mark.parametrize("name", ZOO_SMALL)
@pytest.mark.parametrize("target,int8", [("tflite", True), ("tflite", False), ("executorch", True)])
def test_lowered_zoo_model_is_float_equivalent(name, target, int8):
    torch.manual_seed(0)
    model = zoo.create(name)
    x = torch.randn(1, 3, 64, 64)       # even size: every stride-2 conv takes the grown-kernel path
    with torch.no_grad():
        ref = model(x)
        out = lower(model, target, int8=int8)(x)
        grown = lower(model, target, int8=int8, tf_same_kernels=True)(x)
    assert _rel_err(out, ref) < 1e-5 and _rel_err(grown, ref) < 1e-5


def test_lower_returns_a_copy_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = zoo.create("mobilenet_v3_small_100")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kinds = [type(m) for m in model.modules()]
    lowered = lower(model, "tflite")
    assert lowered is not model
    assert [type(m) for m in model.modules()] == kinds
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # and the copy really was rewritten
    assert not any(isinstance(m, (layers.HardSwish, layers.HardSigmoid)) for m in lowered.modules())
    assert any(isinstance(m, QuantHardSwish) for m in lowered.modules())
    assert any(isinstance(m, ScaledReLU6) for m in lowered.modules())
    assert not any(isinstance(m, TFSameConv2d) for m in lowered.modules())     # opt-in only (slower on XNNPACK)
    assert any(isinstance(m, TFSameConv2d) for m in lower(model, "tflite", tf_same_kernels=True).modules())


def test_executorch_lowering_keeps_pytorch_padding():
    lowered = lower(zoo.create("mobilenet_v2_100"), "executorch", tf_same_kernels=True)
    assert not any(isinstance(m, TFSameConv2d) for m in lowered.modules())   # XNNPACK pads inside the conv


def test_float_lowering_uses_native_hardswish():
    lowered = lower(zoo.create("mobilenet_v3_small_100"), "tflite", int8=False)
    assert any(isinstance(m, nn.Hardswish) for m in lowered.modules())
    assert not any(isinstance(m, QuantHardSwish) for m in lowered.modules())


def test_unknown_target_is_a_user_error():
    with pytest.raises(LwdeployError):
        lower(nn.Conv2d(3, 3, 1), "onnx")


@pytest.mark.parametrize("act_cls,ref", [(QuantHardSwish, nn.Hardswish()), (QuantHardSigmoid, nn.Hardsigmoid())])
@pytest.mark.parametrize("shape", [(2, 8, 5, 5), (4, 7)])
def test_activation_forms_match_torch(act_cls, ref, shape):
    x = torch.linspace(-8, 8, int(torch.tensor(shape).prod())).reshape(shape)
    torch.testing.assert_close(act_cls()(x), ref(x), atol=1e-6, rtol=0)
    assert act_cls()(x).shape == x.shape    # 4-D constants must not broadcast a 2-D input up to 4-D


def test_torch_activations_of_user_models_are_rewritten():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Hardswish(), nn.Conv2d(8, 8, 1), nn.Hardsigmoid(),
                          nn.Hardtanh(0.0, 6.0))
    x = torch.randn(1, 3, 16, 16) * 4
    for target, hardswish in (("tflite", QuantHardSwish), ("executorch", nn.Hardswish)):
        lowered = lower(model, target)
        kinds = [type(m) for m in lowered]
        # ExecuTorch's XNNPACK runs the native hard-swish in int8 (lowering.py); LiteRT's does not
        assert kinds[1] is hardswish and kinds[3] is QuantHardSigmoid and kinds[4] is nn.ReLU6, target
        torch.testing.assert_close(lowered(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k,s,size,groups", [(k, s, n, g) for k, s, n, g in itertools.product(
    (3, 5, 7), (2, 3), (7, 8, 14, 15, 16, 112), (1, 4))])
def test_tf_same_conv_equals_the_original(k, s, size, groups):
    torch.manual_seed(k * 100 + s * 10 + size)
    conv = nn.Conv2d(4, 8, k, s, k // 2, groups=groups, bias=True)
    same = TFSameConv2d.from_conv(conv)
    x = torch.randn(2, 4, size, size)
    torch.testing.assert_close(same(x), conv(x), atol=1e-5, rtol=1e-5)


def test_grown_kernel_is_tf_same_where_the_original_is_not():
    # 3×3/2 with pad 1 on 224 is not TF SAME (which pads 0 before, 1 after) → grow; on 7 it already is.
    conv = TFSameConv2d(3, 3, 3, 2, 1)
    assert conv._grown(224, 0) is True and _is_same(224, 4, 2, 1, 112)
    assert conv._grown(7, 0) is False
    assert TFSameConv2d(3, 3, 5, 2, 2)._grown(112, 0) is True


def test_symmetric_explicit_pad_folds_into_the_conv():
    torch.manual_seed(0)
    model = nn.Sequential(nn.ZeroPad2d(1), nn.Conv2d(3, 4, 3, 1, 0), nn.ReLU(), nn.ZeroPad2d((0, 1, 0, 1)),
                          nn.Conv2d(4, 4, 3, 2, 0))
    lowered = lower(model, "tflite")
    assert isinstance(lowered[0], nn.Identity) and lowered[1].padding == (1, 1)
    assert isinstance(lowered[3], nn.ZeroPad2d)          # asymmetric (TF SAME) pad is left for the converter
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(lowered(x), model(x), atol=1e-5, rtol=1e-5)


def test_se_gate_fold_moves_the_plus_three_into_the_bias():
    torch.manual_seed(0)
    se = layers.SqueezeExcite(16, 8)
    model = nn.Sequential(se)
    lowered = lower(model, "executorch")
    assert isinstance(lowered[0].gate, ScaledReLU6)
    torch.testing.assert_close(lowered[0].fc2.bias, se.fc2.bias + 3.0)
    x = torch.randn(2, 16, 5, 5)
    torch.testing.assert_close(lowered(x), model(x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("k,s,p,size", [(3, 2, 1, 16), (3, 2, 1, 15), (3, 1, 1, 7), (5, 2, 2, 9), (2, 2, 1, 8)])
def test_exclude_pad_avg_pool_is_rewritten_for_tflite_float_only(k, s, p, size):
    pool = nn.AvgPool2d(k, s, p, count_include_pad=False)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), pool)
    lowered = lower(model, "tflite", int8=False)
    assert isinstance(lowered[1], ExcludePadAvgPool2d)
    x = torch.randn(2, 3, size, size)
    torch.testing.assert_close(lowered(x), model(x), atol=1e-6, rtol=1e-5)
    assert type(lower(model, "tflite")[1]) is nn.AvgPool2d           # int8: tflite_int8.py rewrites it itself
    assert type(lower(model, "executorch", int8=False)[1]) is nn.AvgPool2d
    assert type(lower(nn.Sequential(nn.AvgPool2d(3, 2, 1)), "tflite", int8=False)[0]) is nn.AvgPool2d


@pytest.mark.parametrize("k,s,p,size", [(3, 2, 1, 16), (3, 2, 1, 15), (3, 1, 1, 9), (5, 2, 2, 14)])
def test_executorch_include_pad_avg_pool_is_pad_then_pool(k, s, p, size):
    """XNNPACK's average pooling leaves padding out of the count: ExecuTorch's partitioner refuses
    AvgPool2d(count_include_pad=True) with padding (DiCENet: 3 pools outside, 4 partitions)."""
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.AvgPool2d(k, s, p))
    x = torch.randn(2, 3, size, size)
    lowered = lower(model, "executorch", int8=False)
    assert isinstance(lowered[1], IncludePadAvgPool2d)
    torch.testing.assert_close(lowered(x), model(x), atol=1e-6, rtol=1e-5)
    # int8: XNNPACK cannot load an int8 PAD there; the pool is the depthwise conv it is (weights 1/k²)
    conv = lower(model, "executorch", example=x)[1]
    assert isinstance(conv, AvgPoolDepthwiseConv) and conv.groups == conv.in_channels == 4
    torch.testing.assert_close(lower(model, "executorch", example=x)(x), model(x), atol=1e-6, rtol=1e-5)
    assert type(lower(model, "tflite", int8=False)[1]) is nn.AvgPool2d      # PAD + AVERAGE_POOL_2D already
    unpadded = nn.Sequential(nn.AvgPool2d(2, 2))
    assert type(lower(unpadded, "executorch", int8=False)[0]) is nn.AvgPool2d


def test_executorch_int8_unpadded_avg_pool_is_a_depthwise_conv():
    # XNNPACK has no int8 average pooling: CondenseNet's 2×2 transition pools ran in float between Converts
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.AvgPool2d(2), nn.Conv2d(4, 5, 1), nn.AvgPool2d(3, 2))
    x = torch.randn(2, 3, 17, 17)
    lowered = lower(model, "executorch", example=x)
    assert [type(lowered[i]) for i in (1, 3)] == [AvgPoolDepthwiseConv] * 2
    assert (lowered[1].in_channels, lowered[3].in_channels) == (4, 5)
    torch.testing.assert_close(lowered(x), model(x), atol=1e-6, rtol=1e-5)
    # a global pool (64 taps) would be an IGEMM as a conv; a pool object used at two widths has no one conv
    shared = nn.AvgPool2d(2)
    kept = nn.Sequential(nn.Conv2d(3, 4, 1), shared, nn.Conv2d(4, 6, 1), shared, nn.AvgPool2d(12))
    out = lower(kept, "executorch", example=torch.randn(1, 3, 48, 48))
    assert [type(out[i]) for i in (1, 3, 4)] == [nn.AvgPool2d] * 3


@pytest.mark.parametrize("int8", [False, True])
def test_executorch_include_pad_avg_pool_is_delegated(tmp_path, int8):
    pytest.importorskip("executorch", reason="executorch not installed")
    from lwdeploy.converters import get_converter
    from lwdeploy.converters.base import ExportRequest
    from lwdeploy.models import get_info

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(3, 2, 1), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(1, 3, 16, 16)
    req = ExportRequest(lower(model, "executorch", int8=int8, example=x), x, get_info("mobilenet_v2_100"),
                        tmp_path / "m.pte", int8=int8, calib=[torch.randn(1, 3, 16, 16) for _ in range(4)] if int8 else [])
    conv = get_converter("executorch")
    result = conv.convert(req)
    assert result.details["delegate_partitions"] == 1 and not result.details["ops_outside_delegate"], result.details
    assert conv.verify(result.path, x, model(x)).checks["loads"] == "ok"


def _aten_ops(model: nn.Module, x: torch.Tensor) -> set[str]:
    ep = torch.export.export(model.eval(), (x,), strict=False)
    return {n.target.__name__.split(".")[0] for n in ep.graph.nodes if n.op == "call_function"
            and hasattr(n.target, "__name__")}


def test_shufflenet_forms_the_delegates_take():
    """v2: the channel split is two slices (ExecuTorch left split_with_sizes_copy outside XNNPACK: 14
    partitions in shufflenet_v2_050). v1: the stride-2 ReLU runs per branch, so no ReLU reads a concat (TFLite
    int8 ran that one on the reference kernel)."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    assert "split_with_sizes" not in _aten_ops(zoo.create("shufflenet_v2_050", num_classes=10), x)
    v1 = zoo.create("shufflenet_v1_g3", num_classes=10).eval()
    ep = torch.export.export(v1, (x,), strict=False)
    cats = [n for n in ep.graph.nodes if n.op == "call_function" and "cat" in str(n.target)]
    assert cats and not any("relu" in str(u.target) for n in cats for u in n.users)


@pytest.mark.heavy
@pytest.mark.parametrize("k,s,size", [(k, s, n) for k, s, n in itertools.product((7, 9, 11), (1, 2), (7, 14, 15, 16))])
def test_tiled_depthwise_equals_the_original(k, s, size):
    torch.manual_seed(k * 100 + s * 10 + size)
    conv = nn.Conv2d(6, 6, k, s, k // 2, groups=6, bias=True).double()
    tiled = TiledDepthwiseConv2d(conv).double()
    assert all(t.kernel_size[0] * t.kernel_size[1] <= MAX_DW_TAPS for t in tiled.tiles)
    assert all(i0 * s < k and j0 * s < k for i0, j0 in tiled.offsets)
    x = torch.randn(2, 6, size, size, dtype=torch.float64)
    torch.testing.assert_close(tiled(x), conv(x), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("target", ["tflite", "executorch"])
def test_mixnet_large_depthwise_convs_are_tiled_with_their_batchnorm_folded(target):
    torch.manual_seed(0)
    model = zoo.create("mixnet_s").eval()
    _random_batchnorm_statistics(model)
    lowered = lower(model, target)
    convs = [m for m in lowered.modules() if type(m) is nn.Conv2d and m.groups == m.in_channels > 1]
    assert convs and max(c.kernel_size[0] * c.kernel_size[1] for c in convs) <= MAX_DW_TAPS
    assert sum(isinstance(m, TiledDepthwiseConv2d) for m in lowered.modules()) == 14
    assert sum(isinstance(m, nn.BatchNorm2d) for m in lowered.modules()) < \
        sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert _rel_err(lowered(x), model(x)) < 1e-5
    assert lower(model, "coreml").state_dict().keys() == model.state_dict().keys()  # Core ML: untouched


@pytest.mark.parametrize("int8", [False, True])
@pytest.mark.parametrize("target", ["tflite", "executorch"])
def test_batchnorm_of_a_cat_of_convs_is_folded_into_them(target, int8):
    """MixNet's mixed depthwise conv (3×3 + 5×5, no tile) and NAS cells' FactorizedReduce end in a BN of a cat:
    after lowering no BN is left there, float included, and the function is the same."""
    from lwdeploy.models.families.nas_cells import FactorizedReduce
    from lwdeploy.models.mbconv import MixedDepthwise

    torch.manual_seed(0)
    mixed = layers.ConvBNAct(12, 12, act="relu")
    mixed.conv = MixedDepthwise(12, (3, 5), 1)         # as the MixNet builder makes it
    net = nn.Sequential(mixed, FactorizedReduce(12, 10)).eval()
    _random_batchnorm_statistics(net)
    lowered = lower(net, target, int8=int8)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in lowered.modules())
    assert all(isinstance(m, nn.BatchNorm2d) for m in (net[0].bn, net[1].bn))   # the caller's copy is untouched
    x = torch.randn(2, 12, 16, 16)
    with torch.no_grad():
        assert _rel_err(lowered(x), net(x)) < 1e-5


@pytest.mark.parametrize("r,bias", [(2, True), (4, False)])
def test_depthwise_transposed_conv_becomes_conv_and_pixel_shuffle(r, bias):
    """EdgeViT's local propagation, ConvTranspose2d(C, C, r, r, groups=C): rewritten for TFLite and ExecuTorch,
    same function; a transposed conv of another shape stays as it is."""
    torch.manual_seed(r)
    up = nn.ConvTranspose2d(6, 6, r, r, groups=6, bias=bias)
    other = nn.ConvTranspose2d(6, 6, 3, 2, padding=1, groups=6)
    net = nn.Sequential(up, other).eval()
    x = torch.randn(2, 6, 5, 7)
    for target in ("tflite", "executorch"):
        lowered = lower(net, target, int8=False)
        assert isinstance(lowered[0], DepthwiseUpsample) and type(lowered[1]) is nn.ConvTranspose2d
        with torch.no_grad():
            assert _rel_err(lowered(x), net(x)) < 1e-6
    assert type(lower(net, "coreml")[0]) is nn.ConvTranspose2d


def test_depthwise_upsample_is_not_one_transpose_conv_per_channel_on_tflite(tmp_path):
    pytest.importorskip("litert_torch", reason="litert-torch not installed")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))     # benchmarks/ is a folder, not a package
    from benchmarks.int8_bench import export_tflite, tflite_op_counts

    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ConvTranspose2d(8, 8, 2, 2, groups=8)).eval()
    x = torch.randn(1, 3, 8, 8)
    before = tflite_op_counts(export_tflite(net, x, tmp_path / "a.tflite", int8=False))
    after = tflite_op_counts(export_tflite(lower(net, "tflite", int8=False), x, tmp_path / "b.tflite", int8=False))
    assert before.get("TRANSPOSE_CONV", 0) == 8                    # litert-torch: one per channel
    assert after.get("TRANSPOSE_CONV", 0) == 0 and after.get("SLICE", 0) == 0


def test_int8_tflite_has_no_transpose_pad_or_float_island():
    """A hard-swish/SE/stride-2 net, quantized with litert-torch's PT2E quantizer: after lowering the .tflite
    has TRANSPOSEs only at the NCHW input/output and no QUANTIZE/DEQUANTIZE inside; before lowering it has both."""
    pytest.importorskip("litert_torch", reason="litert-torch not installed")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))     # benchmarks/ is a folder, not a package
    from benchmarks.int8_bench import export_tflite, tflite_op_counts

    torch.manual_seed(0)
    model = nn.Sequential(layers.ConvBNAct(3, 16, 3, 2, act="hswish"),
                          layers.InvertedResidual(16, 16, 3, 2, 32, act="hswish", se_channels=8),
                          layers.InvertedResidual(16, 16, 3, 1, 32, act="hswish", se_channels=8)).eval()
    x = torch.randn(1, 3, 64, 64)
    calib = [torch.randn(1, 3, 64, 64) for _ in range(4)]
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        vendor = tflite_op_counts(export_tflite(model, x, Path(d) / "v.tflite", int8=True, calib=calib))
        ours = tflite_op_counts(export_tflite(lower(model, "tflite"), x, Path(d) / "l.tflite", int8=True,
                                              calib=calib))
    assert vendor["TRANSPOSE"] > 2
    assert ours["TRANSPOSE"] == 2                             # NCHW input and NCHW 4-D output
    assert ours["QUANTIZE"] + ours["DEQUANTIZE"] <= 2         # at most the float input/output edges


@pytest.mark.heavy
def test_same_seed_gives_the_same_int8_artifact_bytes():
    """Calibration crops are drawn from a seeded generator and PT2E is deterministic: same seed, same bytes."""
    pytest.importorskip("litert_torch", reason="litert-torch not installed")
    import sys
    import tempfile
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.int8_bench import export_tflite
    from lwdeploy.quantization.calibration import real_photos

    def build(seed: int) -> bytes:
        torch.manual_seed(0)
        model = nn.Sequential(layers.ConvBNAct(3, 8, 3, 2, act="hswish"),
                              layers.InvertedResidual(8, 8, 3, 1, 16, act="hswish", se_channels=8)).eval()
        images = real_photos(32, (0.5,) * 3, (0.5,) * 3, n_calib=4, n_heldout=1, seed=seed)
        with tempfile.TemporaryDirectory() as d:
            return export_tflite(lower(model, "tflite"), images.heldout[:1], Path(d) / "m.tflite", int8=True,
                                 calib=images.calib_batches()).read_bytes()

    first = build(1)
    assert build(1) == first
    assert build(2) != first          # and the seed really reaches the calibration set


class _TokensAndMap(nn.Module):
    """A map normalised over its channels (EdgeViT's ChannelLayerNorm), then tokens through a LayerNorm."""

    def __init__(self):
        super().__init__()
        from lwdeploy.models.families.edgevit import ChannelLayerNorm

        self.embed = nn.Conv2d(3, 12, 4, 4)
        self.map_norm = ChannelLayerNorm(12)
        self.norm = nn.LayerNorm(12, eps=1e-6)
        self.fc = nn.Linear(12, 5)
        for norm in (self.map_norm, self.norm):
            norm.weight.data.uniform_(0.5, 1.5)
            norm.bias.data.uniform_(-1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.map_norm(self.embed(x)).flatten(2).transpose(1, 2)
        return self.fc(self.norm(t))


def test_executorch_layernorms_are_xnnpack_ops_with_the_same_function():
    from lwdeploy.quantization.lowering import ConvMeanLayerNorm, LinearMeanLayerNorm

    torch.manual_seed(0)
    net = _TokensAndMap().eval()
    lowered = lower(net, "executorch", int8=False)
    assert isinstance(lowered.map_norm, ConvMeanLayerNorm) and isinstance(lowered.norm, LinearMeanLayerNorm)
    assert type(lower(net, "tflite", int8=False).norm) is nn.LayerNorm      # litert-torch decomposes its own
    x = torch.randn(2, 3, 16, 16) * 3 + 1
    with torch.no_grad():
        assert _rel_err(lowered(x), net(x)) < 1e-5


def test_executorch_layernorms_run_inside_one_xnnpack_partition_and_stay_float_in_int8():
    pytest.importorskip("executorch", reason="executorch not installed")
    from lwdeploy.quantization import quantize

    torch.manual_seed(0)
    net, x = _TokensAndMap().eval(), torch.randn(1, 3, 16, 16)
    assert any("layer_norm" in t for t in _outside_xnnpack(net, x))        # the native op is not delegated
    assert _outside_xnnpack(lower(net, "executorch", int8=False), x) == []
    q = quantize(lower(net, "executorch"), x, "executorch", [torch.randn(1, 3, 16, 16) for _ in range(4)])
    assert q.scheme["float_layernorm"]["layers"] == ["map_norm", "norm"]


def test_attention_is_plain_attention_and_runs_inside_xnnpack():
    """models.layers.multi_head_attention (MobileViT, EdgeViT): the textbook 4-D formulation's values, with no op
    that ExecuTorch's XNNPACK partitioner leaves outside (a 4-D `@` left expand/squeeze copies, unbind a select)."""
    pytest.importorskip("executorch", reason="executorch not installed")
    from lwdeploy.models.layers import multi_head_attention

    torch.manual_seed(0)
    qkv, heads, scale = torch.randn(2, 10, 3 * 12), 3, 0.5
    q, k, v = qkv.unflatten(-1, (3, heads, -1)).permute(2, 0, 3, 1, 4).unbind(0)
    reference = ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
    torch.testing.assert_close(multi_head_attention(qkv, heads, scale), reference.transpose(1, 2).flatten(2))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(12, 36)

        def forward(self, x):
            return multi_head_attention(self.qkv(x), heads, scale)

    assert _outside_xnnpack(Block().eval(), torch.randn(2, 10, 12)) == []


def test_tflite_float_one_by_one_pool_is_a_strided_depthwise_conv():
    """EdgeViT's sampler, AvgPool2d(1, s), is a strided subsample; LiteRT's XNNPACK delegate runs no 1×1 pool."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.AvgPool2d(1, 2), nn.AvgPool2d(3, 1)).eval()
    lowered = lower(net, "tflite", int8=False, example=torch.randn(1, 3, 16, 16))
    assert isinstance(lowered[1], AvgPoolDepthwiseConv) and lowered[1].stride == (2, 2)
    assert type(lowered[2]) is nn.AvgPool2d                    # XNNPACK runs a real float pool itself
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert _rel_err(lowered(x), net(x)) < 1e-6


class _PreActivation(nn.Module):
    """A dense layer: cat → BN → ReLU → conv (the BN has no conv of its own), after a ConvBNAct (whose BN folds)."""

    def __init__(self):
        super().__init__()
        self.stem = layers.ConvBNAct(3, 8, 3, act="relu")
        self.norm = nn.BatchNorm2d(11)
        self.conv = nn.Conv2d(11, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.relu(self.norm(torch.cat([self.stem(x), x], dim=1))))


def test_tflite_float_standalone_batchnorm_is_a_depthwise_conv_and_a_conv_bn_stays():
    from lwdeploy.quantization.lowering import BatchNormDepthwise

    torch.manual_seed(0)
    net = _PreActivation().eval()
    _random_batchnorm_statistics(net)
    x = torch.randn(2, 3, 12, 12)
    lowered = lower(net, "tflite", int8=False, example=x[:1])
    assert isinstance(lowered.norm, BatchNormDepthwise) and type(lowered.stem.bn) is nn.BatchNorm2d
    assert type(lower(net, "executorch", int8=False).norm) is nn.BatchNorm2d   # XNNPACK's partitioner does this
    with torch.no_grad():
        assert _rel_err(lowered(x), net(x)) < 1e-5


def test_executorch_layernorm_forms_convert_to_core_ml():
    """`--target all --int8` hands ExecuTorch's lowering to Core ML too; coremltools' linear-bias fusion raised
    IndexError on ε added after the 1-wide variance linear, so ε is that layer's bias."""
    ct = pytest.importorskip("coremltools", reason="coremltools not installed")
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    lowered = lower(_TokensAndMap().eval(), "executorch", int8=False)
    program = torch.export.export(lowered, (x,)).run_decompositions({})
    mlmodel = ct.convert(program, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17)
    ops = {op.op_type for f in mlmodel._mil_program.functions.values() for op in f.operations}
    assert "rsqrt" in ops and "linear" in ops


@pytest.mark.parametrize("k,p,size", [(7, 3, (224, 224)), (7, 3, (227, 227)), (7, 0, (224, 224)), (7, 0, (227, 225)),
                                      (5, 2, (64, 64)), (5, 1, (64, 70)), (5, 1, (63, 63)), (3, 1, (32, 32)),
                                      (11, 5, (41, 41))])
def test_space_to_depth_conv_equals_the_original(k, p, size):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 16, k, 2, p)
    plan = SpaceToDepthConv.plan(k, p, size)
    assert plan is not None
    s2d = SpaceToDepthConv(conv, size, *plan)
    assert s2d.gather.in_channels == 3 and s2d.conv.in_channels == 12 and s2d.conv.stride == (1, 1)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        assert s2d(x).shape == conv(x).shape
        assert _rel_err(s2d(x), conv(x)) < 1e-5


def _seven_by_seven_stem_net(k: int = 7) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(layers.ConvBNAct(3, 16, k, 2, act="relu"), layers.ConvBNAct(16, 16, 1, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()


def test_int8_lowering_writes_a_large_rgb_stem_as_space_to_depth_and_only_that():
    net, x = _seven_by_seven_stem_net(), torch.randn(1, 3, 227, 227)
    _random_batchnorm_statistics(net)
    for target in ("tflite", "executorch"):
        lowered = lower(net, target, int8=True, example=x)
        assert isinstance(lowered[0].conv, SpaceToDepthConv)
        with torch.no_grad():
            assert _rel_err(lowered(x), net(x)) < 1e-5
        with pytest.raises(LwdeployError, match="planned for 227×227"):   # the paddings fit one input size
            lowered(torch.randn(1, 3, 224, 224))
    # float keeps the conv (slower in this form), Core ML is not lowered, a size is needed, 3×3 stems stay
    assert type(lower(net, "tflite", int8=False, example=x)[0].conv) is nn.Conv2d
    assert type(lower(net, "coreml", int8=True, example=x)[0].conv) is nn.Conv2d
    assert type(lower(net, "tflite", int8=True)[0].conv) is nn.Conv2d
    assert type(lower(_seven_by_seven_stem_net(3), "tflite", int8=True, example=x)[0].conv) is nn.Conv2d
    # one odd and one even side: no symmetric paddings give the original's output, so the stem stays
    assert SpaceToDepthConv.plan(7, 3, (227, 224)) is None
    assert type(lower(net, "tflite", int8=True, example=torch.randn(1, 3, 227, 224))[0].conv) is nn.Conv2d


def test_int8_tflite_space_to_depth_stem_is_a_12_channel_conv_with_no_extra_transpose(tmp_path):
    """The gather is a conv, so the image keeps its one NCHW → NHWC TRANSPOSE (pixel_unshuffle wrote three), no
    PAD is added, and the 7×7 conv becomes a 4×4 one on 12 channels."""
    pytest.importorskip("litert_torch", reason="litert-torch not installed")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))     # benchmarks/ is a folder, not a package
    from ai_edge_litert.interpreter import Interpreter

    from benchmarks.int8_bench import export_tflite, tflite_op_counts

    net, x = _seven_by_seven_stem_net(), torch.randn(1, 3, 64, 64)
    calib = [torch.randn(1, 3, 64, 64) for _ in range(4)]
    path = export_tflite(lower(net, "tflite", example=x), x, tmp_path / "s2d.tflite", int8=True, calib=calib)
    counts = tflite_op_counts(path)
    before = tflite_op_counts(export_tflite(net, x, tmp_path / "conv.tflite", int8=True, calib=calib))
    assert counts["TRANSPOSE"] == before["TRANSPOSE"] == 1 and counts["CONV_2D"] == 3
    assert counts.get("PAD", 0) <= before.get("PAD", 0)        # padding 3 is no TF "SAME": a PAD either way
    assert counts.get("QUANTIZE", 0) + counts.get("DEQUANTIZE", 0) <= 2
    it = Interpreter(str(path))
    shapes = {t["index"]: tuple(int(d) for d in t["shape"]) for t in it.get_tensor_details()}
    filters = [shapes[op["inputs"][1]] for op in it._get_ops_details() if op["op_name"] == "CONV_2D"]
    assert filters[:2] == [(12, 2, 2, 3), (16, 4, 4, 12)]                   # gather, then the regrouped 7×7


def test_rewrites_names_each_replaced_block_once_and_nothing_of_the_models_own():
    net, x = _seven_by_seven_stem_net(), torch.randn(1, 3, 64, 64)
    assert rewrites(net) == {}
    assert rewrites(lower(net, "tflite", int8=True, example=x)) == {"SpaceToDepthConv": ["0.conv"]}  # not its convs
    assert rewrites(lower(net, "tflite", int8=False, example=x)) == {}
