"""converters/xnnpack_passes.py: leaving out XNNPACK passes that cannot edit the graph must not change any .pte."""

from __future__ import annotations

import pytest
import tiny_convnet as tiny
import torch
import torch.nn.functional as F

from lwdeploy.converters.xnnpack_passes import PATTERN_SENTINELS, _call_targets, _pattern_passes, \
    graph_aware_xnnpack_passes, may_edit


class _Upsample(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return F.interpolate(self.conv(x), scale_factor=2, mode="bilinear", align_corners=False).mean((2, 3))


class _Attention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Conv2d(3, 16, 4, stride=4)
        self.qkv = torch.nn.Linear(16, 48)

    def forward(self, x):
        q, k, v = self.qkv(self.embed(x).flatten(2).transpose(1, 2)).chunk(3, dim=-1)
        return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None]).mean((1, 2))


class _GatedOps(torch.nn.Module):
    """Operators some gated passes edit: batch norm, a 6-input cat, conv1d (and PReLU, max-pool: see below)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 12, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(12)
        self.act = torch.nn.PReLU(12)
        self.pool = torch.nn.MaxPool2d(3, 2, 1)
        self.conv1d = torch.nn.Conv1d(12, 8, 3, padding=1)

    def forward(self, x):
        y = self.pool(self.act(self.bn(self.conv(x))))
        y = torch.cat([y[:, 2 * i:2 * i + 2] for i in range(6)], dim=1)
        return self.conv1d(y.flatten(2)).mean(-1)


def _preprocess_graph(model, x):
    """The graph XNNPACK's preprocess hands its first pass (what the gates see, before any pass ran)."""
    import executorch.backends.xnnpack.xnnpack_preprocess as preprocess
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    seen = []
    base = preprocess.XNNPACKPassManager

    class Recording(base):
        def __init__(self, exported_program, passes=None):
            super().__init__(exported_program, passes)
            seen.append(exported_program.graph_module.graph)

    preprocess.XNNPACKPassManager = Recording
    try:
        to_edge_transform_and_lower(torch.export.export(model.eval(), (x,)), partitioner=[XnnpackPartitioner()])
    finally:
        preprocess.XNNPACKPassManager = base
    assert len(seen) == 1, "one delegated partition expected"
    return seen[0]


def _skipped(model, x) -> set[str]:
    from executorch.backends.xnnpack._passes import XNNPACKPassManager

    graph = _preprocess_graph(model, x)
    return {p.__name__ for p in XNNPACKPassManager(None).passes if not may_edit(p, graph)}


GATED = {"DimOrderOpsRevertPass", "ConvertToUpsampleBilinear2d", "ConvertToSDPAPass", "Conv1dUnsqueezePass",
         "PReLUReshapePass", "RemoveGetItemPass", "DecomposeConcatenate", "FuseBatchNormPass", "DecomposeBatchNorm",
         "PropagateCustomMetaPass"}


def test_passes_are_skipped_only_when_their_operators_are_absent():
    x = tiny.images(1, seed=1)
    tiny_opens = GATED - _skipped(tiny.build(), x)
    assert not tiny_opens & {"ConvertToUpsampleBilinear2d", "ConvertToSDPAPass", "Conv1dUnsqueezePass",
                             "PReLUReshapePass", "DecomposeConcatenate", "PropagateCustomMetaPass"}
    assert GATED - _skipped(_Upsample(), x) - tiny_opens == {"ConvertToUpsampleBilinear2d"}
    # PReLU and MaxPool2d reach XNNPACK as aten.prelu / aten.max_pool2d, which PReLUReshapePass (it edits
    # _prelu_kernel) and RemoveGetItemPass (max_pool2d_with_indices, max.dim) leave alone: their gates stay shut
    assert GATED - _skipped(_GatedOps(), x) == {"FuseBatchNormPass", "DecomposeBatchNorm", "DecomposeConcatenate",
                                                "Conv1dUnsqueezePass"}


def test_every_pattern_graph_calls_its_sentinel():
    # the sentinel gate is only sound while every pattern of the pass calls that operator
    for pass_cls, patterns in _pattern_passes().items():
        sentinel = PATTERN_SENTINELS[pass_cls.__name__]
        for g in patterns():
            assert sentinel in {getattr(t, "__name__", "") for t in _call_targets(g.graph)}, pass_cls.__name__


def _pte_bytes(model, x, graph_aware: bool, int8: bool = False) -> bytes:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    if int8:
        from lwdeploy.quantization import quantize

        model = quantize(model, x, "executorch", list(tiny.images(8, seed=2).split(1))).module
    with graph_aware_xnnpack_passes(enabled=graph_aware):
        ep = torch.export.export(model, (x,))
        edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
        return edge.to_executorch().buffer


@pytest.mark.parametrize("case", ["tiny-int8", "upsample", "attention", "gated-ops"])
def test_pte_bytes_are_identical_with_graph_aware_passes(case):
    torch.manual_seed(0)
    x = tiny.images(1, seed=1)
    model = {"tiny-int8": tiny.build, "upsample": _Upsample, "attention": _Attention,
             "gated-ops": _GatedOps}[case]().eval()
    int8 = case == "tiny-int8"
    assert _pte_bytes(model, x, True, int8) == _pte_bytes(model, x, False, int8)


def test_pass_manager_is_restored_after_the_block():
    import executorch.backends.xnnpack.xnnpack_preprocess as preprocess

    original = preprocess.XNNPACKPassManager
    with pytest.raises(RuntimeError), graph_aware_xnnpack_passes():
        with graph_aware_xnnpack_passes():
            assert preprocess.XNNPACKPassManager is not original
        assert preprocess.XNNPACKPassManager is not original  # still active after an inner block ends
        raise RuntimeError("boom")
    assert preprocess.XNNPACKPassManager is original
