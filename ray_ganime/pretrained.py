"""Pretrained weights (VGG19 for perceptual losses, Inception for FID) from a path, an fsspec URI (s3://...)
or the torch hub cache: read with ``weights_only=True`` and named by their sha256, so every result can say
which weights made it. Pure torch + fsspec: nets and metrics use it without pulling in the rest of the engine."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import Mapping

import torch


def read_bytes(source: str) -> bytes:
    if "://" in source:
        import fsspec

        with fsspec.open(source, "rb") as f:
            return f.read()
    with open(source, "rb") as f:
        return f.read()


def hub_path(filename: str) -> Path:
    """Where torchvision's downloads land in the torch hub cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def load_state_dict(source: str, pinned_sha256_prefix: str, pinned_name: str,
                    mismatch: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The state dict at ``source`` and its identity ({name, sha256, random_init, source}). Weights that are not
    the pinned file still load, named ``custom:<file>``, with ``mismatch`` as a warning."""
    data = read_bytes(source)
    digest = hashlib.sha256(data).hexdigest()
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise TypeError(f"{source}: expected a state dict (mapping), got {type(state).__name__}")
    if digest.startswith(pinned_sha256_prefix):
        name = pinned_name
    else:
        name = f"custom:{os.path.basename(source.rstrip('/'))}"
        warnings.warn(f"{source} (sha256 {digest[:16]}...): {mismatch}", UserWarning, stacklevel=4)
    return dict(state), {"name": name, "sha256": digest, "random_init": False, "source": source}
