"""The image discriminator of `wintok train`'s adversarial term, and its losses.

The official WinTok trains against a frozen DINOv2 with trainable heads; those weights are not
available here, so that DINO discriminator is NOT implemented. `PatchDiscriminator` stands in
for it: a small PatchGAN-style conv net (stride-2 4x4 convs, GroupNorm, LeakyReLU(0.2)) that
gives one real/fake logit per image patch. Its width and depth are `TrainConfig.disc_width`
and `disc_layers`.

Losses over logits (`dcrit`): 'hg' hinge, 'sp' softplus (non-saturating), 'ln' linear. The
discriminator loss is half the sum of its real and fake parts; the generator's is
-mean(D(fake)) for 'hg' and 'ln' and mean(softplus(-D(fake))) for 'sp'. LeCAM (Tseng et al.
2021) keeps EMAs of the mean real and fake logits and adds
mean(relu(D(real) - ema_fake)^2) + mean(relu(ema_real - D(fake))^2).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

CRITERIA = ("hg", "sp", "ln")
LECAM_DECAY = 0.999


class PatchDiscriminator(nn.Module):
    """(B,3,H,W) images in [-1,1] -> (B,1,H/2^layers,W/2^layers) patch logits."""

    def __init__(self, width: int = 64, layers: int = 3):
        super().__init__()
        if width < 1 or layers < 1:
            raise ValueError(f"discriminator width and layers must be >= 1, got {width}, {layers}")
        mods: list[nn.Module] = [nn.Conv2d(3, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        ch = width
        for i in range(1, layers):
            nxt = width * min(2 ** i, 8)
            mods += [nn.Conv2d(ch, nxt, 4, stride=2, padding=1, bias=False),
                     nn.GroupNorm(math.gcd(32, nxt), nxt), nn.LeakyReLU(0.2)]
            ch = nxt
        mods.append(nn.Conv2d(ch, 1, 3, padding=1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_discriminator(width: int, layers: int, seed: int) -> PatchDiscriminator:
    """A freshly initialised discriminator; its init draws from its own seeded RNG, so adding
    it leaves the global random stream (and so the tokenizer's run) as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PatchDiscriminator(width, layers)


def d_loss(real: torch.Tensor, fake: torch.Tensor, crit: str) -> torch.Tensor:
    """Discriminator loss from its logits on real and on generated images."""
    if crit == "hg":
        lr, lf = F.relu(1.0 - real).mean(), F.relu(1.0 + fake).mean()
    elif crit == "sp":
        lr, lf = F.softplus(-real).mean(), F.softplus(fake).mean()
    elif crit == "ln":
        lr, lf = -real.mean(), fake.mean()
    else:
        raise ValueError(f"dcrit must be one of {CRITERIA}, got {crit!r}")
    return 0.5 * (lr + lf)


def g_loss(fake: torch.Tensor, crit: str) -> torch.Tensor:
    """The generator's adversarial loss from the discriminator's logits on its images."""
    if crit == "sp":
        return F.softplus(-fake).mean()
    if crit in ("hg", "ln"):
        return -fake.mean()
    raise ValueError(f"dcrit must be one of {CRITERIA}, got {crit!r}")


def lecam_reg(real: torch.Tensor, fake: torch.Tensor, ema_real: float, ema_fake: float) -> torch.Tensor:
    """LeCAM regulariser: keeps real logits near the fake EMA and fake logits near the real EMA."""
    return F.relu(real - ema_fake).square().mean() + F.relu(ema_real - fake).square().mean()
