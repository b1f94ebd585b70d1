"""Behaviour of ray_ganime.transforms: pair alignment, crop bounds, colour, edge smoothing, line-art
normalisation and the tensor conversion."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch

from ray_ganime import transforms as T

# ------------------------------------------------------------------------------------------- fixtures


def coordinate_batch(n: int, height: int, width: int) -> np.ndarray:
    """Pixel (y, x) of example i holds R = x, G = y, B = i, so any crop/flip can be read back."""
    y, x = np.mgrid[0:height, 0:width]
    batch = np.empty((n, height, width, 3), np.uint8)
    batch[..., 0] = x
    batch[..., 1] = y
    batch[..., 2] = np.arange(n)[:, None, None]
    return batch


def drawn_params(seed: int, n: int, height: int, width: int, crop: int, flip: bool = True):
    """Re-derive random_crop_flip_batch's params: one crop_flip_params call per example, in order."""
    rng = np.random.default_rng(seed)
    return [T.crop_flip_params(rng, height, width, crop, flip) for _ in range(n)]


def line_art(rng: np.random.Generator, size: int, stroke_low: int, stroke_high: int) -> np.ndarray:
    """White paper with random strokes whose gray values lie in [stroke_low, stroke_high]."""
    gray = np.full((size, size), 255, np.uint8)
    for _ in range(40):
        p1 = tuple(int(v) for v in rng.integers(0, size, 2))
        p2 = tuple(int(v) for v in rng.integers(0, size, 2))
        value = int(rng.integers(stroke_low, stroke_high + 1))
        cv2.line(gray, p1, p2, value, thickness=int(rng.integers(1, 4)))
    return np.repeat(gray[..., None], 3, axis=-1)


# --------------------------------------------------------------------------------- crop / flip / pair


H, W, CROP, N = 40, 50, 32, 8  # not square, so swapped axes show up


def test_pair_crop_stays_aligned_and_matches_drawn_params():
    coords = coordinate_batch(N, H, W)
    pair = 255 - coords  # a pixel-wise transform of the same picture, like sketch/colour
    out = T.random_crop_flip_batch(np.random.default_rng(7), {"sketch": coords, "color": pair}, CROP)

    assert out["sketch"].shape == out["color"].shape == (N, CROP, CROP, 3)
    assert out["sketch"].dtype == np.uint8
    np.testing.assert_array_equal(out["color"], 255 - out["sketch"])

    params = drawn_params(7, N, H, W, CROP)
    rows, cols = np.mgrid[0:CROP, 0:CROP]
    for i, (top, left, flip) in enumerate(params):
        crop = out["sketch"][i]
        # Read the geometry back from the encoded coordinates, independent of crop_flip's slicing.
        np.testing.assert_array_equal(crop[..., 1], top + rows)
        expected_x = left + (CROP - 1 - cols if flip else cols)
        np.testing.assert_array_equal(crop[..., 0], expected_x)
        np.testing.assert_array_equal(crop[..., 2], i)  # example i stays example i

    assert len(set(params)) > 1, "examples in one batch must get their own params"
    assert {flip for _, _, flip in drawn_params(7, 64, H, W, CROP)} == {True, False}


def test_random_crop_flip_batch_is_reproducible_per_seed():
    coords = coordinate_batch(N, H, W)
    first = T.random_crop_flip_batch(np.random.default_rng(3), {"a": coords}, CROP)["a"]
    again = T.random_crop_flip_batch(np.random.default_rng(3), {"a": coords}, CROP)["a"]
    other = T.random_crop_flip_batch(np.random.default_rng(4), {"a": coords}, CROP)["a"]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_no_flip_never_mirrors_and_keeps_the_same_windows():
    coords = coordinate_batch(N, H, W)
    out = T.random_crop_flip_batch(np.random.default_rng(5), {"a": coords}, CROP, flip=False)["a"]
    for i, (top, left, flip) in enumerate(drawn_params(5, N, H, W, CROP, flip=False)):
        assert flip is False
        np.testing.assert_array_equal(out[i], coords[i, top : top + CROP, left : left + CROP])
    # Same windows as with flipping on: the coin is drawn either way.
    with_flip = drawn_params(5, N, H, W, CROP, flip=True)
    assert [p[:2] for p in with_flip] == [p[:2] for p in drawn_params(5, N, H, W, CROP, flip=False)]


def test_random_crop_flip_batch_rejects_mismatched_columns():
    with pytest.raises(ValueError):
        columns = {"a": coordinate_batch(2, H, W), "b": coordinate_batch(2, H, W + 2)}
        T.random_crop_flip_batch(np.random.default_rng(0), columns, CROP)


@pytest.mark.parametrize(
    "height, width, crop", [(40, 50, 32), (32, 32, 32), (32, 60, 32), (9, 9, 1), (286, 286, 256)]
)
def test_crop_params_always_in_bounds_and_cover_the_range(height, width, crop):
    rng = np.random.default_rng(0)
    tops, lefts = set(), set()
    for _ in range(2000):
        top, left, _ = T.crop_flip_params(rng, height, width, crop)
        assert 0 <= top and top + crop <= height
        assert 0 <= left and left + crop <= width
        tops.add(top)
        lefts.add(left)
    # Both extremes are reachable (inclusive upper bound, like pix2pix's randint).
    assert min(tops) == 0 and max(tops) == height - crop
    assert min(lefts) == 0 and max(lefts) == width - crop


def test_full_size_crop_is_a_no_op_or_a_pure_flip():
    coords = coordinate_batch(1, 32, 32)
    same = T.crop_flip(coords, 0, 0, 32, False)
    np.testing.assert_array_equal(same, coords)
    np.testing.assert_array_equal(T.crop_flip(coords, 0, 0, 32, True), coords[:, :, ::-1])
    same[...] = 0  # a copy, never a view of the input
    assert coords.any()


def test_crop_too_big_or_outside_is_refused():
    with pytest.raises(ValueError):
        T.crop_flip_params(np.random.default_rng(0), 31, 40, 32)
    with pytest.raises(ValueError):
        T.crop_flip(coordinate_batch(1, 32, 32)[0], 1, 0, 32, False)


def test_crop_flip_same_params_on_image_and_batch():
    coords = coordinate_batch(3, H, W)
    batch = T.crop_flip(coords, 4, 9, 20, True)
    assert batch.flags.c_contiguous and batch.shape == (3, 20, 20, 3)
    np.testing.assert_array_equal(batch, coords[:, 4:24, 9:29][:, :, ::-1])
    for i in range(3):
        np.testing.assert_array_equal(batch[i], T.crop_flip(coords[i], 4, 9, 20, True))
    torch.from_numpy(batch)  # contiguous, no negative strides


def test_center_crop_offsets():
    coords = coordinate_batch(2, 41, 50)
    out = T.center_crop(coords, 32)
    assert out.shape == (2, 32, 32, 3)
    assert out[0, 0, 0, 1] == (41 - 32) // 2 and out[0, 0, 0, 0] == (50 - 32) // 2
    np.testing.assert_array_equal(T.center_crop(coords[1], (20, 10)), coords[1, 10:30, 20:30])


# ---------------------------------------------------------------------------------------------- resize


def test_resize_exact_size_and_axis_order():
    image = coordinate_batch(1, 40, 50)[0]
    out = T.resize(image, (30, 70), "bilinear")
    assert out.shape == (30, 70, 3) and out.dtype == np.uint8
    assert T.resize(image, 286).shape == (286, 286, 3)
    bicubic = cv2.resize(image, (64, 64), interpolation=cv2.INTER_CUBIC)
    np.testing.assert_array_equal(T.resize(image, 64), bicubic)
    area = cv2.resize(image, (20, 20), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(T.resize(image, 20, "area"), area)
    # Coordinates still increase along the right axes after resizing.
    assert (np.diff(out[..., 0].astype(int), axis=1) >= 0).all()
    assert (np.diff(out[..., 1].astype(int), axis=0) >= 0).all()


def test_resize_batch_and_bad_interpolation():
    batch = coordinate_batch(3, 40, 50)
    out = T.resize(batch, 16, "bilinear")
    assert out.shape == (3, 16, 16, 3)
    np.testing.assert_array_equal(out[2], T.resize(batch[2], 16, "bilinear"))
    with pytest.raises(ValueError):
        T.resize(batch[0], 16, "lanczos")


# ------------------------------------------------------------------------------------------- grayscale


def test_grayscale_matches_cv2_on_every_channel():
    rng = np.random.default_rng(1)
    batch = rng.integers(0, 256, (4, 17, 23, 3), dtype=np.uint8)
    out = T.grayscale(batch)
    assert out.shape == batch.shape and out.dtype == np.uint8
    for i in range(4):
        expected = cv2.cvtColor(batch[i], cv2.COLOR_RGB2GRAY)
        for c in range(3):
            np.testing.assert_array_equal(out[i, ..., c], expected)
        np.testing.assert_array_equal(T.grayscale(batch[i]), out[i])
    # RGB order, not BGR: pure red is 0.299 * 255.
    red = np.zeros((1, 1, 3), np.uint8)
    red[..., 0] = 255
    assert T.grayscale(red)[0, 0, 0] == 76


# -------------------------------------------------------------------------------------- edge smoothing


def reference_edge_smooth(rgb: np.ndarray, kernel_size: int = 5) -> np.ndarray:
    """AnimeGAN's edge_smooth.py loop, on RGB instead of BGR (same per-channel arithmetic)."""
    pad = kernel_size // 2
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    padded = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    edges = cv2.Canny(gray, 100, 200)
    dilation = cv2.dilate(edges, np.ones((kernel_size, kernel_size), np.uint8))
    gauss = cv2.getGaussianKernel(kernel_size, 0)
    gauss = gauss * gauss.transpose(1, 0)
    out = rgb.copy()
    for y, x in zip(*np.where(dilation != 0)):
        for c in range(3):
            out[y, x, c] = np.sum(padded[y : y + kernel_size, x : x + kernel_size, c] * gauss)
    return out


def faint_noise(shape, seed: int = 0) -> np.ndarray:
    """+-3 levels: Canny's gradient (|gx| + |gy| <= 48) stays under 100, but a blur would change it."""
    return np.random.default_rng(seed).integers(-3, 4, shape)


def step_image(size: int = 64) -> np.ndarray:
    """Faintly noisy light background with a dark box touching the left border (reflect padding)."""
    image = np.full((size, size, 3), 230, np.int64)
    image[20:44, 0:30] = (20, 40, 60)
    return (image + faint_noise(image.shape)).astype(np.uint8)


def test_edge_smooth_blurs_the_edge_band_only():
    image = step_image()
    out = T.edge_smooth(image)
    assert out.shape == image.shape and out.dtype == np.uint8

    # Far from the box outline (> 6 px), nothing changes.
    box = np.zeros(image.shape[:2], bool)
    box[20:44, 0:30] = True
    inner = cv2.erode(box.astype(np.uint8), np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    outline = box ^ inner.astype(bool)
    near = cv2.dilate(outline.astype(np.uint8), np.ones((13, 13), np.uint8)).astype(bool)
    np.testing.assert_array_equal(out[~near], image[~near])

    # On the step, values become intermediate (blurred), in every channel.
    edge_row = out[32, 27:32]
    assert ((edge_row > (20 + 3, 40 + 3, 60 + 3)) & (edge_row < 230 - 3)).any(axis=0).all()
    assert (out != image).any(axis=-1).sum() > 50


def test_edge_smooth_matches_animegan_reference_within_rounding():
    rng = np.random.default_rng(2)
    image = step_image()
    image[50:60, 44:64] = rng.integers(0, 256, (10, 20, 3), dtype=np.uint8)  # texture at the border too
    ours = T.edge_smooth(image).astype(int)
    ref = reference_edge_smooth(image).astype(int)
    # The reference truncates the float sum into uint8; cv2.GaussianBlur rounds.
    assert np.abs(ours - ref).max() <= 1


@pytest.mark.parametrize("kind", ["flat", "gentle_ramp", "faint_noise"])
def test_edge_smooth_identity_without_edges(kind):
    if kind == "flat":
        image = np.full((48, 64, 3), (120, 30, 200), np.uint8)
    elif kind == "gentle_ramp":  # 1 gray level per pixel: Sobel response 8, far below Canny's 100
        ramp = np.arange(64, dtype=np.uint8)[None, :, None] * np.ones((48, 1, 3), np.uint8)
        image = np.ascontiguousarray(ramp + 60)
    else:
        image = (np.full((48, 64, 3), 128) + faint_noise((48, 64, 3), seed=1)).astype(np.uint8)
    np.testing.assert_array_equal(T.edge_smooth(image), image)


def test_edge_smooth_batch_equals_per_image():
    batch = np.stack([step_image(), step_image()[:, ::-1], np.full((64, 64, 3), 9, np.uint8)])
    out = T.edge_smooth_batch(batch)
    for i in range(3):
        np.testing.assert_array_equal(out[i], T.edge_smooth(batch[i]))


# ----------------------------------------------------------------------------- line-art normalisation


def reference_normalize_lineart(rgb, target=200.0, max_iter=50, white=254):
    """The iterative definition, pixel by pixel (the module runs it on a 256-level LUT instead)."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    mask = gray < white  # decided once, from the input
    im = gray.astype(np.float32)
    iterations = 0
    if mask.any():
        mean = lambda: float(np.mean(im[mask], dtype=np.float64))  # noqa: E731
        if mean() < target:
            while iterations < max_iter and not mean() > target:
                x = abs(target - mean()) / 255 + 0.005
                im[mask] = np.clip(im[mask] * np.float32(1 - x) + np.float32(255 * x), 0, 255)
                iterations += 1
        else:
            while iterations < max_iter and not mean() <= target:
                im[mask] = np.clip(im[mask] * np.float32(0.995) - np.float32(1.275), 0, 255)
                iterations += 1
    out = np.clip(np.rint(im), 0, 255).astype(np.uint8)
    return np.repeat(out[..., None], 3, axis=-1), iterations


def nonwhite_mean(out, original, white=254):
    mask = cv2.cvtColor(original, cv2.COLOR_RGB2GRAY) < white
    return float(out[..., 0][mask].mean())


# Measured landing error of the uint8 result (see normalize_lineart's docstring for the bounds):
# brightening lands in (target, target + 0.3] before rounding, darkening in [target - 2.3, target].
BRIGHTEN_TOL = (-0.5, 0.3 + 0.5)
DARKEN_TOL = (-2.3 - 0.5, 0.5)


@pytest.mark.parametrize("seed", range(5))
def test_normalize_lineart_dark_and_faint_reach_target(seed):
    rng = np.random.default_rng(seed)
    for low, high, (tol_low, tol_high) in [(0, 60, BRIGHTEN_TOL), (215, 250, DARKEN_TOL)]:
        image = line_art(rng, 128, low, high)
        out = T.normalize_lineart(image)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 0] == out[..., 2]).all()
        error = nonwhite_mean(out, image) - 200.0
        assert tol_low <= error <= tol_high, (low, high, error)
        white = image[..., 0] >= 254
        np.testing.assert_array_equal(out[white], image[white])


@pytest.mark.parametrize("seed", range(6))
def test_normalize_lineart_equals_the_iterative_reference(seed):
    rng = np.random.default_rng(100 + seed)
    low, high = [(0, 60), (215, 250), (0, 253), (100, 140), (0, 0), (250, 253)][seed]
    image = line_art(rng, 96, low, high)
    color_noise = rng.integers(-3, 4, image.shape)  # not exactly gray: exercises the RGB -> gray step
    image = np.clip(image.astype(int) + color_noise, 0, 255).astype(np.uint8)
    for target, max_iter in [(200.0, 50), (150.0, 50), (230.0, 3), (5.0, 50)]:
        expected, iterations = reference_normalize_lineart(image, target, max_iter)
        np.testing.assert_array_equal(T.normalize_lineart(image, target, max_iter), expected)
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        _, lut_iterations = T.lineart_lut(np.bincount(gray.ravel(), minlength=256), target, max_iter)
        assert lut_iterations == iterations <= max_iter


def test_normalize_lineart_iterations_are_bounded():
    image = line_art(np.random.default_rng(9), 64, 240, 250)
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    hist = np.bincount(gray.ravel(), minlength=256)
    # Darkening to 5 needs far more than 50 steps of 0.5 %: it stops at max_iter.
    lut, iterations = T.lineart_lut(hist, target=5.0, max_iter=50)
    assert iterations == 50
    # Closed form of 50 darkening steps on a level v that never clips: (v + 255) * 0.995**50 - 255.
    np.testing.assert_allclose(lut[245], (245 + 255) * 0.995**50 - 255, atol=1e-3)
    assert T.lineart_lut(hist, target=5.0, max_iter=0)[1] == 0


@pytest.mark.parametrize("fill", ["all_255", "mixed_254_255"])
def test_normalize_lineart_all_white_unchanged(fill):
    image = np.full((32, 32, 3), 255, np.uint8)
    if fill == "mixed_254_255":
        image[::2] = 254
    np.testing.assert_array_equal(T.normalize_lineart(image), image)
    assert T.lineart_lut(np.bincount(image[..., 0].ravel(), minlength=256))[1] == 0


def test_normalize_lineart_gray_input_and_batch():
    rng = np.random.default_rng(4)
    batch = np.stack([line_art(rng, 48, 0, 60), line_art(rng, 48, 215, 250)])
    out = T.normalize_lineart_batch(batch)
    for i in range(2):
        np.testing.assert_array_equal(out[i], T.normalize_lineart(batch[i]))
        np.testing.assert_array_equal(out[i], T.normalize_lineart(batch[i][..., 0]))


# ----------------------------------------------------------------------------------------------- views


def test_each_view_is_its_transform_and_keeps_the_shape():
    rng = np.random.default_rng(5)
    image = line_art(rng, 40, 0, 90)
    image[5:15, 5:30] = (200, 30, 60)  # a coloured block: gray and smooth differ from the input
    expected = {"gray": T.grayscale(image), "smooth": T.edge_smooth(image),
                "smooth_gray": T.grayscale(T.edge_smooth(image)), "lineart": T.normalize_lineart(image, target=185.0)}
    assert set(expected) == set(T.VIEWS)
    for name, want in expected.items():
        got = T.view(image, name, lineart_target=185.0)
        assert got.shape == image.shape and got.dtype == np.uint8
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(T.view(image, "lineart", 185.0), T.view(image, "lineart", 120.0))
    with pytest.raises(ValueError, match="unknown view 'sepia'"):
        T.view(image, "sepia")
    with pytest.raises(ValueError, match=r"one uint8 \(H, W, 3\) image"):
        T.view(image[None], "gray")


# ----------------------------------------------------------------------------------------------- torch


def test_to_tensor_range_dtype_shape_and_exact_round_trip():
    every_value = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
    rng = np.random.default_rng(0)
    batch = np.concatenate([every_value, rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)])

    tensor = T.to_tensor(batch)
    assert tensor.dtype == torch.float32 and tuple(tensor.shape) == (4, 3, 16, 16)
    assert tensor.is_contiguous()
    assert tensor.min().item() == -1.0 and tensor.max().item() == 1.0
    torch.testing.assert_close(tensor[0, 1], torch.from_numpy(every_value[0, ..., 1] / 127.5 - 1).float())
    np.testing.assert_array_equal(T.to_uint8(tensor), batch)

    single = T.to_tensor(batch[1])
    assert tuple(single.shape) == (3, 16, 16)
    torch.testing.assert_close(single, tensor[1], rtol=0, atol=0)
    out = T.to_uint8(single)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, batch[1])


def test_to_tensor_channels_last_and_read_only_input():
    batch = np.random.default_rng(1).integers(0, 256, (2, 8, 12, 3), dtype=np.uint8)
    batch.flags.writeable = False  # Ray Data hands out read-only arrays
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tensor = T.to_tensor(batch, channels_last_memory=True)
    assert tensor.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(tensor, T.to_tensor(batch), rtol=0, atol=0)


def test_to_uint8_saturates_and_rounds():
    tensor = torch.tensor([-3.0, -1.0, -1.0 + 0.6 / 127.5, 0.0, 1.0, 1.2]).view(1, 3, 1, 2)
    out = T.to_uint8(tensor)
    assert out.shape == (1, 1, 2, 3)
    np.testing.assert_array_equal(out[0].transpose(2, 0, 1).ravel(), [0, 0, 1, 128, 255, 255])


# ------------------------------------------------------------------ keyed crop/flip and the device side


def test_keyed_params_depend_on_key_epoch_and_repeat_alone():
    keys = np.arange(64, dtype=np.uint64) * 7919
    first = T.keyed_crop_flip_params(keys, 3, 1, 0, H, W, CROP)
    assert first.shape == (64, 3) and first.dtype == np.int64
    np.testing.assert_array_equal(first, T.keyed_crop_flip_params(keys, 3, 1, 0, H, W, CROP))
    # Independent of batch grouping and order: any split or permutation gives each key the same row.
    order = np.random.default_rng(0).permutation(64)
    np.testing.assert_array_equal(T.keyed_crop_flip_params(keys[order], 3, 1, 0, H, W, CROP), first[order])
    halves = [T.keyed_crop_flip_params(keys[s], 3, 1, 0, H, W, CROP) for s in (slice(0, 5), slice(5, None))]
    np.testing.assert_array_equal(np.concatenate(halves), first)
    for other in ((3, 2, 0), (3, 1, 1), (4, 1, 0)):  # another epoch, repeat, seed: other windows
        changed = (T.keyed_crop_flip_params(keys, *other, H, W, CROP) != first).any(axis=1)
        assert changed.mean() > 0.8, other
    no_flip = T.keyed_crop_flip_params(keys, 3, 1, 0, H, W, CROP, flip=False)
    np.testing.assert_array_equal(no_flip[:, :2], first[:, :2])  # the same windows, never mirrored
    assert (no_flip[:, 2] == 0).all()
    with pytest.raises(ValueError, match="does not fit"):
        T.keyed_crop_flip_params(keys, 3, 1, 0, H, W, W + 1)


def test_keyed_params_in_bounds_cover_the_range_and_flip_half():
    params = T.keyed_crop_flip_params(np.arange(4000, dtype=np.uint64), 0, 0, 0, 34, 35, 32)
    assert set(params[:, 0]) == {0, 1, 2} and set(params[:, 1]) == {0, 1, 2, 3}
    assert 0.45 < params[:, 2].mean() < 0.55
    full = T.keyed_crop_flip_params(np.arange(10, dtype=np.uint64), 0, 0, 0, 32, 32, 32)
    assert (full[:, :2] == 0).all()


@pytest.mark.parametrize("vectorized", [False, True])
def test_crop_flip_tensor_matches_crop_flip_per_example(vectorized):
    coords = coordinate_batch(N, H, W)
    params = T.keyed_crop_flip_params(np.arange(N, dtype=np.uint64), 1, 0, 0, H, W, CROP)
    assert len(set(params[:, 2])) == 2  # both branches run
    out = T.crop_flip_tensor(torch.from_numpy(coords), torch.from_numpy(params), CROP, vectorized=vectorized)
    assert out.dtype == torch.uint8 and out.shape == (N, CROP, CROP, 3)
    for i, (top, left, flip) in enumerate(params):
        np.testing.assert_array_equal(out[i].numpy(), T.crop_flip(coords[i], int(top), int(left), CROP, bool(flip)))


def test_crop_flip_tensor_rejects_bad_input():
    batch = torch.from_numpy(coordinate_batch(2, H, W))
    with pytest.raises(ValueError, match="outside"):
        T.crop_flip_tensor(batch, torch.tensor([[0, 0, 0], [H - CROP + 1, 0, 1]]), CROP)
    with pytest.raises(ValueError, match="crop params"):
        T.crop_flip_tensor(batch, torch.zeros((3, 3), dtype=torch.int64), CROP)
    with pytest.raises(ValueError, match="uint8"):
        T.crop_flip_tensor(batch.float(), torch.zeros((2, 3), dtype=torch.int64), CROP)


@pytest.mark.parametrize("lookup", [False, True])
def test_to_float_is_bitwise_to_tensor(lookup):
    levels = np.repeat(np.arange(256, dtype=np.uint8), 3).reshape(2, 8, 16, 3)  # every level, every channel
    expected = T.to_tensor(levels)
    for channels_last in (False, True):
        got = T.to_float(torch.from_numpy(levels), channels_last_memory=channels_last, lookup=lookup)
        assert got.dtype == torch.float32 and got.shape == (2, 3, 8, 16)
        assert torch.equal(got.view(torch.int32), expected.view(torch.int32))  # the bits, not just the values
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        assert got.is_contiguous(memory_format=fmt)
    with pytest.raises(ValueError, match="uint8"):
        T.to_float(torch.zeros((1, 3, 4, 4), dtype=torch.uint8))
