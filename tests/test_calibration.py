"""Calibration images: real photos by default, folders split by file, deterministic for a seed."""

import numpy as np
import pytest
import torch
from PIL import Image

from lwdeploy.errors import LwdeployError
from lwdeploy.quantization import calibration

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_real_photos_default_is_real_and_heldout_is_disjoint():
    s = calibration.load(None, 64, MEAN, STD, n_calib=8, n_heldout=6, seed=0)
    assert "scikit-image" in s.source
    assert s.calib.shape == (8, 3, 64, 64) and s.heldout.shape == (6, 3, 64, 64)
    assert not set(s.calib_files) & set(s.heldout_files)
    assert "chelsea.png" in s.heldout_files
    # normalised photos, not noise: per-image spatial correlation of neighbouring pixels is high
    x = s.calib[:, 0]
    corr = torch.corrcoef(torch.stack([x[:, :, :-1].flatten(), x[:, :, 1:].flatten()]))[0, 1]
    assert corr > 0.8
    assert -3 < float(s.calib.mean()) < 3


def test_same_seed_same_crops_other_seed_differs():
    a = calibration.real_photos(32, MEAN, STD, 4, 4, seed=1)
    b = calibration.real_photos(32, MEAN, STD, 4, 4, seed=1)
    c = calibration.real_photos(32, MEAN, STD, 4, 4, seed=2)
    assert torch.equal(a.calib, b.calib) and torch.equal(a.heldout, b.heldout)
    assert not torch.equal(a.calib, c.calib)


def test_image_folder_split_by_file(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    (tmp_path / "readme.txt").write_text("ignored")
    s = calibration.image_folder(tmp_path, 32, MEAN, STD, 5, 3, seed=0)
    assert len(s.heldout_files) == 2 and len(s.calib_files) == 6
    assert not set(s.calib_files) & set(s.heldout_files)
    assert s.calib.shape == (5, 3, 32, 32)


def test_image_folder_errors(tmp_path):
    with pytest.raises(LwdeployError, match="does not exist"):
        calibration.image_folder(tmp_path / "missing", 32, MEAN, STD)
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(LwdeployError, match="no readable images"):
        calibration.image_folder(tmp_path, 32, MEAN, STD)


def test_fashion_mnist_source():
    from lwdeploy.quantization.datasets import fashion_mnist_dir

    if fashion_mnist_dir() is None:
        pytest.skip("Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")
    s = calibration.load("fashion-mnist", 32, (0.5,) * 3, (0.5,) * 3, n_calib=6, n_heldout=4, seed=0)
    assert s.calib.shape == (6, 3, 32, 32) and s.heldout.shape == (4, 3, 32, 32)
    assert "train" in s.calib_files[0] and "t10k" in s.heldout_files[0]
    assert torch.equal(s.calib, calibration.load("fashion-mnist", 32, (0.5,) * 3, (0.5,) * 3, 6, 4, 0).calib)
