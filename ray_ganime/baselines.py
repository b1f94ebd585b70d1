"""Trivial generators that a model's held-out scores are read against, and where their scores are kept.

A metric is only meaningful next to what a model that learned nothing scores on the same images with the same
weights: on line-art pairs SSIM rewards copying the sketch (copying scores higher than many trained models), and
an FID means little without the FID of two halves of the real images. ``evaluate_generators(baselines=True)``
scores, per direction, beside the model (an unpaired direction's in the model's own pass; a paired one's in a
pass each):

- ``copy_input``: the input returned unchanged (image-to-image directions);
- ``mean_image``: the training set's mean target image, whatever the input;
- ``real_vs_real``: the FID between two halves of the held-out target images, alternate ones as the model's pass
  scores them, where the split has at least 4: what real images score against real images. A reference, not
  a strict floor: each half has half the images, and FID's small-sample bias is larger there.

They depend only on the data set, the direction, the decode settings and the metric weights, so they are computed
once and kept beside the manifest (``<data set>/baselines/<key>.json``), for every later evaluation and trial.
"""

from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ray_ganime import storage

VERSION = 1  # bump when what a baseline computes changes: older cached records are then not reused
FOLDER = "baselines"
MEAN_IMAGES = 2048  # training images averaged for the mean image (more move it by less than a grey level)
LABELS = {"copy_input": "copy the input", "mean_image": "the training set's mean image",
          "real_vs_real": "real vs real (two halves of the held-out targets)"}


class CopyInput(nn.Module):
    """The input as the output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class MeanImage(nn.Module):
    """The same image for every input: ``mean`` (H x W x 3, float in [0, 255]), resized to the input's size."""

    def __init__(self, mean: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(np.asarray(mean, np.float32) / 127.5 - 1).permute(2, 0, 1)[None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.mean
        if mean.shape[-2:] != x.shape[-2:]:
            mean = F.interpolate(mean, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return mean.to(x.dtype).expand(x.shape[0], -1, -1, -1)


def cache_key(data, direction, split: str, max_images: int | None, fid_source: str) -> dict:
    """What a direction's baselines depend on: the data set's manifest, the decode settings, the split and the
    metric's weights (``metrics.resolve_fid_source``; the record also holds the weights' sha256, checked on use)."""
    manifest = hashlib.sha256(json.dumps(data.manifest, sort_keys=True).encode()).hexdigest()
    cfg = data.cfg
    return {"version": VERSION, "data": data.uri, "manifest_sha256": manifest, "split": split,
            "source": direction.source, "target": direction.target, "paired": direction.paired,
            "crop_size": cfg.crop_size, "interpolation": cfg.interpolation, "views": cfg.views,
            "lineart_target": cfg.lineart_target, "max_images": max_images,
            "fid_source": fid_source}


def cache_uri(data, key: dict) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return storage.join(data.uri, FOLDER, f"{digest}.json")


def load(data, key: dict) -> dict | None:
    """The cached baselines for ``key``, or None."""
    uri = cache_uri(data, key)
    try:
        if not storage.exists(uri, data.options):
            return None
        record = storage.read_json(uri, data.options)
    except (storage.StorageError, ValueError):  # unreadable: computed again (and rewritten)
        return None
    return record["baselines"] if record.get("key") == key else None


def save(data, key: dict, baselines: dict) -> None:
    """Keeps ``baselines`` beside the manifest; a store that refuses (a read-only data set) costs a warning."""
    try:
        storage.write_json(cache_uri(data, key), {"key": key, "baselines": baselines}, data.options)
    except storage.StorageError as e:
        warnings.warn(f"baselines not cached ({e}): they will be computed again next time", UserWarning,
                      stacklevel=2)


def scored(result: dict) -> str:
    """``copy the input FID 185.5 SSIM 0.8515; ...; real vs real FID 86.3``, or "" without baselines."""
    base = result.get("baselines") or {}
    return "; ".join(f"{LABELS[kind].split(' (')[0]} FID {b['fid']:.1f}" + (f" SSIM {b['ssim']:.4f}" if "ssim" in b
                                                                           else "")
                     for kind in LABELS if (b := base.get(kind)))


def shortfall(result: dict) -> str:
    """``does not beat copying its input on FID and SSIM`` (FID: lower is better; SSIM: higher), or "" when it
    does on both (or has no score or no baselines to compare)."""
    copy = (result.get("baselines") or {}).get("copy_input")
    if not copy or "fid" not in result:
        return ""
    worse = ["FID"] if result["fid"] >= copy["fid"] else []
    if "ssim" in result and "ssim" in copy and result["ssim"] <= copy["ssim"]:
        worse.append("SSIM")
    return f"does not beat copying its input on {' and '.join(worse)}" if worse else ""
