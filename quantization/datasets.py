"""Training/evaluation data as torch Datasets: Fashion-MNIST (Debian's idx files) and a folder of class folders.

Both yield (3, R, R) float tensors normalised with the model's mean/std, and integer labels, so the same
loader feeds fine-tuning, accuracy evaluation and (lead's) calibration.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from lwdeploy.errors import LwdeployError

# Where `apt-get install dataset-fashion-mnist` puts the four idx files (gzip-compressed).
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_INSTALL = "apt-get update && apt-get install -y dataset-fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally .gz): magic 0x0000 dtype ndim, big-endian dims, then the data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise LwdeployError(f"{path} is not an IDX file (bad magic)", "point at the Fashion-MNIST idx(.gz) files")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise LwdeployError(f"{path}: unknown IDX element type 0x{data[2]:02x}", "is the file corrupt?")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=dtypes[data[2]], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise LwdeployError(f"{path}: expected {int(np.prod(dims))} values, found {arr.size}", "is the file truncated?")
    return arr.reshape(dims)


def fashion_mnist_dir(root: str | Path | None = None) -> Path | None:
    """The folder holding the idx files, or None when the Debian package is not installed."""
    candidates = [Path(root)] if root else [Path(p) for p in
                                            ([os.environ["LWDEPLOY_FASHION_MNIST"]] if "LWDEPLOY_FASHION_MNIST"
                                             in os.environ else []) + list(FASHION_MNIST_DIRS)]
    for d in candidates:
        if _idx_file(d, "train-images-idx3-ubyte") and _idx_file(d, "t10k-labels-idx1-ubyte"):
            return d
    return None


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


class FashionMNIST(Dataset):
    """Fashion-MNIST, 28×28 grey → 3 identical channels, bilinear-resized to `resolution`, normalised.

    `limit` takes the first N images (the files are class-balanced throughout), for quick runs.
    """

    classes = FASHION_MNIST_CLASSES

    def __init__(self, train: bool = True, resolution: int = 64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                 limit: int | None = None, root: str | Path | None = None):
        folder = fashion_mnist_dir(root)
        if folder is None:
            where = str(root) if root else ", ".join(FASHION_MNIST_DIRS)
            raise LwdeployError(f"Fashion-MNIST idx files not found in {where}",
                                f"install them: {FASHION_MNIST_INSTALL} (or pass an image folder)")
        split = "train" if train else "t10k"
        images = read_idx(_idx_file(folder, f"{split}-images-idx3-ubyte"))
        labels = read_idx(_idx_file(folder, f"{split}-labels-idx1-ubyte"))
        if limit:
            images, labels = images[:limit], labels[:limit]
        self.images = torch.from_numpy(images.copy())          # (N, 28, 28) uint8
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.resolution = resolution
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.source = f"Fashion-MNIST {split} ({len(self.labels)} images, {folder})"

    def __len__(self) -> int:
        return len(self.labels)

    def as_tensors(self, device="cpu", chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
        """All images at once: ((N, 1, R, R) grey in [0, 1], labels) on `device`.

        Why: resizing one image per __getitem__ call costs more than a training step of a small net on a GPU;
        resized in chunks here, the training loop only expands to 3 channels and normalises per batch
        (`normalise`)."""
        out = []
        for i in range(0, len(self.labels), chunk):
            x = self.images[i:i + chunk].to(device).float().div_(255.0)[:, None]
            if self.resolution != 28:
                x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
            out.append(x)
        return torch.cat(out), self.labels.to(device)

    def normalise(self, grey: torch.Tensor) -> torch.Tensor:
        """(B, 1, R, R) grey from `as_tensors` → the (B, 3, R, R) normalised batch __getitem__ would give."""
        return (grey.expand(-1, 3, -1, -1) - self.mean.to(grey.device)) / self.std.to(grey.device)

    def __getitem__(self, i: int):
        x = self.images[i].float().div_(255.0)[None, None]
        if self.resolution != 28:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        x = x[0].expand(3, -1, -1)
        return (x - self.mean) / self.std, self.labels[i]


class ImageFolder(Dataset):
    """root/<class name>/<image> → (normalised crop, class index). Classes are the sorted folder names.

    Images are resized (shorter side) and centre-cropped to `resolution`; with `augment`, a random crop and
    horizontal flip instead (training).
    """

    def __init__(self, root: str | Path, resolution: int = 64, mean=(0.485, 0.456, 0.406),
                 std=(0.229, 0.224, 0.225), augment: bool = False, limit: int | None = None):
        root = Path(root)
        if not root.is_dir():
            raise LwdeployError(f"dataset folder {str(root)!r} does not exist", "pass root/<class>/<images>")
        self.classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        if len(self.classes) < 2:
            raise LwdeployError(f"{str(root)!r} needs one sub-folder per class (found {len(self.classes)})",
                                "lay it out as root/<class name>/<image files>")
        self.samples = [(p, i) for i, c in enumerate(self.classes) for p in sorted((root / c).rglob("*"))
                        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if not self.samples:
            raise LwdeployError(f"no images under {str(root)!r}", f"use {', '.join(sorted(IMAGE_SUFFIXES))} files")
        if limit:
            rng = np.random.default_rng(0)
            keep = sorted(rng.permutation(len(self.samples))[:limit])
            self.samples = [self.samples[i] for i in keep]
        self.resolution, self.augment = resolution, augment
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.labels = torch.tensor([c for _, c in self.samples])
        self.source = f"image folder {root} ({len(self.samples)} images, {len(self.classes)} classes)"

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image

        path, label = self.samples[i]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                w, h = im.size
                scale = self.resolution * (1.15 if self.augment else 1.0) / min(w, h)
                im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
                x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
        except OSError as e:
            raise LwdeployError(f"cannot read image {path}: {e}", "remove or fix the file") from None
        r = self.resolution
        _, H, W = x.shape
        if self.augment:
            top, left = np.random.randint(0, H - r + 1), np.random.randint(0, W - r + 1)
        else:
            top, left = (H - r) // 2, (W - r) // 2
        x = x[:, top:top + r, left:left + r]
        if self.augment and np.random.rand() < 0.5:
            x = x.flip(-1)
        return (x - self.mean) / self.std, label


def open_dataset(spec: str, *, train: bool, resolution: int, mean, std, limit: int | None = None) -> Dataset:
    """`fashion-mnist` (Debian package) or a folder; a folder with train/ and val/ (or test/) splits picks one."""
    if spec.lower() in ("fashion-mnist", "fashion_mnist", "fmnist"):
        return FashionMNIST(train=train, resolution=resolution, mean=mean, std=std, limit=limit)
    root = Path(spec)
    if not root.is_dir():
        raise LwdeployError(f"dataset {spec!r} is neither 'fashion-mnist' nor a folder",
                            "pass --data fashion-mnist or --data path/to/root/<class>/<images>")
    names = ("train",) if train else ("val", "test", "valid", "train")  # no held-out split: say so via .source
    for n in names:
        if (root / n).is_dir():
            return ImageFolder(root / n, resolution, mean, std, augment=train, limit=limit)
    return ImageFolder(root, resolution, mean, std, augment=train, limit=limit)
