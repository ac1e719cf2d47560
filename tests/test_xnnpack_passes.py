"""converters/xnnpack_passes.py: leaving out XNNPACK pattern passes that cannot match must not change any .pte."""

from __future__ import annotations

import pytest
import tiny_convnet as tiny
import torch
import torch.nn.functional as F

from lwdeploy.converters.xnnpack_passes import graph_aware_xnnpack_passes, no_pattern_can_match


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


def _edge_graph(model, x):
    from executorch.exir import to_edge

    return to_edge(torch.export.export(model.eval(), (x,))).exported_program().graph


def _skipped(model, x) -> set[str]:
    from executorch.backends.xnnpack._passes import XNNPACKPassManager

    graph = _edge_graph(model, x)
    return {p.__name__ for p in XNNPACKPassManager(None).passes if no_pattern_can_match(p, graph)}


def test_pattern_passes_are_skipped_only_when_no_pattern_can_match():
    x = tiny.images(1, seed=1)
    assert _skipped(tiny.build(), x) == {"ConvertToUpsampleBilinear2d", "ConvertToSDPAPass"}
    assert _skipped(_Upsample(), x) == {"ConvertToSDPAPass"}


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


@pytest.mark.parametrize("case", ["tiny-int8", "upsample", "attention"])
def test_pte_bytes_are_identical_with_graph_aware_passes(case):
    torch.manual_seed(0)
    x = tiny.images(1, seed=1)
    model = {"tiny-int8": tiny.build, "upsample": _Upsample, "attention": _Attention}[case]().eval()
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
