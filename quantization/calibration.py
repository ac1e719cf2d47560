"""Calibration and held-out evaluation images.

Default: the real photographs that ship inside scikit-image (no download), cut into random crops with
random flips. Calibrating on random noise gives activation ranges no real image has, so we never do it
silently. Photos are split by *file*: the held-out images used for fidelity are never seen in calibration.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lwdeploy.errors import LwdeployError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}

# Natural photos in skimage/data. The held-out ones are objects an ImageNet model knows (a cat, a coffee cup,
# a rocket, a motorbike, an astronaut), so top-1 agreement on them means something.
SKIMAGE_HELDOUT = ("chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_right.png", "astronaut.png")
SKIMAGE_CALIB = ("motorcycle_left.png", "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "camera.png",
                 "brick.png", "grass.png", "gravel.png", "coins.png", "moon.png", "clock_motion.png",
                 "color.png", "horse.png")


@dataclass
class ImageSet:
    """Normalised (N,3,H,W) tensors for calibration and for held-out fidelity checks."""

    source: str              # said on screen and recorded in the manifest
    calib: torch.Tensor
    heldout: torch.Tensor
    calib_files: list[str]
    heldout_files: list[str]

    def calib_batches(self) -> list[torch.Tensor]:
        return [x.unsqueeze(0) for x in self.calib]

    def describe(self) -> dict:
        return {"source": self.source, "calibration_images": len(self.calib), "heldout_images": len(self.heldout),
                "calibration_files": self.calib_files, "heldout_files": self.heldout_files}


def stack_batches(batches) -> torch.Tensor:
    """Calibration inputs (single images or batches) as one (N, C, H, W) tensor."""
    return torch.cat([b if b.dim() == 4 else b.unsqueeze(0) for b in batches])


def skimage_photo_dir() -> Path:
    try:
        import skimage
    except ImportError as e:  # pragma: no cover - it is a core dependency
        raise LwdeployError("scikit-image is not installed", "pip install scikit-image, or pass --calib DIR") from e
    return Path(skimage.__file__).parent / "data"


def real_photos(resolution: int, mean, std, n_calib: int = 64, n_heldout: int = 64, seed: int = 0) -> ImageSet:
    root = skimage_photo_dir()
    calib = [root / f for f in SKIMAGE_CALIB if (root / f).exists()]
    held = [root / f for f in SKIMAGE_HELDOUT if (root / f).exists()]
    if not calib or not held:
        raise LwdeployError(f"scikit-image's sample photos are missing from {root}", "pass --calib DIR")
    return _build("scikit-image sample photos (random crops + flips)", calib, held, resolution, mean, std,
                  n_calib, n_heldout, seed)


def image_folder(path: str | Path, resolution: int, mean, std, n_calib: int = 64, n_heldout: int = 64,
                 seed: int = 0) -> ImageSet:
    path = Path(path)
    if not path.is_dir():
        raise LwdeployError(f"calibration folder {str(path)!r} does not exist or is not a folder",
                            "pass a folder of .jpg/.png images with --calib")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    files = [p for p in files if _readable(p)]
    if not files:
        raise LwdeployError(f"no readable images in {str(path)!r}",
                            f"put {', '.join(sorted(IMAGE_SUFFIXES))} files there, or leave out --calib "
                            "to use the built-in real photos")
    rng = random.Random(seed)
    shuffled = files[:]
    rng.shuffle(shuffled)
    # Hold out a quarter of the files (at least one) when there are several; one file is used for both.
    n_held = max(1, len(files) // 4) if len(files) > 1 else 0
    held, calib = (shuffled[:n_held], shuffled[n_held:]) if n_held else (shuffled, shuffled)
    return _build(f"image folder {path} (random crops + flips)", calib, held, resolution, mean, std,
                  n_calib, n_heldout, seed)


def fashion_mnist(resolution: int, mean, std, n_calib: int = 64, n_heldout: int = 64, seed: int = 0) -> ImageSet:
    """Fashion-MNIST (Debian's dataset-fashion-mnist): calibration from the training split, held-out images
    from the test split, a seeded random choice of each — for models trained at small resolution on it."""
    from .datasets import FashionMNIST

    g = torch.Generator().manual_seed(seed)
    parts = []
    for train, n in ((True, n_calib), (False, n_heldout)):
        ds = FashionMNIST(train=train, resolution=resolution, mean=mean, std=std)
        idx = torch.randperm(len(ds), generator=g)[:n].tolist()
        parts.append((torch.stack([ds[i][0] for i in idx]), ds.source))
    (calib, src), (held, held_src) = parts
    return ImageSet("Fashion-MNIST (train split for calibration, test split held out)", calib, held,
                    [src], [held_src])


def load(calib_dir: str | Path | None, resolution: int, mean, std, n_calib: int = 64, n_heldout: int = 64,
         seed: int = 0) -> ImageSet:
    """`calib_dir`: None (built-in real photos), "fashion-mnist", or an image folder."""
    if calib_dir is not None and str(calib_dir) == "fashion-mnist":
        return fashion_mnist(resolution, mean, std, n_calib, n_heldout, seed)
    if calib_dir:
        return image_folder(calib_dir, resolution, mean, std, n_calib, n_heldout, seed)
    return real_photos(resolution, mean, std, n_calib, n_heldout, seed)


def _readable(p: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(p) as im:
            im.verify()
        return True
    except Exception:
        return False


def _build(source, calib_files, held_files, resolution, mean, std, n_calib, n_heldout, seed) -> ImageSet:
    rng = np.random.default_rng(seed)
    calib = _crops(calib_files, n_calib, resolution, mean, std, rng)
    held = _crops(held_files, n_heldout, resolution, mean, std, rng)
    return ImageSet(source, calib, held, [p.name for p in calib_files], [p.name for p in held_files])


def _crops(files: list[Path], n: int, resolution: int, mean, std, rng: np.random.Generator) -> torch.Tensor:
    from PIL import Image

    images = []
    for f in files:
        with Image.open(f) as im:
            images.append(im.convert("RGB"))
    out = np.empty((n, 3, resolution, resolution), dtype=np.float32)
    for i in range(n):
        im = images[i % len(images)]
        out[i] = _random_resized_crop(im, resolution, rng).transpose(2, 0, 1)
    x = torch.from_numpy(out)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def _random_resized_crop(im, size: int, rng: np.random.Generator, scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3)):
    """Inception-style crop: a random area share and aspect, resized to size×size, flipped half the time."""
    from PIL import Image

    w, h = im.size
    for _ in range(10):
        area = w * h * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        cw, ch = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            break
    else:
        cw = ch = min(w, h)
        x0, y0 = (w - cw) // 2, (h - ch) // 2
    crop = im.crop((x0, y0, x0 + cw, y0 + ch)).resize((size, size), Image.BILINEAR)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(crop, dtype=np.float32) / 255.0
