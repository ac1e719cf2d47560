"""CondenseNet's condensed channel gather: slices of the index's contiguous runs, index_select otherwise."""

from __future__ import annotations

import pickle

import torch

from lwdeploy.models import create
from lwdeploy.models.families.condensenet import MAX_SLICES, CondenseConv, contiguous_runs, gather_channels


def _index_select_forward(model, x):
    """The model's output with every gather as the plain index_select the paper's convert_model writes."""
    saved = {m: m.runs for m in model.modules() if hasattr(m, "runs")}
    try:
        for m in saved:
            m.runs = None
        return model(x)
    finally:
        for m, runs in saved.items():
            m.runs = runs


def test_runs_and_gather_match_index_select():
    x = torch.randn(2, 10, 3, 3)
    assert contiguous_runs(torch.arange(10)) == [(0, 10)]
    assert contiguous_runs(torch.tensor([4, 5, 6, 0, 1])) == [(4, 7), (0, 2)]
    assert contiguous_runs(torch.randperm(10, generator=torch.Generator().manual_seed(0))) is None  # many runs
    assert contiguous_runs(torch.arange(10, device="meta")) is None
    for index in (torch.arange(10), torch.tensor([4, 5, 6, 0, 1]), torch.tensor([9, 3, 1, 7, 2, 8])):
        got = gather_channels(x, index, contiguous_runs(index))
        assert torch.equal(got, torch.index_select(x, 1, index))
    assert gather_channels(x, torch.arange(10), [(0, 10)]) is x  # the identity order is no op at all


def test_zoo_condensenet_has_no_gather_and_the_same_function():
    torch.manual_seed(0)
    model = create("condensenet_g8c8", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), _index_select_forward(model, x))
    graph = torch.export.export(model, (x,)).graph
    assert not [n for n in graph.nodes if "index_select" in str(n.target)]


def test_a_loaded_index_updates_the_runs_and_keys_stay():
    torch.manual_seed(0)
    model = create("condensenet_g8c8", num_classes=10).eval()
    state = model.state_dict()
    assert any(k.endswith("conv1.index") for k in state) and "classifier.index" in state
    first = next(m for m in model.modules() if isinstance(m, CondenseConv))
    name = next(k for k, m in model.named_modules() if m is first)
    n = first.index.numel()
    state[f"{name}.index"] = torch.randperm(n, generator=torch.Generator().manual_seed(1))  # a "trained" order
    model.load_state_dict(state)
    assert first.runs is None or len(first.runs) <= MAX_SLICES
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), _index_select_forward(model, x))
    clone = pickle.loads(pickle.dumps(model))  # the export pipeline sends models to worker processes
    assert clone.classifier.runs == model.classifier.runs
