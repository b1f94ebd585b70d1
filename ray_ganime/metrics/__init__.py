"""Image-quality metrics: SSIM (tf.image.ssim semantics) and FID.

Plain numpy / PyTorch; nothing here imports Ray. The Inception parts (which
import torchvision) are loaded lazily on first attribute access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .fid import (
    RECOMMENDED_MIN_SAMPLES,
    FeatureMoments,
    feature_statistics,
    fid_from_features,
    fid_of_moments,
    moments_pair,
    frechet_distance,
    warn_if_few_samples,
)
from .ssim import ssim, ssim_torch

if TYPE_CHECKING:  # pragma: no cover
    from .inception import (FIDInceptionV3, inception_features, load_fid_helper_torchscript, load_fid_inception,
                            resolve_fid_source)

_LAZY_INCEPTION = {"FIDInceptionV3", "load_fid_inception", "load_fid_helper_torchscript", "inception_features",
                   "resolve_fid_source"}

__all__ = [
    "ssim",
    "ssim_torch",
    "frechet_distance",
    "feature_statistics",
    "fid_from_features",
    "fid_of_moments",
    "FeatureMoments",
    "moments_pair",
    "inception_features",
    "warn_if_few_samples",
    "RECOMMENDED_MIN_SAMPLES",
    "FIDInceptionV3",
    "load_fid_inception",
    "load_fid_helper_torchscript",
    "resolve_fid_source",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY_INCEPTION:
        from . import inception

        return getattr(inception, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
