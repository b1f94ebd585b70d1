"""The image pool of CycleGAN (Shrivastava et al. 2017; ``ImagePool`` of junyanz/pytorch-CycleGAN-and-pix2pix).

A discriminator trained on a history of generated images, not only the latest batch, oscillates less. The
pool keeps up to ``capacity`` generated images; :meth:`ImagePool.query` answers a batch image by image:

* while the pool is not full: store the image and return it;
* once full: with probability 0.5 return a stored image (chosen uniformly) and store the new one in its place,
  otherwise return the new image.

Unlike canonical (Python's global ``random``), the draws come from the pool's own ``torch.Generator``, seeded
in the constructor, so that nothing else consumes them and nothing here consumes anyone else's:
:meth:`ImagePool.state_dict` carries the stored images and the generator's state, and a pool restored from it
answers bit-identically to one that never stopped (exact resume). Plain PyTorch, no Ray.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

__all__ = ["ImagePool"]

SWAP_PROBABILITY = 0.5


class ImagePool:
    """A buffer of up to ``capacity`` generated images (canonical: 50); ``capacity`` 0 passes images through.

    ``query`` returns a detached batch of the input's shape, dtype and device (the pool is for the
    discriminator's update; no gradient flows through it, as canonical's ``image.data``). Stored images are
    detached clones on the device they came in on; :meth:`state_dict` moves them to the CPU.
    """

    def __init__(self, capacity: int = 50, seed: int = 0) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.images: list[torch.Tensor] = []
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return len(self.images)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` (N, ...) -> (N, ...): each image itself, or a stored one it replaces (see the module doc)."""
        images = images.detach()
        if self.capacity == 0:
            return images
        out = []
        for image in images:
            if len(self.images) < self.capacity:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand((), generator=self.generator).item() < SWAP_PROBABILITY:
                slot = int(torch.randint(self.capacity, (), generator=self.generator).item())
                old, self.images[slot] = self.images[slot], image.clone()
                out.append(old.to(device=images.device, dtype=images.dtype))
            else:
                out.append(image)
        return torch.stack(out)

    def state_dict(self) -> dict[str, Any]:
        """``capacity``, the stored ``images`` (CPU tensors, in slot order) and the generator's ``rng`` state;
        plain tensors, lists and ints (``torch.load(weights_only=True)`` reads them)."""
        return {"capacity": self.capacity, "images": [image.cpu() for image in self.images],
                "rng": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores a :meth:`state_dict`; its capacity must equal this pool's (a resumed run that changed the
        pool size would not be an exact resume). Images stay on the CPU until a query returns them."""
        if state["capacity"] != self.capacity:
            raise ValueError(f"image pool state has capacity {state['capacity']}, this pool {self.capacity}")
        images = list(state["images"])
        if len(images) > self.capacity:
            raise ValueError(f"image pool state holds {len(images)} images, more than its capacity {self.capacity}")
        self.generator.set_state(state["rng"].cpu())
        self.images = [image.detach().clone() for image in images]

    def __repr__(self) -> str:
        return f"ImagePool(capacity={self.capacity}, stored={len(self.images)})"
