"""A small trainer: a folder of images, random crops, loss lambda * 255^2 * MSE + bpp.

Every RWKV ``decay`` and ``boost`` gets a learning rate ten times lower than the rest (the variant
spec's 1e-5 against 1e-4), since they set exponents over the whole token sequence.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from PIL import Image

from hpcm.errors import ImageError

from .hpcm import HPCM

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm"}


@dataclass
class TrainConfig:
    images: Path
    steps: int = 100
    batch_size: int = 8
    crop: int = 256
    lmbda: float = 0.0067
    lr: float = 1e-4
    rwkv_lr_ratio: float = 0.1
    seed: int = 0
    device: str = "cpu"


def image_paths(folder: Path) -> list[Path]:
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ImageError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    return paths


def random_crops(paths: list[Path], crop: int, batch_size: int, rng: random.Random) -> Iterator[torch.Tensor]:
    """Endless batches of random crops in [0, 1]; images smaller than the crop are skipped."""
    arrays = []
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        if min(image.shape[:2]) >= crop:
            arrays.append(image)
    if not arrays:
        raise ImageError(f"no training image is at least {crop}x{crop} pixels")
    while True:
        batch = []
        for _ in range(batch_size):
            image = rng.choice(arrays)
            top = rng.randrange(image.shape[0] - crop + 1)
            left = rng.randrange(image.shape[1] - crop + 1)
            batch.append(torch.from_numpy(image[top:top + crop, left:left + crop].copy()))
        yield torch.stack(batch).permute(0, 3, 1, 2).float() / 255.0


def parameter_groups(model: HPCM, lr: float, rwkv_lr_ratio: float) -> list[dict]:
    rwkv, rest = [], []
    for name, param in model.named_parameters():
        (rwkv if name.endswith((".decay", ".boost")) else rest).append(param)
    groups = [{"params": rest, "lr": lr, "name": "default"}]
    if rwkv:
        groups.append({"params": rwkv, "lr": lr * rwkv_lr_ratio, "name": "rwkv_decay_boost"})
    return groups


def rate_distortion_loss(model: HPCM, x: torch.Tensor, lmbda: float) -> dict[str, torch.Tensor]:
    out = model(x, training=True)
    pixels = x.shape[0] * x.shape[2] * x.shape[3]
    bpp = sum(torch.log(l).sum() for l in out["likelihoods"].values()) / (-math.log(2) * pixels)
    mse = torch.mean((out["x_hat"] - x) ** 2)
    return {"loss": lmbda * 255**2 * mse + bpp, "mse": mse, "bpp": bpp}


def train(model: HPCM, config: TrainConfig, log: Optional[Callable[[str], None]] = print) -> list[float]:
    """Runs ``config.steps`` optimisation steps in place; returns the loss of each step."""
    model.check_image_size(config.crop, config.crop)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    model.to(config.device).train()
    optimizer = torch.optim.Adam(parameter_groups(model, config.lr, config.rwkv_lr_ratio))
    batches = random_crops(image_paths(config.images), config.crop, config.batch_size, rng)
    losses = []
    start = time.perf_counter()
    for step in range(1, config.steps + 1):
        x = next(batches).to(config.device)
        terms = rate_distortion_loss(model, x, config.lmbda)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(terms["loss"].detach()))
        if log and (step == 1 or step % 10 == 0 or step == config.steps):
            log(f"step {step}/{config.steps}  loss {losses[-1]:.4f}  bpp {float(terms['bpp'].detach()):.4f}  "
                f"mse {float(terms['mse'].detach()):.6f}  {time.perf_counter() - start:.1f}s")
    model.eval()
    return losses
