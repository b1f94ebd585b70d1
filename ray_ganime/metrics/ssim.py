"""SSIM exactly as ``tf.image.ssim`` (the default/biased variant).

``tf.image.ssim(a, b, max_val, filter_size=11, filter_sigma=1.5, k1=0.01, k2=0.03)``:

* an 11x11 Gaussian window (sigma 1.5), normalised to sum 1; it is the outer
  product of a normalised 1-D Gaussian, so we filter separably;
* VALID filtering (no padding): the SSIM map is (H-10) x (W-10);
* biased (population) variances/covariance: ``E[x^2] - E[x]^2``;
* SSIM map -> mean over H, W -> mean over channels.

This equals ``skimage.metrics.structural_similarity(x, y, gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=max_val, channel_axis=-1)``:
skimage filters with 'reflect' padding but crops ``(win_size - 1) // 2 = 5``
pixels from each border before averaging, which leaves exactly the VALID region.

Two entry points:

* :func:`ssim` -- numpy, float64, HWC or NHWC (uint8/float numpy arrays or torch
  tensors); returns a float for one image, an ``(N,)`` array for a batch.
* :func:`ssim_torch` -- torch, NCHW float tensors on any device (training-time
  use); returns an ``(N,)`` tensor.

Both compute the second moments on per-image/per-channel mean-centred data,
which is mathematically identical (the window is normalised, so
``E[(x-m)^2] - E[x-m]^2 == E[x^2] - E[x]^2``) but avoids the catastrophic
cancellation of ``E[x^2] - E[x]^2`` at the 0..255 scale, so the float32 torch
path agrees with the float64 numpy path to ~1e-6.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ssim", "ssim_torch", "gaussian_window_1d", "FILTER_SIZE", "FILTER_SIGMA", "K1", "K2"]

FILTER_SIZE = 11
FILTER_SIGMA = 1.5
K1 = 0.01
K2 = 0.03


def gaussian_window_1d(size: int = FILTER_SIZE, sigma: float = FILTER_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian, float64 (as tf.image's ``_fspecial_gauss``, separably)."""
    coords = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-0.5 * (coords / sigma) ** 2)
    return g / g.sum()


def _to_numpy(x: Any) -> np.ndarray:
    # Accept torch tensors without importing torch here.
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _valid_filter_hw(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """VALID separable correlation over axes -3 (H) and -2 (W) of (..., H, W, C)."""
    k = g.shape[0]
    h, w = x.shape[-3], x.shape[-2]
    oh, ow = h - k + 1, w - k + 1
    acc = g[0] * x[..., 0:oh, :, :]
    for i in range(1, k):
        acc = acc + g[i] * x[..., i : i + oh, :, :]
    out = g[0] * acc[..., :, 0:ow, :]
    for i in range(1, k):
        out = out + g[i] * acc[..., :, i : i + ow, :]
    return out


def ssim(a: Any, b: Any, max_val: float = 255.0) -> float | np.ndarray:
    """SSIM of HWC images (-> float) or NHWC batches (-> ``(N,)`` float64 array).

    Inputs may be uint8 or float numpy arrays, or torch tensors in the same
    (channels-last) layout. ``max_val`` is the dynamic range (255 for uint8,
    1.0 for [0, 1] floats).
    """
    x = _to_numpy(a).astype(np.float64, copy=False)
    y = _to_numpy(b).astype(np.float64, copy=False)
    if x.shape != y.shape:
        raise ValueError(f"ssim: shape mismatch {x.shape} vs {y.shape}")
    if x.ndim == 3:
        single = True
        x, y = x[None], y[None]
    elif x.ndim == 4:
        single = False
    else:
        raise ValueError(f"ssim: expected HWC or NHWC, got shape {x.shape}")
    n, h, w, c = x.shape
    if h < FILTER_SIZE or w < FILTER_SIZE:
        raise ValueError(f"ssim: images must be at least {FILTER_SIZE}x{FILTER_SIZE}, got {h}x{w}")

    g = gaussian_window_1d()
    c1 = (K1 * max_val) ** 2
    c2 = (K2 * max_val) ** 2

    mx = x.mean(axis=(1, 2), keepdims=True)
    my = y.mean(axis=(1, 2), keepdims=True)
    xc = x - mx
    yc = y - my
    mu_xc = _valid_filter_hw(xc, g)
    mu_yc = _valid_filter_hw(yc, g)
    var_x = _valid_filter_hw(xc * xc, g) - mu_xc * mu_xc
    var_y = _valid_filter_hw(yc * yc, g) - mu_yc * mu_yc
    cov = _valid_filter_hw(xc * yc, g) - mu_xc * mu_yc
    mu_x = mu_xc + mx
    mu_y = mu_yc + my

    luminance = (2.0 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
    cs = (2.0 * cov + c2) / (var_x + var_y + c2)
    per_channel = (luminance * cs).mean(axis=(1, 2))  # (N, C)
    per_image = per_channel.mean(axis=-1)  # (N,)
    return float(per_image[0]) if single else per_image


def ssim_torch(a, b, max_val: float = 255.0):
    """SSIM of NCHW float tensors (same device/dtype) -> ``(N,)`` tensor.

    Same definition as :func:`ssim` (tf.image.ssim); computed in the input
    dtype (float32 or float64; half precision inputs are upcast to float32).
    Differentiable, runs on any device.
    """
    import torch
    import torch.nn.functional as F

    if a.shape != b.shape:
        raise ValueError(f"ssim_torch: shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.ndim != 4:
        raise ValueError(f"ssim_torch: expected NCHW, got shape {tuple(a.shape)}")
    dtype = torch.promote_types(a.dtype, b.dtype)
    if not dtype.is_floating_point or dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    x = a.to(dtype)
    y = b.to(dtype)
    n, c, h, w = x.shape
    if h < FILTER_SIZE or w < FILTER_SIZE:
        raise ValueError(f"ssim_torch: images must be at least {FILTER_SIZE}x{FILTER_SIZE}, got {h}x{w}")

    g = torch.as_tensor(gaussian_window_1d(), dtype=dtype, device=x.device)
    k = g.numel()
    mx = x.mean(dim=(2, 3), keepdim=True)
    my = y.mean(dim=(2, 3), keepdim=True)
    xc = x - mx
    yc = y - my
    # One grouped separable VALID conv over the 5 moment maps.
    stack = torch.cat([xc, yc, xc * xc, yc * yc, xc * yc], dim=1)  # (N, 5C, H, W)
    groups = stack.shape[1]
    wv = g.view(1, 1, k, 1).expand(groups, 1, k, 1)
    wh = g.view(1, 1, 1, k).expand(groups, 1, 1, k)
    filt = F.conv2d(F.conv2d(stack, wv, groups=groups), wh, groups=groups)
    mu_xc, mu_yc, e_xx, e_yy, e_xy = torch.split(filt, c, dim=1)
    var_x = e_xx - mu_xc * mu_xc
    var_y = e_yy - mu_yc * mu_yc
    cov = e_xy - mu_xc * mu_yc
    mu_x = mu_xc + mx
    mu_y = mu_yc + my

    c1 = (K1 * max_val) ** 2
    c2 = (K2 * max_val) ** 2
    luminance = (2.0 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
    cs = (2.0 * cov + c2) / (var_x + var_y + c2)
    return (luminance * cs).mean(dim=(2, 3)).mean(dim=1)
