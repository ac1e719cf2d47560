"""Quantization-aware distillation (quantization/distill.py): the fine-tuned int8 program is closer to float on
the images it trained on, its weights stay on the int8 grid, it is reproducible, and the caller's model is
left alone."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import tiny_convnet as tiny

from lwdeploy.errors import LwdeployError
from lwdeploy.quantization import quantize


def _output_sqnr(program, net, x) -> float:
    program = getattr(program, "module", program)
    with torch.no_grad():
        ref = net(x)
        out = torch.cat([program(xi[None]) for xi in x])
    return 10 * math.log10(float((ref ** 2).sum()) / float(((out - ref) ** 2).sum()))


def _int8_constants(gm) -> dict[str, torch.Tensor]:
    def get(target):
        value = gm
        for name in target.split("."):
            value = getattr(value, name)
        return value
    return {n.target: get(n.target) for n in gm.graph.nodes
            if n.op == "get_attr" and isinstance(get(n.target), torch.Tensor) and get(n.target).dtype == torch.int8}


@pytest.fixture(scope="module")
def net():
    return tiny.build()


def test_distill_brings_the_calibrated_program_closer_to_float(net):
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from lwdeploy.quantization import QUANTIZER_BUILDERS
    from lwdeploy.quantization.capture import capture
    from lwdeploy.quantization.distill import distill

    x = tiny.images(16, seed=2)
    quantizer, _, fold = QUANTIZER_BUILDERS["executorch"]()
    prepared = prepare_pt2e(capture(net, x[:1]), quantizer)
    with torch.no_grad():
        for xi in x:
            prepared(xi[None])
    plain = convert_pt2e(copy.deepcopy(prepared), fold_quantize=fold)
    info = distill(prepared, net, x, steps=30, lr=2e-2)
    tuned = convert_pt2e(prepared, fold_quantize=fold)
    assert info["weights_tuned"] == 8                               # 6 convs, 2 SE convs... every weight observer
    assert info["loss_first_last"][1] < info["loss_first_last"][0]
    assert 0 < info["mean_abs_change_in_int8_steps"] < 1            # re-decided roundings, not a retrain
    # measured: 34.7 → 36.1 dB (bias correction is not applied on this path, so there is more to recover)
    assert _output_sqnr(tuned, net, x) > _output_sqnr(plain, net, x) + 0.5


@pytest.mark.parametrize("target", ["executorch", "tflite"])
def test_quantize_distills_on_request_and_keeps_the_callers_model(target, net):
    calib = list(tiny.images(16, seed=2).split(1))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    # nearest rounding: with the default's learned rounding of the first layers this tiny net's int8 error is
    # already at the loss's printed precision, and the test is about distillation's plumbing
    plain = quantize(net, calib[0], target, calib, weight_rounding="nearest")
    tuned = quantize(net, calib[0], target, calib, weight_rounding="nearest", distill_steps=30)
    info = tuned.scheme["distillation"]
    assert plain.scheme["distillation"] == "off"
    assert info["steps"] == 30 and info["weights_tuned"] >= 5
    assert info["loss_first_last"][1] < info["loss_first_last"][0]
    assert _output_sqnr(tuned, net, torch.cat(calib)) > 25
    # still a static per-channel int8 program, and the float model (the teacher) is untouched
    ops = [str(n.target) for n in tuned.module.graph.nodes if n.op == "call_function"]
    assert any("dequantize_per_channel" in o for o in ops) and any("quantize_per_tensor" in o for o in ops)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())


def test_distillation_is_reproducible_and_weights_stay_int8(net):
    calib = list(tiny.images(8, seed=2).split(1))
    a = quantize(net, calib[0], "executorch", calib, distill_steps=5)
    b = quantize(net, calib[0], "executorch", calib, distill_steps=5)
    wa, wb = _int8_constants(a.module), _int8_constants(b.module)
    assert wa and wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)        # the same seed gives the same artifact


def test_negative_distillation_steps_is_a_clear_error(net):
    calib = list(tiny.images(2, seed=2).split(1))
    with pytest.raises(LwdeployError, match="negative"):
        quantize(net, calib[0], "executorch", calib, distill_steps=-1)
