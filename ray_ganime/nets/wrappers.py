"""What a served generator needs beyond its training form: any input size, and a rebuild from JSON.

A U-Net only takes sizes divisible by ``2 ** num_downs``; users send whatever their images are. Padding
(edge-replicated, bottom/right) up to that multiple and cropping the output back keeps the top-left pixels
where they were, and is the identity at sizes that are already multiples, so a package's generator gives
bitwise the training generator's output at its native size. Shape arithmetic only: the wrapper exports to
ONNX with symbolic height and width.

``GENERATORS`` names every generator class a model package may hold; ``build_generator`` rebuilds one from
its class name and JSON constructor arguments, so that loading a package needs neither its recipe nor pickle.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .animegan import AnimeGANv1Generator, AnimeGANv2Generator
from .cartoongan import CartoonGANGenerator
from .dcgan import DCGANGenerator
from .resnet import ResNetGenerator
from .unet import UNetGenerator

__all__ = ["GENERATORS", "PadToMultiple", "build_generator"]

GENERATORS: dict[str, type[nn.Module]] = {
    "UNetGenerator": UNetGenerator, "DCGANGenerator": DCGANGenerator, "ResNetGenerator": ResNetGenerator,
    "AnimeGANv2Generator": AnimeGANv2Generator, "AnimeGANv1Generator": AnimeGANv1Generator,
    "CartoonGANGenerator": CartoonGANGenerator}


def build_generator(class_name: str, args: dict[str, Any]) -> nn.Module:
    """``GENERATORS[class_name](**args)``; unknown names and arguments are ``ValueError``s that say so."""
    if class_name not in GENERATORS:
        raise ValueError(f"unknown generator class {class_name!r}; known: {', '.join(sorted(GENERATORS))}")
    try:
        return GENERATORS[class_name](**args)
    except TypeError as e:
        raise ValueError(f"{class_name}: bad constructor arguments {sorted(args)} ({e})") from None


class PadToMultiple(nn.Module):
    """``net`` on any (N, C, H, W): pads H and W up to the next multiple of ``multiple`` (replicating the
    bottom row / right column), runs ``net``, and crops its output back to H x W.

    ``net`` must map (H, W) to (H, W), as image-to-image generators do."""

    def __init__(self, net: nn.Module, multiple: int) -> None:
        super().__init__()
        if multiple < 1:
            raise ValueError(f"multiple must be >= 1, got {multiple}")
        self.net = net
        self.multiple = multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        m = self.multiple
        # No branch on the size: zero padding is a plain copy, and the graph stays shape-generic for export.
        x = F.pad(x, (0, (-width) % m, 0, (-height) % m), mode="replicate")
        return self.net(x)[..., :height, :width]

    def extra_repr(self) -> str:
        return f"multiple={self.multiple}"
