"""Fréchet (Inception) distance on feature statistics. Plain numpy, float64.

``d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2)``

``tr sqrt(S1 S2)`` is computed without ``scipy.linalg.sqrtm``: S1 S2 is similar
to the symmetric PSD matrix ``sqrt(S1) S2 sqrt(S1)``, so its (real,
non-negative) eigenvalues are those of the latter, and ``tr sqrt(S1 S2)`` is
the sum of their square roots. ``sqrt(S1)`` comes from a symmetric
eigendecomposition with tiny negative eigenvalues (round-off) clipped to 0.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = [
    "RECOMMENDED_MIN_SAMPLES",
    "frechet_distance",
    "feature_statistics",
    "fid_from_features",
    "warn_if_few_samples",
]

#: The usual FID protocol uses >= 2048 (often 10k/50k) images per set; with fewer
#: than the feature dimension the covariance is rank deficient.
RECOMMENDED_MIN_SAMPLES = 2048


def _sym_sqrt_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    w = np.clip(w, 0.0, None)
    return (v * np.sqrt(w)) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64."""
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    s1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    s2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"frechet_distance: mean shapes differ or not 1-D: {mu1.shape} vs {mu2.shape}")
    d = mu1.shape[0]
    if s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"frechet_distance: covariances must be ({d}, {d}), got {s1.shape} and {s2.shape}")
    for name, arr in (("mu1", mu1), ("mu2", mu2), ("sigma1", s1), ("sigma2", s2)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"frechet_distance: {name} contains non-finite values")

    # Symmetrise against round-off from whoever produced the covariances.
    s1 = 0.5 * (s1 + s1.T)
    s2 = 0.5 * (s2 + s2.T)
    sqrt_s1 = _sym_sqrt_psd(s1)
    m = sqrt_s1 @ s2 @ sqrt_s1
    m = 0.5 * (m + m.T)
    ev = np.clip(np.linalg.eigvalsh(m), 0.0, None)
    tr_covmean = float(np.sqrt(ev).sum())

    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of an ``(N, D)`` feature matrix, float64, unbiased cov (N-1)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"feature_statistics: expected (N, D) features, got shape {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"feature_statistics: need at least 2 samples, got {f.shape[0]}")
    mu = f.mean(axis=0)
    sigma = np.atleast_2d(np.cov(f, rowvar=False))
    return mu, sigma


def warn_if_few_samples(n: int, what: str = "set", minimum: int = RECOMMENDED_MIN_SAMPLES) -> bool:
    """Warn (and return True) when ``n`` < ``minimum`` images are used for one FID set."""
    if n < minimum:
        warnings.warn(
            f"FID computed from only {n} images for the {what} (< {minimum}): the covariance "
            "estimate is rank deficient and the FID is an unstable, upward-biased estimate; "
            "do not compare it with published FIDs (which use >= 10k-50k images).",
            UserWarning,
            stacklevel=2,
        )
        return True
    return False


def fid_from_features(feats_a, feats_b) -> float:
    """FID between two ``(N, D)`` feature sets (warns when either has < 2048 rows)."""
    fa = np.asarray(feats_a)
    fb = np.asarray(feats_b)
    if fa.ndim != 2 or fb.ndim != 2 or fa.shape[1] != fb.shape[1]:
        raise ValueError(f"fid_from_features: incompatible feature shapes {fa.shape} and {fb.shape}")
    warn_if_few_samples(fa.shape[0], "first set")
    warn_if_few_samples(fb.shape[0], "second set")
    mu1, s1 = feature_statistics(fa)
    mu2, s2 = feature_statistics(fb)
    return frechet_distance(mu1, s1, mu2, s2)
