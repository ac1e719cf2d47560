"""Bring your own model: file.py:Class, factories, checkpoints."""

import pytest
import torch

from lwdeploy.errors import LwdeployError
from lwdeploy.models.loader import load_model

USER_MODEL = '''
import torch
from torch import nn

class TinyNet(nn.Module):
    def __init__(self, num_classes=7):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))

def make_tiny(width=1.0):
    return TinyNet()
'''


@pytest.fixture
def user_file(tmp_path):
    p = tmp_path / "user_net.py"
    p.write_text(USER_MODEL)
    return p


def test_user_class_and_factory(user_file):
    model, info = load_model(f"{user_file}:TinyNet", num_classes=3, resolution=96)
    assert info.name == "TinyNet" and info.resolution == 96 and info.num_classes == 3
    assert model(torch.zeros(1, 3, 96, 96)).shape == (1, 3)
    assert not model.training
    model, info = load_model(f"{user_file}:make_tiny", width=0.5)
    assert info.num_classes == 7


def test_user_checkpoint_roundtrip_and_mismatch(user_file, tmp_path):
    model, _ = load_model(f"{user_file}:TinyNet")
    ckpt = tmp_path / "tiny.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    again, _ = load_model(f"{user_file}:TinyNet", weights=ckpt)
    assert torch.equal(again.conv.weight, model.conv.weight)
    with pytest.raises(LwdeployError, match=r"fc\.weight: checkpoint \(7, 8\) vs model \(3, 8\)"):
        load_model(f"{user_file}:TinyNet", num_classes=3, weights=ckpt)


def test_zoo_width_and_classes():
    model, info = load_model("mobilenet_v2", width=0.5, num_classes=10)
    assert info.name == "mobilenet_v2_100" and info.num_classes == 10
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 10)


def test_unknown_zoo_name_suggests():
    with pytest.raises(LwdeployError, match="mobilenet_v3_small_100"):
        load_model("mobilenet_v3_smal")


def _parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_user_model_unpickles_in_a_spawned_worker(user_file):
    """export converts targets in spawned processes: a model whose class lives in the user's file must
    unpickle there (it crashed the pool before the initializer re-imported the file)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from lwdeploy.models.loader import import_user_modules, user_modules

    model, _ = load_model(f"{user_file}:TinyNet", num_classes=3)
    assert any(path.endswith("user_net.py") for path in user_modules().values())
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=import_user_modules,
                             initargs=(user_modules(),)) as pool:
        assert pool.submit(_parameter_count, model).result() == _parameter_count(model)
