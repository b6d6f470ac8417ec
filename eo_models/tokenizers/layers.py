"""Small building blocks shared by the CNN encoder, the GAN decoder and the discriminator."""

from __future__ import annotations

from torch import Tensor, nn


def norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups (works for any batch size, unlike BatchNorm)."""
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    """Pre-activation residual block: norm -> SiLU -> conv, twice, plus a (1x1-projected) skip."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
                                  norm(cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)
