"""converters/provenance.py: sharing torch.fx NodeSource trees while converting must not change any artifact."""

from __future__ import annotations

import copy

import pytest
import tiny_convnet as tiny
import torch

from lwdeploy.converters.provenance import shared_node_provenance


def test_sharing_is_scoped_nests_and_restores_torch_behaviour():
    from torch.fx.traceback import NodeSource

    source = NodeSource(None, "a_pass")
    assert "__deepcopy__" not in NodeSource.__dict__
    assert copy.deepcopy(source) is not source
    with shared_node_provenance():
        assert copy.deepcopy([source])[0] is source  # shared by reference…
        with shared_node_provenance():
            assert copy.deepcopy(source) is source
        assert copy.deepcopy(source) is source  # …still after an inner block ends
    assert "__deepcopy__" not in NodeSource.__dict__
    assert copy.deepcopy(source) is not source
    with pytest.raises(RuntimeError), shared_node_provenance():
        raise RuntimeError("boom")
    assert "__deepcopy__" not in NodeSource.__dict__  # restored after an exception too


def _pte_bytes(share: bool) -> bytes:
    """int8 ExecuTorch lowering of the tiny net: the path whose debug handles come from node provenance."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from lwdeploy.quantization import quantize

    torch.manual_seed(0)
    net = tiny.build()
    x = tiny.images(2, seed=1)
    qm = quantize(net, x[:1], "executorch", list(tiny.images(8, seed=2).split(1)))
    with shared_node_provenance(enabled=share):
        ep = torch.export.export(qm.module, (x[:1],))
        edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()], generate_etrecord=True)
        program = edge.to_executorch()
    return program.buffer


def test_pte_bytes_are_identical_with_shared_provenance():
    assert _pte_bytes(share=True) == _pte_bytes(share=False)


def test_tflite_bytes_are_identical_with_shared_provenance():
    import litert_torch

    torch.manual_seed(0)
    net = tiny.build()
    x = tiny.images(1, seed=1)
    out = []
    for share in (True, False):
        with shared_node_provenance(enabled=share):
            out.append(litert_torch.convert(net, (x,)).model_content())
    assert out[0] == out[1]
