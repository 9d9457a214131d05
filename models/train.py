"""A small trainer: images in memory, random crops, loss lambda * 255^2 * MSE + bpp.

Every RWKV ``decay`` and ``boost`` gets a learning rate ten times lower than the rest (the variant
spec's 1e-5 against 1e-4), since they set exponents over the whole token sequence.

Settings that cannot work (no steps, an empty batch, a NaN or negative learning rate) are refused
when the ``TrainConfig`` is made; a non-finite loss or weight stops training with ``TrainingError``
(the caller then writes nothing). The entropy tables are recomputed from the trained weights at the
end, so a saved checkpoint carries tables that match them. Images come as 8-bit arrays; the CLI loads
them through ``hpcm.codec.images``, the one image loader.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from hpcm.errors import ConfigError, ImageError, TrainingError
from hpcm.log import LOG

from .hpcm import HPCM


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 100
    batch_size: int = 8
    crop: int = 256
    lmbda: float = 0.0067
    lr: float = 1e-4
    rwkv_lr_ratio: float = 0.1
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name, option in (("steps", "--steps"), ("batch_size", "--batch-size"), ("crop", "--crop")):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigError(f"{option} must be a whole number of at least 1, got {value!r}")
        for name, option, positive in (("lr", "--lr", True), ("lmbda", "--lmbda", True),
                                       ("rwkv_lr_ratio", "rwkv_lr_ratio", False)):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 \
                    or (positive and value == 0):
                raise ConfigError(f"{option} must be a finite {'positive' if positive else 'non-negative'} number, "
                                  f"got {value!r}")


def random_crops(images: Sequence[np.ndarray], crop: int, batch_size: int,
                 rng: random.Random) -> Iterator[torch.Tensor]:
    """Endless batches of random crops in [0, 1] of (H, W, 3) uint8 images; smaller ones are skipped
    with a notice."""
    usable = [image for image in images if min(image.shape[:2]) >= crop]
    if not usable:
        raise ImageError(f"no training image is at least {crop}x{crop} pixels (--crop)")
    if len(usable) < len(images):
        LOG.warning(f"{len(images) - len(usable)} of {len(images)} training images are smaller than {crop}x{crop} "
                    "(--crop) and are left out")
    while True:
        batch = []
        for _ in range(batch_size):
            image = rng.choice(usable)
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


def train(model: HPCM, config: TrainConfig, images: Sequence[np.ndarray],
          log: Optional[Callable[[str], None]] = print) -> list[float]:
    """Runs ``config.steps`` optimisation steps in place on random crops of ``images`` ((H, W, 3) uint8);
    returns the loss of each step. The model ends in eval mode with entropy tables of its new weights."""
    model.check_image_size(config.crop, config.crop)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    model.to(config.device).train()
    optimizer = torch.optim.Adam(parameter_groups(model, config.lr, config.rwkv_lr_ratio))
    batches = random_crops(images, config.crop, config.batch_size, rng)
    losses = []
    start = time.perf_counter()
    for step in range(1, config.steps + 1):
        x = next(batches).to(config.device)
        terms = rate_distortion_loss(model, x, config.lmbda)
        loss = float(terms["loss"].detach())
        if not math.isfinite(loss):
            raise TrainingError(f"the loss became non-finite ({loss}) at step {step}: training stopped, nothing is "
                                f"saved (lower --lr, now {config.lr:g}, or check the images)")
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss)
        if log and (step == 1 or step % 10 == 0 or step == config.steps):
            log(f"step {step}/{config.steps}  loss {losses[-1]:.4f}  bpp {float(terms['bpp'].detach()):.4f}  "
                f"mse {float(terms['mse'].detach()):.6f}  {time.perf_counter() - start:.1f}s")
    broken = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if broken:
        raise TrainingError(f"the weights became non-finite in the last step ({broken[0]}): training stopped, nothing "
                            f"is saved (lower --lr, now {config.lr:g})")
    model.eval()
    model.update()
    return losses
