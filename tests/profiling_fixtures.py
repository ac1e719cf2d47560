"""Tiny real artifacts for the profiling tests, built once per session with the real exporters
(litert-torch / executorch), from a small module tree whose names the reports must reproduce."""

from __future__ import annotations

import pytest


def tiny_net():
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn = nn.BatchNorm2d(cout)
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(self.bn(self.conv(x)))

    class TinyNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = Block(3, 16, 2)
            self.blocks = nn.Sequential(Block(16, 32, 1), Block(32, 32, 2), Block(32, 64, 1))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))

    torch.manual_seed(0)
    return TinyNet().eval(), (torch.randn(1, 3, 64, 64),)


@pytest.fixture(scope="session")
def tiny_tflite(tmp_path_factory):
    litert_torch = pytest.importorskip("litert_torch", reason="litert-torch is needed to build the test .tflite")
    model, example = tiny_net()
    path = tmp_path_factory.mktemp("tflite") / "tiny.tflite"
    litert_torch.convert(model, example).export(str(path))
    return path, model


@pytest.fixture(scope="session")
def tiny_pte(tmp_path_factory):
    pytest.importorskip("executorch", reason="executorch is needed to build the test .pte")
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    model, example = tiny_net()
    out = tmp_path_factory.mktemp("pte")
    edge = to_edge_transform_and_lower(torch.export.export(model, example), partitioner=[XnnpackPartitioner()],
                                       generate_etrecord=True)
    program = edge.to_executorch()
    (out / "tiny.pte").write_bytes(program.buffer)
    program.get_etrecord().save(str(out / "tiny.etrecord"))
    return out / "tiny.pte", model
