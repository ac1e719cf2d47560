"""AdaRound (quantization/adaround.py): learned rounding stays on the quantizers' int8 grid and beats nearest
rounding on the layer's output error over the calibration data."""

import torch
import torch.nn.functional as F
from torch import nn

from lwdeploy.quantization.adaround import adaround, first_layers, round_layer
from lwdeploy.quantization.bias_correction import int8_weight, weight_scale
from lwdeploy.quantization.bias_correction import _folded_weight


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6(),
                        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU6(),
                        nn.Conv2d(16, 24, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10)).eval()
    with torch.no_grad():   # non-trivial BN folding, so the write-back through the BN factor is exercised
        net[1].running_var.uniform_(0.5, 2.0)
        net[1].weight.uniform_(0.5, 1.5)
        net[1].running_mean.uniform_(-0.2, 0.2)
    return net


def _calib(n=24):
    g = torch.Generator().manual_seed(1)
    return [torch.rand(1, 3, 8, 8, generator=g) * 2 - 0.5 for _ in range(n)]   # not zero-mean, like photos


def _conv_out(net, path, weight, x):
    layer = dict(net.named_modules())[path]
    return F.conv2d(x, weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)


def test_rounded_weights_on_grid_with_unchanged_scale():
    net = _net()
    out, report = adaround(net, _calib(), iters=100)
    assert set(report) == {"0", "3", "5", "8"}
    for path, bn in (("0", "1"), ("3", None), ("5", None), ("8", None)):
        ref_mods, mods = dict(net.named_modules()), dict(out.named_modules())
        w0 = _folded_weight(ref_mods[path], ref_mods.get(bn) if bn else None)
        w = _folded_weight(mods[path], mods.get(bn) if bn else None)
        s = weight_scale(w)
        torch.testing.assert_close(s, weight_scale(w0), rtol=1e-6, atol=0)   # the observer finds the same scale
        q = w / s
        assert (q - q.round()).abs().max() < 1e-3                            # on the int8 grid: PT2E is lossless
        assert q.abs().max() <= 127 + 1e-3
        # every weight is floor or ceil of the float one: a rounding choice, not a new value
        step = q.round() - torch.floor(w0 / s)
        assert ((step == 0) | (step == 1)).all()
        torch.testing.assert_close(int8_weight(w), w, rtol=0, atol=1e-3 * float(s.min()))


def test_learned_rounding_beats_nearest_on_calibration_outputs():
    net = _net()
    calib = _calib()
    out, report = adaround(net, calib, iters=200)
    x = torch.cat(calib)
    # inputs of the depthwise conv (index 3) and the pointwise conv (index 5), as the float net computes them
    with torch.no_grad():
        a3 = net[:3](x)
        a5 = net[:5](x)
    improved = 0
    for path, inp in (("3", a3), ("5", a5)):
        w0 = dict(net.named_modules())[path].weight.detach()
        wl = dict(out.named_modules())[path].weight.detach()
        ref = _conv_out(net, path, w0, inp)
        err_nearest = float((_conv_out(net, path, int8_weight(w0), inp) - ref).pow(2).mean())
        err_learned = float((_conv_out(net, path, wl, inp) - ref).pow(2).mean())
        assert err_learned <= err_nearest * (1 + 1e-6)
        improved += err_learned < 0.97 * err_nearest
    assert improved >= 1, report            # a broken optimiser falls back to nearest everywhere


def test_round_layer_reduces_quadratic_error_on_correlated_inputs():
    # strongly correlated inputs: errors of neighbouring weights can cancel, which nearest rounding ignores
    g = torch.Generator().manual_seed(2)
    base = torch.randn(4096, 1, generator=g)
    x = base + 0.1 * torch.randn(4096, 64, generator=g)
    gram = (x.T @ x / len(x)).unsqueeze(0)
    w = torch.randn(32, 64, generator=g)
    learned, stats = round_layer(w, gram, 1, iters=300)
    assert stats["kept"] == "adaround"
    assert stats["err_adaround"] < 0.5 * stats["err_nearest"]
    s = weight_scale(w)
    assert ((learned / s) - (learned / s).round()).abs().max() < 1e-4


def test_export_adaround_needs_int8(cli, tmp_path):
    code, _, err = cli("export", "mobilenet_v3_small_100", "--adaround", "--out", tmp_path / "o")
    assert code == 2, err
    assert "add --int8" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_quantize_adaround_program_carries_learned_weights():
    # the PT2E program re-quantizes the learned rounding losslessly: its int8 weights equal adaround's
    from lwdeploy.quantization.pt2e import quantize

    net = _net()
    calib = [c for c in _calib(8)]
    qm = quantize(net, calib[0], "executorch", calib, weight_rounding="adaround", bias_correction=False)
    assert qm.scheme["weight_rounding"].startswith("adaround")
    rounded, _ = adaround(net, calib)
    want = {tuple(w.shape): w for w in (rounded[3].weight.detach(), rounded[5].weight.detach())}
    found = 0
    for node in qm.module.graph.nodes:       # folded int8 weights feed dequantize_per_channel
        if node.op == "call_function" and "dequantize_per_channel" in str(node.target):
            src = node.args[0]
            if src.op != "get_attr":
                continue
            q = getattr(qm.module, src.target)
            scale = getattr(qm.module, node.args[1].target)
            w = q.float() * scale.view(-1, *([1] * (q.dim() - 1)))
            if tuple(w.shape) in want:
                torch.testing.assert_close(w, want[tuple(w.shape)], rtol=0, atol=1e-6)
                found += 1
    assert found == 2


def test_first_layers_follow_the_forward_pass_not_the_module_order():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(4, 2)              # defined first, runs last
            self.stem = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.mid = torch.nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.head(self.mid(self.stem(x)).mean((2, 3)))

    net = Net().eval()
    assert first_layers(net, torch.randn(1, 3, 8, 8), 2) == ["stem", "mid"]
    assert first_layers(net, torch.randn(1, 3, 8, 8), 5) == ["stem", "mid", "head"]
    assert not net._forward_pre_hooks and not net.stem._forward_pre_hooks


def test_early_rounding_is_the_default_and_learns_only_the_first_layers():
    from lwdeploy.quantization import quantize

    net = _net()
    calib = _calib()
    early = quantize(net, calib[0], "tflite", calib, bias_correction=False)
    nearest = quantize(net, calib[0], "tflite", calib, bias_correction=False, weight_rounding="nearest")
    first = first_layers(net, calib[0], 3)
    assert early.scheme["weight_rounding"].startswith("early: ") and all(p in early.scheme["weight_rounding"]
                                                                        for p in first)
    assert nearest.scheme["weight_rounding"] == "nearest"
    rounded, report = adaround(net, calib, only=first)
    assert set(report) == set(first)                                  # `only` restricts AdaRound to them
    later = [p for p, m in net.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and p not in first]
    assert later and all(torch.equal(rounded.get_submodule(p).weight, net.get_submodule(p).weight) for p in later)


def test_executorch_float_for_speed_off_quantizes_the_stem_and_5x5_depthwise_convs():
    from lwdeploy.quantization import export_options, quantize

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU6(), nn.Conv2d(8, 8, 5, padding=2, groups=8),
                        nn.ReLU6(), nn.Conv2d(8, 16, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(16, 10)).eval()
    calib = _calib()
    fast = quantize(net, calib[0], "executorch", calib, **export_options({}))
    small = quantize(net, calib[0], "executorch", calib, **export_options({"float_for_speed": False}))
    assert fast.scheme["float_stem"]["layers"] == ["0"] and fast.scheme["float_depthwise"]["layers"] == ["2"]
    assert "float_stem" not in small.scheme and "float_depthwise" not in small.scheme, small.scheme
    # every conv of the small program reads an int8 weight: a dequantize feeds each convolution's weight input
    convs = [n for n in small.module.graph.nodes if n.op == "call_function" and "conv" in str(n.target)]
    assert len(convs) == 3 and all("dequantize" in str(c.args[1].target) for c in convs)
