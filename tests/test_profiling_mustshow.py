"""The issue's acceptance check on real zoo artifacts (heavy: exports ghostnet_100 at 224 twice).

`lwdeploy profile ghostnet_int8.tflite` and `… .pte` on the host: layer times sum to within 15% of the measured
total, and >= 90% of the time is attributed to named PyTorch modules."""

import json

import pytest

from lwdeploy.cli import main
from lwdeploy.profiling.report import coverage, validate_report

pytestmark = pytest.mark.heavy


@pytest.fixture(scope="module")
def ghostnet():
    import torch

    from lwdeploy.models import create

    model = create("ghostnet_100")
    example = (torch.randn(1, 3, 224, 224),)
    calib = [torch.randn(1, 3, 224, 224) for _ in range(4)]
    return model, example, calib


def _check(path, model, tmp_path):
    out = tmp_path / (path.name + ".json")
    assert main(["profile", str(path), "--runs", "50", "--warmup", "10", "--out", str(out)]) == 0
    report = validate_report(json.loads(out.read_text()))
    cov = coverage(report)
    print(path.name, report["total_ms"], report["layers_sum_ms"], cov)
    assert abs(cov["layers_over_total"] - 1) <= 0.15
    assert cov["named_fraction"] >= 0.90
    assert {l["module"] for l in report["layers"] if l["module"]} <= {n for n, _ in model.named_modules()}


def test_ghostnet_int8_tflite(ghostnet, tmp_path):
    import litert_torch
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    model, example, calib = ghostnet
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    prepared = prepare_pt2e(torch.export.export(model, example).module(), quantizer)
    for x in calib:
        prepared(x)
    path = tmp_path / "ghostnet_int8.tflite"
    litert_torch.convert(convert_pt2e(prepared, fold_quantize=False), example,
                         quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(str(path))
    _check(path, model, tmp_path)


def test_ghostnet_int8_pte(ghostnet, tmp_path):
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    model, example, calib = ghostnet
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(model, example).module(), quantizer)
    for x in calib:
        prepared(x)
    ep = torch.export.export(convert_pt2e(prepared), example)
    program = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()], generate_etrecord=True).to_executorch()
    path = tmp_path / "ghostnet_int8.pte"
    path.write_bytes(program.buffer)
    program.get_etrecord().save(str(tmp_path / "ghostnet_int8.etrecord"))
    _check(path, model, tmp_path)
