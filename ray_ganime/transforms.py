"""Per-image stages of the GAN papers, as pure numpy/OpenCV functions.

Arrays are ``numpy.uint8`` RGB: one image is ``(H, W, 3)``, a batch is ``(N, H, W, 3)``. Only
``to_tensor``/``to_uint8`` and the device-side ``crop_flip_tensor``/``to_float`` touch torch. Every
function is deterministic: the random ones take an explicit ``numpy.random.Generator`` and draw from it
in a documented order, or (``keyed_crop_flip_params``) hash explicit keys.

Where they run:

* Ray Data ``map_batches`` (heavy, deterministic): ``resize``, ``grayscale``, ``edge_smooth_batch``,
  ``normalize_lineart_batch``, ``center_crop``.
* the training worker's collate function (no per-pixel work): ``keyed_crop_flip_params``, the crop/flip
  of each example keyed by its id, so it does not depend on batch grouping or order.
* the training device (``data.Pixels.to``): ``crop_flip_tensor``, ``to_float`` (bitwise ``to_tensor``).
* evaluation and inference: ``center_crop``, ``to_tensor``. ``random_crop_flip_batch`` draws sequentially
  from one generator, for callers that own the batch order.

Sources of the constants:

* pix2pix / CycleGAN ``get_transform``: resize to ``load_size`` square ignoring aspect (bicubic), random
  ``crop_size`` crop, random horizontal flip, then ``Normalize(0.5, 0.5)`` i.e. ``x / 127.5 - 1``.
* CartoonGAN "edge promoting" as implemented in AnimeGAN's ``edge_smooth.py``: Canny(100, 200),
  dilate with a 5x5 box, 5x5 Gaussian (sigma from the size) inside the dilated edge band.
* AnimeGAN: gray views are 3 equal channels, because they are fed to a 3-channel VGG.
* CycleGANime ``set_im_mean``: bring the mean of the non-white line-art pixels to 200 by repeated
  brightening (``x = |target - mean| / 255 + 0.005``) or darkening (``* 0.995 - 1.275``), at most 50 times.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:  # torch is imported lazily: Ray Data workers running only the numpy stages skip it
    import torch

INTERPOLATIONS = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA}


# ----------------------------------------------------------------------------------------------- helpers


def _check_image_or_batch(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim not in (3, 4) or array.shape[-1] != 3:
        raise ValueError(
            f"expected uint8 (H, W, 3) or (N, H, W, 3), got {array.dtype} {array.shape}"
        )
    return array


def _check_image(image: np.ndarray) -> np.ndarray:
    image = _check_image_or_batch(image)
    if image.ndim != 3:
        raise ValueError(f"expected one uint8 (H, W, 3) image, got shape {image.shape}")
    return image


def _check_batch(batch: np.ndarray) -> np.ndarray:
    batch = _check_image_or_batch(batch)
    if batch.ndim != 4:
        raise ValueError(f"expected a uint8 (N, H, W, 3) batch, got shape {batch.shape}")
    return batch


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    """int -> (size, size); (h, w) as given."""
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def _map_images(fn, batch: np.ndarray, *args, **kwargs) -> np.ndarray:
    """Apply a per-image function to each image of a batch, into one preallocated array."""
    first = fn(batch[0], *args, **kwargs)
    out = np.empty((len(batch),) + first.shape, dtype=first.dtype)
    out[0] = first
    for i in range(1, len(batch)):
        out[i] = fn(batch[i], *args, **kwargs)
    return out


# ------------------------------------------------------------------------------------------ geometry


def resize(
    image: np.ndarray, size: int | tuple[int, int], interpolation: str = "bicubic"
) -> np.ndarray:
    """Resize to exactly ``size x size`` (or ``(h, w)``), ignoring the aspect ratio like pix2pix.

    ``interpolation``: "bicubic" (default; pix2pix's ``get_transform`` uses BICUBIC), "bilinear" or
    "area" (use it when shrinking by more than ~2x: cv2's bilinear/bicubic do not antialias, unlike PIL).
    cv2's bicubic is not bit-identical to PIL's. Also takes a batch (N, H, W, 3), resized image by image.
    """
    image = _check_image_or_batch(image)
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; expected one of {sorted(INTERPOLATIONS)}")
    height, width = _pair(size)
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size}")
    if image.ndim == 4:
        if len(image) == 0:
            return np.empty((0, height, width, 3), np.uint8)
        return _map_images(resize, image, (height, width), interpolation)
    # cv2 takes (width, height).
    return cv2.resize(image, (width, height), interpolation=INTERPOLATIONS[interpolation])


def fit_max_side(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """``image`` shrunk (area interpolation, aspect kept) so that its longer side is at most ``max_side``;
    the same array when it already fits or ``max_side`` is None."""
    height, width = image.shape[:2]
    if not max_side or max(height, width) <= max_side:
        return image
    scale = max_side / max(height, width)
    return resize(image, (max(1, round(height * scale)), max(1, round(width * scale))), "area")


def crop_flip_params(
    rng: np.random.Generator, height: int, width: int, crop: int, flip: bool = True
) -> tuple[int, int, bool]:
    """Draw ``(top, left, flip)`` for a ``crop x crop`` window inside ``height x width``.

    Offsets are uniform over every valid position (pix2pix's ``randint(0, size - crop)``, inclusive), so
    ``crop == size`` gives (0, 0). Always draws exactly three values (top, left, coin) in that order,
    also when ``flip`` is False, so the crop positions for a seed do not depend on the flip setting.
    """
    if crop < 1 or crop > height or crop > width:
        raise ValueError(f"crop {crop} does not fit in {height}x{width}")
    top = int(rng.integers(0, height - crop + 1))
    left = int(rng.integers(0, width - crop + 1))
    coin = bool(rng.random() < 0.5)
    return top, left, flip and coin


def crop_flip(image_or_batch: np.ndarray, top: int, left: int, crop: int, flip: bool) -> np.ndarray:
    """Crop ``[top:top+crop, left:left+crop]`` then mirror left-right if ``flip``.

    The same window and flip are applied to every image given, so a batch here means "the same
    params for all"; for per-example params use ``random_crop_flip_batch``. Returns a new C-contiguous
    array (never a view: torch.from_numpy refuses the negative strides of a flipped view, and callers
    may write into the result).
    """
    array = _check_image_or_batch(image_or_batch)
    height, width = array.shape[-3:-1]
    if not (0 <= top and 0 <= left and 1 <= crop and top + crop <= height and left + crop <= width):
        raise ValueError(f"crop {crop} at ({top}, {left}) is outside {height}x{width}")
    window = array[..., top : top + crop, left : left + crop, :]
    if not flip:
        return window.copy()
    # cv2.flip is ~20x faster than copying numpy's negative-stride view (3-byte pixels defeat memcpy).
    if window.ndim == 3:
        return cv2.flip(window, 1)
    out = np.empty(window.shape, np.uint8)
    for i in range(len(window)):
        out[i] = cv2.flip(window[i], 1)
    return out


def random_crop_flip_batch(
    rng: np.random.Generator, batch_by_column: dict[str, np.ndarray], crop: int, flip: bool = True
) -> dict[str, np.ndarray]:
    """Random crop + flip with per-EXAMPLE params shared by all columns of that example.

    For a paired data set ``{"sketch": (N,H,W,3), "color": (N,H,W,3)}`` example ``i`` of both columns
    gets the same window and flip, so the pair stays pixel-aligned. Params are drawn by calling
    ``crop_flip_params(rng, H, W, crop, flip)`` once per example, for i = 0..N-1 in order, so the same
    seed reproduces them. All columns must be uint8 batches with the same N, H and W; pass only image
    columns (ids and other metadata do not go through here).
    """
    if not batch_by_column:
        return {}
    columns = {name: _check_batch(array) for name, array in batch_by_column.items()}
    shapes = {name: array.shape for name, array in columns.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"columns must have the same shape to be cropped together, got {shapes}")
    n, height, width, _ = next(iter(shapes.values()))
    out = {name: np.empty((n, crop, crop, 3), np.uint8) for name in columns}
    for i in range(n):
        top, left, mirror = crop_flip_params(rng, height, width, crop, flip)
        for name, array in columns.items():
            out[name][i] = crop_flip(array[i], top, left, crop, mirror)
    return out


def center_crop(image_or_batch: np.ndarray, crop: int | tuple[int, int]) -> np.ndarray:
    """The central ``crop x crop`` (or ``(h, w)``) window; odd margins put the extra pixel at the
    bottom/right (offset ``(size - crop) // 2``; torchvision rounds half to even instead, so an odd
    margin can be one pixel off from it). Returns a contiguous copy."""
    array = _check_image_or_batch(image_or_batch)
    crop_h, crop_w = _pair(crop)
    height, width = array.shape[-3:-1]
    if not (1 <= crop_h <= height and 1 <= crop_w <= width):
        raise ValueError(f"crop {crop} does not fit in {height}x{width}")
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return array[..., top : top + crop_h, left : left + crop_w, :].copy()


# --------------------------------------------------------------------------------------------- colour


def _gray(image_or_batch: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma as uint8 (H, W) / (N, H, W). A batch is one cv2 call on an (N*H, W, 3) view."""
    array = np.ascontiguousarray(image_or_batch)
    flat = array.reshape(-1, array.shape[-2], 3)
    return cv2.cvtColor(flat, cv2.COLOR_RGB2GRAY).reshape(array.shape[:-1])


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def grayscale(image_or_batch: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma (0.299 R + 0.587 G + 0.114 B, exactly cv2's COLOR_RGB2GRAY), as 3 equal channels.

    Three channels because AnimeGAN feeds gray images to the same 3-channel VGG as colour ones.
    """
    array = _check_image_or_batch(image_or_batch)
    if array.size == 0:
        return array.copy()
    return _gray_to_rgb(_gray(array))


# ------------------------------------------------------------------------------- CartoonGAN edge smooth


def edge_smooth(image: np.ndarray, canny: tuple[int, int] = (100, 200), kernel_size: int = 5) -> np.ndarray:
    """CartoonGAN's edge-promoting blur, as in AnimeGAN's ``edge_smooth.py``.

    Anime frames have crisp line edges; CartoonGAN trains its discriminator to call "same frame with
    the edges blurred" fake, so the generator learns to draw crisp edges. Steps:

    1. Canny(100, 200) on the gray image; 2. dilate the edge map with a ``k x k`` box (k = 5);
    3. inside that band, replace each pixel by a ``k x k`` Gaussian-weighted mean (sigma derived from
       k as cv2 does for sigma=0, i.e. 1.1 for k = 5) of the reflect-padded image. Pixels outside
       the band are returned unchanged, bit for bit.

    Border: the reference pads with ``np.pad(mode="reflect")``, which is cv2.BORDER_REFLECT_101.
    Rounding: the reference writes the float sum into uint8 (truncation); cv2.GaussianBlur rounds, so
    band pixels can differ from the reference by one level.
    """
    image = _check_image(image)
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    if image.size == 0:
        return image.copy()
    image = np.ascontiguousarray(image)
    edges = cv2.Canny(_gray(image), canny[0], canny[1])
    band = cv2.dilate(edges, np.ones((kernel_size, kernel_size), np.uint8))
    if not band.any():  # flat or gently shaded image: nothing to smooth
        return image.copy()
    blurred = cv2.GaussianBlur(image, (kernel_size, kernel_size), 0, borderType=cv2.BORDER_REFLECT_101)
    return np.where(band[..., None] != 0, blurred, image)


def edge_smooth_batch(
    batch: np.ndarray, canny: tuple[int, int] = (100, 200), kernel_size: int = 5
) -> np.ndarray:
    """``edge_smooth`` on every image of an (N, H, W, 3) batch (Canny is per image, so a loop)."""
    batch = _check_batch(batch)
    if len(batch) == 0:
        return batch.copy()
    return _map_images(edge_smooth, batch, canny, kernel_size)


# -------------------------------------------------------------------------- CycleGANime line-art mean


def lineart_lut(
    hist: np.ndarray, target: float = 200.0, max_iter: int = 50, white: int = 254
) -> tuple[np.ndarray, int]:
    """The gray-level map of ``normalize_lineart`` for an image with this 256-bin gray histogram.

    Returns ``(lut, iterations)``: ``lut[v]`` is the float32 value an input pixel of gray level ``v``
    ends at, ``iterations`` how many brighten/darken steps ran (<= max_iter).

    Why a LUT: every step maps each non-white pixel through the same function of its current value
    (affine, then a clip to [0, 255]), so a pixel's final value depends only on its initial gray
    level. Running the steps on the 256 levels, and the mean as a histogram-weighted sum, gives
    exactly what a per-pixel loop gives, at O(256) per step instead of O(H*W). (Composing the affine
    maps on the scalar mean alone would be exact too, but only while nothing clips; darkening can
    push black pixels below 0, and the LUT keeps the per-step clip exact.)
    """
    lut = np.arange(256, dtype=np.float32)
    counts = np.asarray(hist, dtype=np.float64)[:white]
    total = counts.sum()
    if total == 0:  # all white: nothing to normalise
        return lut, 0

    def mean() -> float:
        # float64 mean of the float32 pixel values of the (fixed) non-white set
        return float(counts @ lut[:white].astype(np.float64)) / total

    iterations = 0
    current = mean()
    if current < target:
        # Brighten towards white: im*(1-x) + 255*x. The 0.005 makes sure the last step overshoots
        # (CycleGANime), so the loop stops just above the target instead of creeping towards it.
        while iterations < max_iter and not current > target:
            x = abs(target - current) / 255 + 0.005
            lut[:white] = np.clip(lut[:white] * np.float32(1 - x) + np.float32(255 * x), 0, 255)
            iterations += 1
            current = mean()
    else:
        # Darken: im*0.995 - 255*0.005, i.e. shrink towards -255 by 0.5 % per step (CycleGANime).
        while iterations < max_iter and not current <= target:
            lut[:white] = np.clip(lut[:white] * np.float32(0.995) - np.float32(1.275), 0, 255)
            iterations += 1
            current = mean()
    return lut, iterations


def normalize_lineart(
    image: np.ndarray, target: float = 200.0, max_iter: int = 50, white: int = 254
) -> np.ndarray:
    """CycleGANime line-art normalisation: bring the mean gray of the non-white pixels to ``target``.

    Takes one uint8 (H, W, 3) RGB or (H, W) gray image; returns (H, W, 3) gray.

    Line art from different artists (pen pressure, scan exposure) differs mostly in how dark the
    strokes are; CycleGANime equalises that before the generator sees it. The image is converted to
    gray; pixels with gray < ``white`` (254) are "non-white". Then, at most ``max_iter`` times:

    * if the mean of those pixels started below ``target``: brighten ``v -> v*(1-x) + 255*x`` with
      ``x = |target - mean| / 255 + 0.005`` until the mean is > target;
    * otherwise darken ``v -> v*0.995 - 1.275`` until the mean is <= target.

    Each step is computed in float32 and clipped to [0, 255]; the result is rounded to uint8 and
    returned as 3 equal channels. White pixels are untouched.

    Deliberate differences from CycleGANime's ``set_im_mean``: the non-white set is decided ONCE from
    the gray input (the original thresholds the raw values again every step, so brightened strokes
    that pass 254 drop out of the set mid-way); values are clipped (the original lets darkened blacks
    go negative and then wrap around in ``astype(uint8)``); darkening stops at mean <= target (the
    original: < target); and the result is rounded, not truncated.

    Landing accuracy (float mean of the originally non-white pixels, before rounding): brightening
    stops within about 0.005 * (255 - target) = 0.3 above the target; darkening within one step,
    0.005 * (target + 255) = 2.3, below it. Rounding to uint8 moves the mean by at most 0.5 more.
    """
    array = np.asarray(image)
    if array.ndim == 2 and array.dtype == np.uint8:  # already gray
        gray = np.ascontiguousarray(array)
    else:
        gray = _gray(_check_image(array))
    if gray.size == 0:
        return _gray_to_rgb(gray)
    hist = np.bincount(gray.ravel(), minlength=256)
    lut, _ = lineart_lut(hist, target, max_iter, white)
    lut_u8 = np.clip(np.rint(lut), 0, 255).astype(np.uint8)
    return _gray_to_rgb(cv2.LUT(gray, lut_u8))


def normalize_lineart_batch(
    batch: np.ndarray, target: float = 200.0, max_iter: int = 50, white: int = 254
) -> np.ndarray:
    """``normalize_lineart`` per image of an (N, H, W, 3) batch (each image has its own mean)."""
    batch = _check_batch(batch)
    if len(batch) == 0:
        return batch.copy()
    return _map_images(normalize_lineart, batch, target, max_iter, white)


# ---------------------------------------------------------------------------------------------- views

# The derived views a data set can add to an image column (data.views) and a model package can ask serving to
# apply to an upload (input.preprocess.view): the same function in both places, so served inputs are prepared
# exactly as training's were.
VIEWS = ("gray", "smooth", "smooth_gray", "lineart")


def view(image: np.ndarray, name: str, lineart_target: float = 200.0) -> np.ndarray:
    """One uint8 (H, W, 3) image as derived view ``name`` (one of ``VIEWS``), uint8 (H, W, 3).

    ``gray``: ``grayscale``; ``smooth``: ``edge_smooth``; ``smooth_gray``: gray of the edge-smoothed image;
    ``lineart``: ``normalize_lineart`` to ``lineart_target``.
    """
    if name == "gray":
        return grayscale(_check_image(image))
    if name == "smooth":
        return edge_smooth(image)
    if name == "smooth_gray":
        return grayscale(edge_smooth(image))
    if name == "lineart":
        return normalize_lineart(_check_image(image), target=lineart_target)
    raise ValueError(f"unknown view {name!r}; expected one of {list(VIEWS)}")


# ---------------------------------------------------------------------------------------------- torch


def to_tensor(batch: np.ndarray, channels_last_memory: bool = False) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [-1, 1] as ``x / 127.5 - 1``; (H, W, 3) -> (3, H, W).

    pix2pix's ToTensor + Normalize((0.5,)*3, (0.5,)*3). With ``channels_last_memory`` a 4-D result keeps
    the NHWC memory layout (torch.channels_last), skipping one copy for convolution nets that run
    channels-last; otherwise it is contiguous NCHW. The flag has no effect on a single image.
    """
    import torch

    array = _check_image_or_batch(batch)
    single = array.ndim == 3
    if single:
        array = array[None]
    # from_numpy shares memory; .to(float32) on the permuted view makes the one copy we need, so a
    # read-only input (Ray Data hands those out) is never written and torch's warning is noise.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)
    memory_format = torch.channels_last if channels_last_memory and not single else torch.contiguous_format
    tensor = tensor.to(dtype=torch.float32, memory_format=memory_format)
    tensor.div_(127.5).sub_(1.0)
    return tensor[0] if single else tensor


def to_uint8(tensor: torch.Tensor | np.ndarray) -> np.ndarray:
    """Inverse of ``to_tensor``: float [-1, 1] (N, 3, H, W) or (3, H, W) -> uint8 (N, H, W, 3) / (H, W, 3).

    Values are mapped by ``(x + 1) * 127.5``, clipped to [0, 255] and rounded, so generator outputs a
    little outside [-1, 1] saturate instead of wrapping. Exact inverse of ``to_tensor`` on uint8 input.
    Computed on the tensor's own device (add, multiply and round are exact IEEE operations there too), so
    only uint8 comes back to the host.
    """
    import torch

    tensor = torch.as_tensor(tensor).detach().float()
    if tensor.ndim not in (3, 4) or tensor.shape[-3] != 3:
        raise ValueError(f"expected (3, H, W) or (N, 3, H, W), got shape {tuple(tensor.shape)}")
    pixels = ((tensor + 1.0) * 127.5).clamp_(0, 255).round_().to(torch.uint8)
    pixels = pixels.movedim(-3, -1)  # channels last
    return np.ascontiguousarray(pixels.cpu().numpy())


# ------------------------------------------------------------------------- keyed crop/flip, device side

# Three odd multiples of 2**64 / golden ratio (SplitMix64's increment): one stream per drawn value.
_STREAMS = [np.uint64(k * 0x9E3779B97F4A7C15 % 2**64) for k in (1, 2, 3)]


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on a uint64 array (wrapping arithmetic): a bijection that scrambles every bit."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def keyed_crop_flip_params(
    keys: np.ndarray, seed: int, epoch: int, repeat: int, height: int, width: int, crop: int, flip: bool = True
) -> np.ndarray:
    """Per-example ``(top, left, flip)`` as an int64 (N, 3) array, each row a function of
    ``(seed, epoch, repeat, keys[i])`` alone (``keys``: one uint64 per example, e.g. a hash of its id).

    Unlike ``random_crop_flip_batch``'s sequential draws, nothing depends on which other examples share
    the batch or in which order batches are made, so parallel collation, a different batch grouping or a
    resumed run all give an example the same window. Offsets are uniform over every valid position
    (inclusive, as ``crop_flip_params``; the modulo bias is below 2**-50), the coin is fair, and the
    window does not depend on ``flip``.
    """
    if crop < 1 or crop > height or crop > width:
        raise ValueError(f"crop {crop} does not fit in {height}x{width}")
    keys = np.atleast_1d(np.asarray(keys, dtype=np.uint64))  # arrays: numpy wraps uint64 overflow silently
    base = np.random.SeedSequence([seed, epoch, repeat]).generate_state(1, np.uint64)
    h = _mix64(base ^ _mix64(keys))
    top = _mix64(h + _STREAMS[0]) % np.uint64(height - crop + 1)
    left = _mix64(h + _STREAMS[1]) % np.uint64(width - crop + 1)
    coin = _mix64(h + _STREAMS[2]) >> np.uint64(63)
    out = np.stack([top, left, coin if flip else np.zeros_like(coin)], axis=1)
    return out.astype(np.int64)


def crop_flip_tensor(batch: torch.Tensor, params: torch.Tensor | np.ndarray, crop: int,
                     vectorized: bool | None = None) -> torch.Tensor:
    """uint8 (N, H, W, 3) tensor -> (N, crop, crop, 3): example i cropped at ``params[i] = (top, left, flip)``
    and mirrored left-right when flip is 1, on the tensor's own device.

    ``vectorized`` (default: on any device but the CPU): one gather for the whole batch, a single kernel on
    an accelerator; on the CPU a per-example copy (cv2.flip) is much faster than torch's gather. Both give
    the same bytes; the gather is CPU-testable with ``vectorized=True``.
    """
    import torch

    if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected a uint8 (N, H, W, 3) tensor, got {batch.dtype} {tuple(batch.shape)}")
    n, height, width, _ = batch.shape
    params = torch.as_tensor(params, dtype=torch.int64)
    if params.shape != (n, 3):
        raise ValueError(f"expected ({n}, 3) crop params (top, left, flip), got {tuple(params.shape)}")
    if vectorized is None:
        vectorized = batch.device.type != "cpu"
    if not vectorized:
        rows = params.cpu().tolist()
        for top, left, _ in rows:  # before any copy: a bad window names itself
            if not (0 <= top <= height - crop and 0 <= left <= width - crop):
                raise ValueError(f"crop {crop} at ({top}, {left}) is outside {height}x{width}")
        with warnings.catch_warnings():  # read-only inputs (Ray's batches) are only read
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            source = batch.numpy()
        out = np.empty((n, crop, crop, 3), np.uint8)
        for i, (top, left, mirror) in enumerate(rows):
            window = source[i, top:top + crop, left:left + crop]
            if mirror:
                cv2.flip(window, 1, dst=out[i])
            else:
                out[i] = window
        return torch.from_numpy(out)
    # Bounds are not checked here: that would need the params on the host (a device sync); indexing outside
    # the image raises on the CPU and trips a device-side assert on CUDA.
    params = params.to(batch.device, non_blocking=True)
    steps = torch.arange(crop, device=batch.device)
    rows = params[:, 0:1] + steps
    cols = torch.where(params[:, 2:3] != 0, params[:, 1:2] + (crop - 1) - steps, params[:, 1:2] + steps)
    examples = torch.arange(n, device=batch.device)[:, None, None]
    return batch[examples, rows[:, :, None], cols[:, None, :]]


_LEVELS: dict = {}


def _float_levels(device: torch.device) -> torch.Tensor:
    """The 256 float32 values ``to_tensor`` maps the uint8 levels to, computed on the CPU, cached per device."""
    import torch

    key = str(device)
    if key not in _LEVELS:
        _LEVELS[key] = torch.arange(256, dtype=torch.float32).div_(127.5).sub_(1.0).to(device)
    return _LEVELS[key]


def to_float(batch: torch.Tensor, channels_last_memory: bool = False, lookup: bool | None = None) -> torch.Tensor:
    """uint8 (N, H, W, 3) tensor -> float32 (N, 3, H, W) in [-1, 1] on the tensor's device: bitwise
    ``to_tensor``'s values (``x / 127.5 - 1`` rounded as on the CPU), NHWC memory (torch.channels_last) with
    ``channels_last_memory``, else contiguous NCHW.

    ``lookup`` (default: on any device but the CPU): read the 256 levels, computed once on the CPU, from a
    table, because a CUDA division by a Python scalar multiplies by its reciprocal instead, which can round
    differently; without it, ``to_tensor``'s own arithmetic (the faster one on the CPU).
    """
    import torch

    if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected a uint8 (N, H, W, 3) tensor, got {batch.dtype} {tuple(batch.shape)}")
    memory_format = torch.channels_last if channels_last_memory else torch.contiguous_format
    if lookup is None:
        lookup = batch.device.type != "cpu"
    if not lookup:
        tensor = batch.permute(0, 3, 1, 2).to(dtype=torch.float32, memory_format=memory_format)
        return tensor.div_(127.5).sub_(1.0)
    levels = _float_levels(batch.device)
    nhwc = levels.index_select(0, batch.reshape(-1).int()).view(batch.shape)
    return nhwc.permute(0, 3, 1, 2).contiguous(memory_format=memory_format)  # NHWC is channels_last already
