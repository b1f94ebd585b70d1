"""Built-in synthetic anime data: deterministic, well-formed, learnable and fast enough to try the tool."""

from __future__ import annotations

import colorsys

import cv2
import numpy as np
import pytest

from ray_ganime import synth
from ray_ganime.images import decode_rgb

SIZE = 64


def rng(i: int, seed: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, i])


def hue(color) -> float:
    return colorsys.rgb_to_hsv(*(c / 255.0 for c in color))[0] * 360.0


def hue_distance(a: float, b: float) -> float:
    d = abs(a - b) % 360.0
    return min(d, 360.0 - d)


def dark_fraction(image: np.ndarray, below: int = 70) -> float:
    """Share of ink-dark pixels (every channel below ``below``)."""
    return float((image.max(axis=2) < below).mean())


# --------------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", synth.KINDS)
def test_same_arguments_give_byte_identical_rows_and_prefixes_agree(kind):
    first = list(synth.examples(kind, 6, 48, seed=7))
    again = list(synth.examples(kind, 6, 48, seed=7))
    assert first == again
    assert list(synth.examples(kind, 3, 48, seed=7)) == first[:3]  # an example depends on (seed, index) only
    other_seed = list(synth.examples(kind, 3, 48, seed=8))
    image_key = "color" if kind == "paired" else "image"
    assert all(a[image_key] != b[image_key] for a, b in zip(first, other_seed))
    assert len({row[image_key] for row in first}) == len(first)  # no two examples alike


def test_worker_count_does_not_change_the_bytes():
    count = 2 * synth.CHUNK + 5  # several chunks, the last one short
    serial = list(synth.examples("unpaired", count, 32, seed=3))
    parallel = list(synth.examples("unpaired", count, 32, seed=3, workers=2))
    assert parallel == serial
    assert [row["id"] for row in parallel] == [f"synth-{i:06d}" for i in range(count)]


def test_renderers_are_pure_functions_of_the_generator_state():
    for render in (synth.render_cel, synth.render_soft, synth.render_face):
        assert np.array_equal(render(rng(5), SIZE), render(rng(5), SIZE))
    a, b = synth.render_paired(rng(5), SIZE), synth.render_paired(rng(5), SIZE)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


# --------------------------------------------------------------------------------------------------
# Shapes and rows
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [16, 33, 96])
def test_every_renderer_returns_uint8_rgb_of_the_requested_size(size):
    sketch, color = synth.render_paired(rng(1), size)
    for image in (sketch, color, synth.render_cel(rng(2), size), synth.render_soft(rng(3), size),
                  synth.render_face(rng(4), size)):
        assert image.dtype == np.uint8 and image.shape == (size, size, 3)


def test_rows_follow_the_shard_schema_and_decode():
    paired = next(synth.examples("paired", 1, 40, seed=0))
    assert set(paired) == {"id", "sketch", "color", "width", "height"}
    assert paired["id"] == "synth-000000" and paired["width"] == paired["height"] == 40
    assert decode_rgb(paired["sketch"]).shape == decode_rgb(paired["color"]).shape == (40, 40, 3)

    unpaired = next(synth.examples("unpaired", 1, 40, seed=0))
    assert set(unpaired) == {"id", "domain", "image", "width", "height"}
    assert decode_rgb(unpaired["image"]).shape == (40, 40, 3)

    face = next(synth.examples("faces", 1, 40, seed=0))
    assert set(face) == {"id", "image", "label", "width", "height"} and face["label"] is None
    assert decode_rgb(face["image"]).shape == (40, 40, 3)


def test_the_png_holds_exactly_the_rendered_pixels():
    row = next(synth.examples("faces", 1, SIZE, seed=11))
    assert np.array_equal(decode_rgb(row["image"]), synth.render_face(rng(0, seed=11), SIZE))


@pytest.mark.parametrize("kwargs", [
    dict(kind="photos"), dict(count=0), dict(count=-3), dict(size=15), dict(size=0),
    dict(seed=-1), dict(workers=0),
])
def test_bad_arguments_raise_value_error_at_call_time(kwargs):
    args = dict(kind="paired", count=2, size=32, seed=0) | kwargs
    with pytest.raises(ValueError):
        synth.examples(**args)  # not even iterated: the caller learns at once


def test_renderers_refuse_tiny_sizes():
    for render in (synth.render_paired, synth.render_cel, synth.render_soft, synth.render_face):
        with pytest.raises(ValueError):
            render(rng(0), 8)


# --------------------------------------------------------------------------------------------------
# Paired: the sketch is the line art of exactly the colour image
# --------------------------------------------------------------------------------------------------
def test_sketch_is_dark_lines_on_white_paper():
    for i in range(10):
        sketch, _ = synth.render_paired(rng(i), 128)
        assert np.array_equal(sketch[..., 0], sketch[..., 1]) and np.array_equal(sketch[..., 0], sketch[..., 2])
        assert (sketch[..., 0] >= 230).mean() > 0.7     # mostly paper
        assert (sketch[..., 0] <= 60).mean() > 0.01     # with real ink lines
        assert sketch.min() <= synth.SKETCH_INK[0]


def test_sketch_lines_sit_exactly_on_the_colour_outlines():
    coverage = []
    for i in range(12):
        sketch, color = synth.render_paired(rng(i), 128)
        # where the sketch has solid ink, the colour image has solid ink of the same stroke
        solid = sketch[..., 0] == synth.SKETCH_INK[0]
        assert solid.sum() > 100
        assert np.all(color[solid] == synth.INK)
        # and every colour boundary (Canny edge) lies on or next to a sketch line
        edges = cv2.Canny(cv2.cvtColor(color, cv2.COLOR_RGB2GRAY), 50, 150) > 0
        near_line = cv2.dilate((sketch[..., 0] < 230).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        coverage.append(near_line[edges].mean())
    assert min(coverage) > 0.9, coverage


# --------------------------------------------------------------------------------------------------
# Learnable: colours are a function of shapes that the line art shows
# --------------------------------------------------------------------------------------------------
FAMILIES = [("hair", "hair", synth.HAIR), ("eyes", "iris", synth.EYES), ("collar", "clothes", synth.CLOTHES),
            ("background", "background", synth.BACKGROUNDS)]


@pytest.mark.parametrize("attribute, color_key, table", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_colour_family_is_a_function_of_the_drawn_shape(attribute, color_key, table):
    hues: dict[str, list[float]] = {}
    for i in range(400):
        ch = synth.sample_character(rng(i))
        hues.setdefault(getattr(ch, attribute), []).append(hue(ch.colors[color_key]))
    assert set(hues) == set(table)  # every style occurs
    centre = {style: hue(synth._hsv(*(table[style][0] if attribute == "collar" else table[style])))
              for style in hues}
    within = max(hue_distance(h, centre[s]) for s, hs in hues.items() for h in hs)
    styles = sorted(hues)
    between = min(hue_distance(centre[a], centre[b]) for a in styles for b in styles if a < b)
    if attribute == "collar":  # the white sailor blouse has no meaningful hue; it differs in saturation
        between = min(hue_distance(centre[a], centre[b]) for a in styles for b in styles
                      if a < b and "sailor" not in (a, b))
        within = max(hue_distance(h, centre[s]) for s, hs in hues.items() if s != "sailor" for h in hs)
    assert within * 3 < between, (attribute, within, between)


def head_point_to_pixel(ch: synth.Character, x: float, y: float, size: int) -> tuple[int, int]:
    """(row, col) of a point given in head units (cranium = unit circle, y down)."""
    a = np.radians(ch.angle)
    x = -x if ch.flip else x
    px = ch.center[0] * size + (np.cos(a) * x - np.sin(a) * y) * ch.radius * size
    py = ch.center[1] * size + (np.sin(a) * x + np.cos(a) * y) * ch.radius * size
    return int(py), int(px)


def test_hair_colour_is_grouped_by_hair_style_in_the_rendered_pictures():
    """Read the hair colour off the pictures (the crown, where every style has hair), group it by style:
    the spread within a style is far below the gap between styles, so a sketch's hair shape tells the colour."""
    by_style: dict[str, list[float]] = {}
    for i in range(60):
        ch = synth.sample_character(rng(i))
        _, color = synth.render_paired(rng(i), 128)
        r, c = head_point_to_pixel(ch, 0.0, -0.98, 128)
        patch = color[r - 1:r + 2, c - 1:c + 2].reshape(-1, 3)
        colors, counts = np.unique(patch, axis=0, return_counts=True)
        by_style.setdefault(ch.hair, []).append(hue(colors[counts.argmax()]))
    assert len(by_style) == len(synth.HAIR)
    centre = {s: hue(synth._hsv(*synth.HAIR[s])) for s in by_style}
    spread = max(hue_distance(h, centre[s]) for s, hs in by_style.items() for h in hs)
    gap = min(hue_distance(centre[a], centre[b]) for a in centre for b in centre if a < b)
    assert spread * 3 < gap, (spread, gap)
    # and that crown colour is the flat hair fill, a large region of the picture
    ch = synth.sample_character(rng(0))
    assert np.all(synth.render_cel(rng(0), 128) == ch.colors["hair"], axis=2).sum() > 300


def test_composition_varies():
    chars = [synth.sample_character(rng(i)) for i in range(60)]
    xs, ys = [c.center[0] for c in chars], [c.center[1] for c in chars]
    assert np.ptp(xs) > 0.2 and np.ptp(ys) > 0.08
    assert np.ptp([c.radius for c in chars]) > 0.05 and np.ptp([c.angle for c in chars]) > 20
    # and in pixels: where the skin is differs from picture to picture
    centroids = []
    for i, ch in enumerate(chars[:20]):
        skin = np.all(synth.render_cel(rng(i), SIZE) == ch.colors["skin"], axis=2)
        centroids.append(np.argwhere(skin).mean(axis=0))
    assert np.std(np.array(centroids), axis=0).min() > SIZE * 0.03


# --------------------------------------------------------------------------------------------------
# Unpaired and faces
# --------------------------------------------------------------------------------------------------
def test_unpaired_alternates_domains_and_only_b_has_ink_outlines():
    rows = list(synth.examples("unpaired", 20, 96, seed=4))
    assert [r["domain"] for r in rows] == ["A", "B"] * 10
    a = [dark_fraction(decode_rgb(r["image"])) for r in rows if r["domain"] == "A"]
    b = [dark_fraction(decode_rgb(r["image"])) for r in rows if r["domain"] == "B"]
    assert max(a) < 0.001, a   # soft renders: no ink at all
    assert min(b) > 0.015, b   # cels: dark outlines everywhere


def test_soft_renders_are_shaded_and_noisy_not_flat():
    for i in range(5):
        soft, cel = synth.render_soft(rng(i), 96), synth.render_cel(rng(i), 96)
        distinct = lambda im: len(np.unique(im.reshape(-1, 3), axis=0))  # noqa: E731
        assert distinct(soft) > 10 * distinct(cel)
        # smooth gradients and soft edges: neighbouring pixels differ a little almost everywhere (noise,
        # shading) but a lot far more rarely than across the cel's inked outlines
        step = lambda im: np.abs(np.diff(im.astype(int), axis=1)).max(axis=2)  # noqa: E731
        assert (step(soft) > 0).mean() > 0.5
        assert (step(soft) > 60).mean() * 4 < (step(cel) > 60).mean()


def test_faces_fill_the_frame():
    def head_share(image, ch):
        return np.mean(np.all(image == ch.colors["skin"], axis=2) | np.all(image == ch.colors["hair"], axis=2))

    faces = [head_share(synth.render_face(rng(i), SIZE), synth.sample_character(rng(i), "face"))
             for i in range(20)]
    scenes = [head_share(synth.render_cel(rng(i), SIZE), synth.sample_character(rng(i))) for i in range(20)]
    assert min(faces) > 0.15 and np.mean(faces) > 1.8 * np.mean(scenes)
    assert all(dark_fraction(synth.render_face(rng(i), SIZE)) > 0.015 for i in range(5))  # inked, like B
