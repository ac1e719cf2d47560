"""Recovery training: KD loss maths, the datasets, a loop that really learns, the finetune CLI."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lwdeploy.errors import LwdeployError
from lwdeploy.quantization.datasets import FASHION_MNIST_INSTALL, FashionMNIST, ImageFolder, fashion_mnist_dir, \
    open_dataset, read_idx
from lwdeploy.quantization.finetune import TrainConfig, distillation_loss, evaluate, train

needs_fmnist = pytest.mark.skipif(fashion_mnist_dir() is None,
                                  reason=f"Fashion-MNIST not installed: {FASHION_MNIST_INSTALL}")


def test_kd_loss_reduces_to_ce_and_vanishes_for_identical_logits():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    ce = F.cross_entropy(s, y)
    assert torch.allclose(distillation_loss(s, y, None, 0.7, 4.0), ce)
    assert torch.allclose(distillation_loss(s, y, t, 0.0, 4.0), ce)
    assert torch.allclose(distillation_loss(s, y, s.clone(), 0.7, 4.0), 0.3 * ce, atol=1e-6)
    assert distillation_loss(s, y, t, 1.0, 4.0) > 0


def _write_idx(path, arr: np.ndarray, code: int):
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(">u1" if code == 8 else arr.dtype).tobytes())


def test_idx_reader_and_fashion_mnist_layout(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 1], dtype=np.uint8)
    for split in ("train", "t10k"):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", imgs, 8)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", labels, 8)
    assert np.array_equal(read_idx(tmp_path / "train-images-idx3-ubyte.gz"), imgs)
    ds = FashionMNIST(train=False, resolution=28, mean=(0, 0, 0), std=(1, 1, 1), root=tmp_path)
    x, y = ds[1]
    assert x.shape == (3, 28, 28) and y.item() == 9
    assert torch.allclose(x[0], torch.from_numpy(imgs[1]).float() / 255) and torch.equal(x[0], x[2])
    assert FashionMNIST(resolution=48, root=tmp_path)[0][0].shape == (3, 48, 48)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(LwdeployError, match="not an IDX file"):
        read_idx(tmp_path / "bad")


def test_missing_fashion_mnist_names_the_install_command(tmp_path):
    with pytest.raises(LwdeployError, match="apt-get install -y dataset-fashion-mnist"):
        FashionMNIST(root=tmp_path)


@needs_fmnist
def test_real_fashion_mnist():
    ds = FashionMNIST(train=True, resolution=64, limit=100)
    test = FashionMNIST(train=False, resolution=64)
    assert len(ds) == 100 and len(test) == 10000
    x, y = ds[0]
    assert x.shape == (3, 64, 64) and 0 <= y.item() < 10
    assert set(test.labels.tolist()) == set(range(10))


def _colour_folder(root, n=12, size=20):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            arr = np.clip(np.array(colour) + rng.integers(-25, 25, (size, size + 4, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / cls / f"{i}.png")


class Tiny(nn.Module):
    def __init__(self, n=2):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, n)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(torch.relu(self.bn(self.conv(x))), 1).flatten(1))


def test_training_learns_an_image_folder_task(tmp_path):
    _colour_folder(tmp_path)
    ds = ImageFolder(tmp_path, resolution=16, augment=True)
    assert ds.classes == ["blue", "red"] and len(ds) == 24 and ds[0][0].shape == (3, 16, 16)
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():  # start from a head that always prefers one class
        model.fc.bias.copy_(torch.tensor([5.0, -5.0]))
    ev = ImageFolder(tmp_path, resolution=16)
    assert evaluate(model, ev) == pytest.approx(50.0)
    result = train(model, ds, TrainConfig(epochs=15, lr=0.05, batch_size=8, warmup_steps=1), progress=False)
    assert evaluate(model, ev) == 100.0
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_kd_training_pulls_student_towards_teacher(tmp_path):
    _colour_folder(tmp_path)
    ds = ImageFolder(tmp_path, resolution=16)
    torch.manual_seed(0)
    teacher = Tiny()
    train(teacher, ds, TrainConfig(epochs=10, lr=0.05, batch_size=8, warmup_steps=1), progress=False)
    student = Tiny()
    x = torch.stack([ds[i][0] for i in range(len(ds))])

    def gap():
        with torch.no_grad():
            return F.kl_div(F.log_softmax(student.eval()(x), 1), F.log_softmax(teacher(x), 1), reduction="batchmean",
                            log_target=True).item()

    before = gap()
    train(student, ds, TrainConfig(epochs=10, lr=0.05, batch_size=8, kd_alpha=1.0, warmup_steps=1), teacher=teacher,
          progress=False)
    assert gap() < 0.5 * before


def test_wrong_head_size_and_bad_config_are_user_errors(tmp_path):
    _colour_folder(tmp_path, n=2)
    ds = ImageFolder(tmp_path, resolution=16)
    with pytest.raises(LwdeployError, match="3 outputs but the data has 2 classes"):
        train(Tiny(3), ds, progress=False)
    with pytest.raises(LwdeployError, match="epochs"):
        train(Tiny(), ds, TrainConfig(epochs=0), progress=False)
    with pytest.raises(LwdeployError, match="neither 'fashion-mnist' nor a folder"):
        open_dataset(str(tmp_path / "nope"), train=True, resolution=16, mean=(0, 0, 0), std=(1, 1, 1))


def test_cli_finetune_pruned_checkpoint_on_image_folder(cli, tmp_path):
    from lwdeploy.quantization.pruning import load_checkpoint

    data = tmp_path / "data"
    _colour_folder(data, n=4)
    pruned = tmp_path / "p.pt"
    code, _, err = cli("prune", "mobilenet_v3_small_100", "--num-classes", "2", "--ratio", "0.5", "-r", "32",
                       "--out", pruned)
    assert code == 0, err
    out = tmp_path / "ft.pt"
    code, _, err = cli("finetune", pruned, "--data", data, "--epochs", "1", "--batch-size", "4", "--teacher",
                       "mobilenet_v3_small_100", "--out", out)
    assert code == 0, err
    model, meta = load_checkpoint(out)
    assert meta["pruning"]["ratio"] == 0.5 and meta["extra"]["finetune"]["epochs"] == 1
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 2)


@needs_fmnist
def test_cli_finetune_on_fashion_mnist(cli, tmp_path):
    out = tmp_path / "ft.pt"
    code, _, err = cli("finetune", "mobilenet_v3_small_100", "-r", "32", "--train-samples", "64",
                       "--eval-samples", "64", "--out", out, "--json")
    assert code == 0, err
    assert out.is_file()


@needs_fmnist
def test_fashion_mnist_in_memory_batches_match_per_item_images():
    ds = FashionMNIST(train=False, resolution=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), limit=16)
    grey, labels = ds.as_tensors()
    assert grey.shape == (16, 1, 32, 32) and torch.equal(labels, ds.labels)
    batch = ds.normalise(grey[:4])
    assert torch.allclose(batch, torch.stack([ds[i][0] for i in range(4)]), atol=1e-6)


def test_export_prune_with_finetune_epochs_records_recovery(cli, tmp_path):
    import json

    data = tmp_path / "data"
    _colour_folder(data, n=8)
    out = tmp_path / "out"
    code, _, err = cli("export", "mobilenet_v3_small_100", "--num-classes", "2", "-r", "32", "--prune", "0.3",
                       "--finetune-epochs", "1", "--dataset", data, "--finetune-samples", "6", "--heldout-samples", "4",
                       "--calib-samples", "8", "--out", out)
    assert code == 0, err
    assert "recovery: 1 epoch(s) on image folder" in err and "step" in err  # progress lines from the loop
    manifest = json.loads(next(out.glob("*.tflite.json")).read_text()) if list(out.glob("*.tflite.json")) else \
        json.loads(next(p for p in out.glob("*.json")).read_text())
    rec = manifest["model"]["recovery"]
    assert rec["finetune_epochs"] == 1 and rec["batchnorm"].startswith("re-estimated on 8")
    assert rec["train_images"] == 6  # --finetune-samples: the first 6 images of the folder's 16
    assert rec["teacher"] is None  # random weights: nothing to distil, said so instead of pretending
    code, _, err = cli("export", "mobilenet_v3_small_100", "--finetune-epochs", "1", "--out", tmp_path / "o2")
    assert code == 2 and "after --prune" in err and "Traceback" not in err
