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
    "fid_of_moments",
    "FeatureMoments",
    "moments_pair",
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


class FeatureMoments:
    """Streaming mean and covariance of (N, D) rows in float64, shifted by the first batch's mean so that the
    sums do not lose precision to a large common offset. While there are at most ``keep_rows`` rows it also
    keeps them (float32), for the exact low-rank FID of ``fid_of_moments``."""

    def __init__(self, keep_rows: int) -> None:
        self.n = 0
        self.shift: np.ndarray | None = None
        self.sum: np.ndarray | None = None
        self.outer: np.ndarray | None = None
        self.keep_rows = keep_rows
        self.rows: list[np.ndarray] | None = []

    def add(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        if not len(rows):
            return
        d = rows.astype(np.float64)
        if self.shift is None:
            self.shift = d.mean(axis=0)
            self.sum = np.zeros_like(self.shift)
            self.outer = np.zeros((len(self.shift), len(self.shift)))
        d -= self.shift
        self.n += len(rows)
        self.sum += d.sum(axis=0)
        self.outer += d.T @ d
        if self.rows is not None:
            self.rows = self.rows + [np.array(rows, np.float32)] if self.n <= self.keep_rows else None

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise ValueError(f"FID needs at least 2 images, got {self.n}")
        m = self.sum / self.n
        cov = (self.outer - self.n * np.outer(m, m)) / (self.n - 1)
        return self.shift + m, 0.5 * (cov + cov.T)


def moments_pair(dim: int) -> tuple[FeatureMoments, FeatureMoments]:
    """Two accumulators that keep their rows while n1 + n2 - 1 < ``dim`` (the exact low-rank path)."""
    return FeatureMoments((dim - 2) // 2), FeatureMoments((dim - 2) // 2)


def fid_of_moments(fake: FeatureMoments, real: FeatureMoments) -> float:
    """``frechet_distance`` of the two feature Gaussians (float64).

    With fewer images than feature dimensions (the usual small test split: n1 + n2 - 1 < 2048) it is
    evaluated in an orthonormal basis Q of the span of the centred features of both sets and of the
    mean difference. That is exact, not an approximation: both covariances and mu1 - mu2 live in that
    span, so |mu1 - mu2|^2, the traces and the eigenvalues of S1 S2 are all unchanged by Q^T . Q. It
    is much faster (eigen-decompositions of r x r instead of 2048 x 2048 matrices: tens of seconds on a
    busy CPU) and more accurate (no square roots of round-off eigenvalues in the 2048 - r null space).
    """
    (mu1, s1), (mu2, s2) = fake.statistics(), real.statistics()
    if fake.rows is None or real.rows is None:
        return frechet_distance(mu1, s1, mu2, s2)
    basis = np.concatenate([np.concatenate(fake.rows) - mu1, np.concatenate(real.rows) - mu2,
                            (mu1 - mu2)[None]]).T
    q, _ = np.linalg.qr(basis)  # (D, r), orthonormal columns spanning (a superset of) that span
    return frechet_distance(q.T @ mu1, q.T @ s1 @ q, q.T @ mu2, q.T @ s2 @ q)


def fid_from_features(feats_a, feats_b, warn: bool = True) -> float:
    """FID between two in-memory ``(N, D)`` feature sets, exact at any N (see ``fid_of_moments``); warns when
    either has < 2048 rows unless ``warn`` is False."""
    fa = np.asarray(feats_a)
    fb = np.asarray(feats_b)
    if fa.ndim != 2 or fb.ndim != 2 or fa.shape[1] != fb.shape[1]:
        raise ValueError(f"fid_from_features: incompatible feature shapes {fa.shape} and {fb.shape}")
    if warn:
        warn_if_few_samples(fa.shape[0], "first set")
        warn_if_few_samples(fb.shape[0], "second set")
    moments = moments_pair(fa.shape[1])
    for m, rows in zip(moments, (fa, fb)):
        m.add(rows)
    return float(fid_of_moments(*moments))
