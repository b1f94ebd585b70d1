"""Built-in synthetic anime data: procedurally drawn characters, their line art, soft renders and face crops.

Real data sets cannot be downloaded everywhere, and people want to try the tool before they have data,
so this module draws simple anime-like characters with OpenCV: flat cel colours with dark outlines,
big eyes, several hair styles, collars, background patterns and an optional accessory.

How a picture is made:

1. ``sample_character`` picks the discrete choices (hair style, eye shape, collar, background pattern,
   mouth, accessory), their colours and the pose (position, scale, rotation, mirror).
2. ``_scene`` turns the character into a list of ``Shape`` (polygons and lines) in *head units*: the
   cranium is the unit circle at (0, 0), x to the right, y down, the chin at y = 1.3.
3. A painter draws the shapes back to front onto a 2x canvas, which is then area-averaged down to the
   requested size (cheap anti-aliasing): the cel painter fills each shape and strokes its outline (for
   the sketch it fills white instead, so a shape hides the lines beneath it exactly as it hides their
   colours: the line art is the outlines of exactly the visible colour regions); the soft painter fills
   shaded regions, blurs them, adds noise and draws no outlines at all.

Learnable on purpose: every colour family is keyed by a shape that the line art shows (hair style k
-> hue band k, eye shape -> iris colour, collar -> clothes colour, background pattern -> background
colour, accessory -> its colour), with only a small jitter, so a sketch->colour model can infer colours.

Deterministic: an example depends only on ``np.random.default_rng([seed, index])``, so any prefix, chunk
or worker count gives byte-identical PNGs.
"""

from __future__ import annotations

import colorsys
import multiprocessing
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from itertools import islice
from dataclasses import dataclass
from typing import Iterator

import cv2
import numpy as np

from ray_ganime.images import encode_png

KINDS = ("paired", "unpaired", "faces")

RGB = tuple[int, int, int]

# ---------------------------------------------------------------------------------------------------
# Palette: (hue in degrees, saturation, value). Each family is keyed by a shape choice that the line
# art shows, so colours are inferable from sketches; the jitter below stays well inside each band.
# ---------------------------------------------------------------------------------------------------
HAIR = {  # hair style -> hair colour family; hues at least ~25 degrees apart
    "bob": (338, 0.42, 0.95),        # pink
    "spiky": (46, 0.60, 0.97),       # blonde
    "long": (216, 0.55, 0.82),       # blue
    "twintails": (176, 0.58, 0.78),  # teal
    "short": (22, 0.58, 0.55),       # brown
    "ponytail": (272, 0.42, 0.75),   # purple
}
EYES = {  # eye shape -> iris colour family
    "round": (205, 0.70, 0.88),  # sky blue
    "tall": (130, 0.60, 0.70),   # green
    "sharp": (352, 0.72, 0.78),  # red
    "droopy": (36, 0.78, 0.82),  # amber
}
CLOTHES = {  # collar type -> (clothes colour, trim / collar / tie colour)
    "crew": ((42, 0.55, 0.98), (42, 0.75, 0.80)),      # yellow tee, darker trim
    "vneck": ((355, 0.60, 0.85), (355, 0.70, 0.62)),   # red top
    "sailor": ((220, 0.04, 0.98), (225, 0.62, 0.45)),  # white blouse, navy collar
    "shirt": ((200, 0.28, 0.96), (0, 0.72, 0.70)),     # light-blue shirt, crimson tie
    "hoodie": ((140, 0.40, 0.68), (140, 0.45, 0.52)),  # green hoodie, darker hood
}
BACKGROUNDS = {  # background pattern -> background colour family (pale, so the figure stands out)
    "plain": (200, 0.16, 0.99),    # sky
    "stripes": (52, 0.24, 0.99),   # lemon
    "dots": (345, 0.16, 0.99),     # pink
    "grid": (150, 0.16, 0.96),     # mint
    "rays": (265, 0.16, 0.97),     # lavender
}
ACCESSORIES = {"none": None, "bow": (352, 0.70, 0.92), "clip": (50, 0.80, 0.98), "flower": (320, 0.22, 1.0)}
SKIN_TONES = ((24, 0.16, 1.0), (22, 0.24, 0.98), (26, 0.32, 0.92))
MOUTHS = ("smile", "open", "cat", "flat")
JITTER = (4.0, 0.04, 0.04)  # max +- hue (degrees), saturation, value

MOUTH_RED = (230, 110, 120)
EYE_WHITE = (252, 252, 255)
PUPIL = (50, 36, 48)
INK = (42, 30, 38)          # outlines in the cel image: dark, slightly warm like inked anime lines
SKETCH_INK = (28, 28, 28)   # outlines in the line art
WHITE = (255, 255, 255)
RIBBON = (352, 0.70, 0.85)  # hair ties (twin tails, ponytail) and the sailor scarf: always red
FLOWER_CENTER = (48, 0.80, 1.0)

# The soft (domain A) render uses a slightly different palette: hues turned a little, colours washed
# out towards pastel, and nothing darker than SOFT_MIN_VALUE -- soft renders have no ink.
SOFT_HUE_SHIFT = 10.0
SOFT_SATURATION = 0.72
SOFT_MIN_VALUE = 0.36


def _hsv(hue: float, sat: float, val: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb((hue % 360.0) / 360.0, min(max(sat, 0.0), 1.0), min(max(val, 0.0), 1.0))
    return (round(r * 255), round(g * 255), round(b * 255))


def _jittered(rng: np.random.Generator, hsv: tuple[float, float, float]) -> RGB:
    """A colour from a family: the family's hue/sat/val plus a small uniform jitter."""
    dh, ds, dv = (rng.uniform(-j, j) for j in JITTER)
    return _hsv(hsv[0] + dh, hsv[1] + ds, hsv[2] + dv)


def _scaled(color: RGB, factor: float) -> RGB:
    return tuple(int(min(255, round(c * factor))) for c in color)  # type: ignore[return-value]


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))  # type: ignore[return-value]


def _soften(color: RGB) -> RGB:
    """Domain A palette: hue turned a little, less saturated, never ink-dark."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in color))
    return _hsv(h * 360.0 + SOFT_HUE_SHIFT, s * SOFT_SATURATION, SOFT_MIN_VALUE + (1.0 - SOFT_MIN_VALUE) * v)


# ---------------------------------------------------------------------------------------------------
# Character: every random choice of one picture
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Character:
    hair: str
    eyes: str
    collar: str
    background: str
    mouth: str
    accessory: str
    colors: dict[str, RGB]
    center: tuple[float, float]  # head centre, in image units (0..1)
    radius: float                # cranium radius, in image units
    angle: float                 # head tilt, degrees
    flip: bool                   # mirrored left/right (ponytail and accessory side)


def _pick(rng: np.random.Generator, options) -> str:
    options = tuple(options)
    return options[int(rng.integers(len(options)))]


def sample_character(rng: np.random.Generator, framing: str = "scene") -> Character:
    """Draw one character's choices, colours and pose. ``framing``: "scene" (bust shot) or "face" (crop)."""
    hair, eyes, collar = _pick(rng, HAIR), _pick(rng, EYES), _pick(rng, CLOTHES)
    background, mouth, accessory = _pick(rng, BACKGROUNDS), _pick(rng, MOUTHS), _pick(rng, ACCESSORIES)
    body, trim = CLOTHES[collar]
    skin = SKIN_TONES[int(rng.integers(len(SKIN_TONES)))]
    colors = {
        "hair": _jittered(rng, HAIR[hair]),
        "iris": _jittered(rng, EYES[eyes]),
        "clothes": _jittered(rng, body),
        "trim": _jittered(rng, trim),
        "background": _jittered(rng, BACKGROUNDS[background]),
        "skin": _jittered(rng, skin),
        # sampled even for "none" (then unused), so every character consumes the generator alike
        "accessory": _jittered(rng, ACCESSORIES[accessory] or (0, 0, 1)),
        "ribbon": _jittered(rng, RIBBON),
    }
    if framing == "face":  # face-crop data sets: the head fills most of the frame, nearly upright
        center = (rng.uniform(0.46, 0.54), rng.uniform(0.44, 0.50))
        radius, angle = rng.uniform(0.26, 0.30), rng.uniform(-8.0, 8.0)
    elif framing == "scene":
        center = (rng.uniform(0.34, 0.66), rng.uniform(0.32, 0.46))
        radius, angle = rng.uniform(0.15, 0.23), rng.uniform(-15.0, 15.0)
    else:
        raise ValueError(f"unknown framing {framing!r}")
    return Character(hair, eyes, collar, background, mouth, accessory, colors,
                     (float(center[0]), float(center[1])), float(radius), float(angle), bool(rng.integers(2)))


# ---------------------------------------------------------------------------------------------------
# Geometry helpers (head units)
# ---------------------------------------------------------------------------------------------------
@dataclass
class Shape:
    points: np.ndarray          # (N, 2) float, head units (or image units 0..1 when frame == "image")
    fill: RGB | None            # flat colour; None for a pure line
    line: float = 1.0           # outline width relative to the main outline; 0: no outline
    closed: bool = True
    frame: str = "head"
    soft: RGB | None = None     # colour of a pure line in the soft render; None: not drawn there
    volume: bool = True         # soft render: shade the region like a rounded volume


def _ellipse(cx: float, cy: float, rx: float, ry: float, start: float = 0.0, end: float = 360.0,
             n: int = 40) -> np.ndarray:
    t = np.radians(np.linspace(start, end, n, endpoint=(end - start) % 360 != 0))
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _chaikin(points, iterations: int = 2, closed: bool = True) -> np.ndarray:
    """Corner cutting: turns a coarse control polygon into a smooth organic outline."""
    p = np.asarray(points, dtype=np.float64)
    for _ in range(iterations):
        q = np.roll(p, -1, axis=0) if closed else p[1:]
        a = p if closed else p[:-1]
        cut = np.empty((2 * len(a), 2))
        cut[0::2] = 0.75 * a + 0.25 * q
        cut[1::2] = 0.25 * a + 0.75 * q
        p = cut if closed else np.vstack([p[:1], cut, p[-1:]])
    return p


def _bezier(p0, control, p1, n: int = 6) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    p0, control, p1 = (np.asarray(v, dtype=np.float64) for v in (p0, control, p1))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * control + t ** 2 * p1


def _mirror(points: np.ndarray) -> np.ndarray:
    return points * np.array([-1.0, 1.0])


def _line(points, soft: RGB | None = None, width: float = 0.6) -> Shape:
    return Shape(np.asarray(points, dtype=np.float64), None, width, closed=False, soft=soft)


# ---------------------------------------------------------------------------------------------------
# What is drawn: background, hair, body, face -- each a list of Shapes, back to front
# ---------------------------------------------------------------------------------------------------
def _background(ch: Character, rng: np.random.Generator) -> list[Shape]:
    bg = ch.colors["background"]
    tint = _mix(bg, WHITE, 0.6) if ch.background != "rays" else _scaled(bg, 0.93)
    full = np.array([[-0.1, -0.1], [1.1, -0.1], [1.1, 1.1], [-0.1, 1.1]])
    shapes = [Shape(full, bg, 0.0, frame="image", volume=False)]
    pattern: list[np.ndarray] = []
    if ch.background == "stripes":  # diagonal bands
        width, phase = 0.07, rng.uniform(0.0, 0.28)
        for k in range(-8, 9):
            x = phase + k * 0.28
            pattern.append(np.array([[x, -0.2], [x + width, -0.2], [x + width + 1.4, 1.2], [x + 1.4, 1.2]]) - [0.7, 0])
    elif ch.background == "dots":  # staggered polka dots
        ox, oy = rng.uniform(0.0, 0.16, size=2)
        for row in range(-1, 8):
            for col in range(-1, 8):
                x, y = ox + col * 0.16 + (0.08 if row % 2 else 0.0), oy + row * 0.14
                pattern.append(_ellipse(x, y, 0.028, 0.028, n=16))
    elif ch.background == "rays":  # sunburst wedges around a point
        cx, cy, turn = rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.5), rng.uniform(0.0, 30.0)
        for k in range(12):
            a0, a1 = np.radians(turn + k * 30.0), np.radians(turn + k * 30.0 + 15.0)
            # wedges start a little away from the centre, so their outlines do not merge into a blot
            pattern.append(np.array([[cx + 0.06 * np.cos(a0), cy + 0.06 * np.sin(a0)],
                                     [cx + 2 * np.cos(a0), cy + 2 * np.sin(a0)],
                                     [cx + 2 * np.cos(a1), cy + 2 * np.sin(a1)],
                                     [cx + 0.06 * np.cos(a1), cy + 0.06 * np.sin(a1)]]))
    shapes += [Shape(p, tint, 0.35, frame="image", volume=False) for p in pattern]
    if ch.background == "grid":  # thin graph-paper lines
        ox, oy = rng.uniform(0.0, 0.125, size=2)
        for k in range(-1, 10):
            v = k * 0.125
            shapes.append(Shape(np.array([[ox + v, -0.1], [ox + v, 1.1]]), None, 0.3, closed=False,
                                frame="image", soft=tint, volume=False))
            shapes.append(Shape(np.array([[-0.1, oy + v], [1.1, oy + v]]), None, 0.3, closed=False,
                                frame="image", soft=tint, volume=False))
    return shapes


def _bangs_edge(rng: np.random.Generator, half_width: float, tips: int, tip_y: float, root_y: float,
                blunt: bool = False) -> np.ndarray:
    """Lower edge of the fringe, right to left: strands curving down to pointed tips (or a blunt cut)."""
    if blunt:  # hime cut: one straight line, slightly arched
        x = np.linspace(half_width, -half_width, 9)
        return np.stack([x, tip_y - 0.06 * (1 - (x / half_width) ** 2)], axis=1)
    xs = np.linspace(half_width, -half_width, 2 * tips + 1)
    out = [np.array([[xs[0], root_y + 0.25]])]
    for k in range(tips):
        root_a = (xs[2 * k], root_y + (0.25 if k == 0 else 0.0))
        tip = (xs[2 * k + 1] + rng.uniform(-0.04, 0.04), tip_y + rng.uniform(-0.08, 0.06))
        root_b = (xs[2 * k + 2], root_y + (0.25 if k == tips - 1 else 0.0))
        bend = 0.10 * (1 if xs[2 * k + 1] < 0 else -1)  # strands sweep outwards from the parting
        out.append(_bezier(root_a, ((root_a[0] + tip[0]) / 2 + bend, (root_a[1] + tip[1]) / 2), tip, 5)[1:])
        out.append(_bezier(tip, ((tip[0] + root_b[0]) / 2 + bend, (tip[1] + root_b[1]) / 2), root_b, 5)[1:])
    return np.vstack(out)


def _front_hair(rng: np.random.Generator, color: RGB, side_end: float, tips: int, tip_y: float,
                blunt: bool = False, spiky: bool = False) -> list[Shape]:
    """The hair in front of the face: the cap over the cranium, side locks and the fringe."""
    angles = np.radians(np.linspace(168.0, 372.0, 35))
    outer = np.stack([1.12 * np.cos(angles), 1.12 * np.sin(angles)], axis=1)
    outer[:, 1] = np.where(outer[:, 1] < 0, outer[:, 1] * 1.1, outer[:, 1])  # a little volume on top
    if spiky:  # jagged crown: every other point pushed out
        idx = np.arange(1, len(outer) - 1, 2)
        push = rng.uniform(1.18, 1.38, size=len(idx))[:, None]
        outer[idx] *= push
    right_lock = np.array([[1.12, side_end * 0.5], [1.05, side_end], [0.92, side_end + 0.12],
                           [0.80, side_end - 0.05], [0.82, 0.25]])
    left_lock = _mirror(right_lock[::-1])
    fringe = _bangs_edge(rng, 0.82, tips, tip_y, -0.45, blunt)
    cap = np.vstack([outer, right_lock, fringe, left_lock])
    shapes = [Shape(cap, color)]
    # a few strand lines inside the fringe, from the crown towards the tips: reads as "hair" at a glance
    dark = _scaled(color, 0.8)
    for x in rng.uniform(-0.6, 0.6, size=2):
        shapes.append(_line(_bezier((x * 0.4, -0.95), (x * 0.8, -0.6), (x, -0.3 + rng.uniform(0, 0.1)), 5), dark, 0.45))
    return shapes


def _hair_back(ch: Character, rng: np.random.Generator) -> list[Shape]:
    """Hair behind the head and body (drawn first)."""
    c = ch.colors["hair"]
    if ch.hair == "bob":
        return [Shape(_chaikin([[-1.15, -0.9], [1.15, -0.9], [1.32, 0.2], [1.28, 1.05], [0.6, 1.15],
                                [-0.6, 1.15], [-1.28, 1.05], [-1.32, 0.2]], 3), c)]
    if ch.hair == "long":
        return [Shape(_chaikin([[-1.1, -0.9], [1.1, -0.9], [1.35, 0.4], [1.45, 2.4], [1.6, 3.9],
                                [-1.6, 3.9], [-1.45, 2.4], [-1.35, 0.4]], 3), c)]
    if ch.hair == "spiky":
        angles = np.radians(np.linspace(120.0, 420.0, 21))
        radius = np.where(np.arange(21) % 2 == 0, 1.05, 1.45) + rng.uniform(-0.06, 0.06, size=21)
        back = np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)
        return [Shape(np.vstack([back, [[0.75, 0.8], [-0.75, 0.8]]]), c)]
    if ch.hair == "short":
        return [Shape(_ellipse(0.0, -0.05, 1.16, 1.08), c)]
    if ch.hair == "twintails":
        tail = _chaikin([[0.85, -0.75], [1.55, -0.75], [2.05, 0.1], [2.15, 1.4], [1.95, 2.7], [1.7, 3.3],
                         [1.62, 2.4], [1.58, 1.2], [1.35, 0.2], [0.95, -0.25]], 3)
        return [Shape(tail, c), Shape(_mirror(tail), c), Shape(_ellipse(0.0, -0.05, 1.14, 1.06), c)]
    if ch.hair == "ponytail":
        tail = _chaikin([[0.2, -1.05], [1.05, -1.25], [1.7, -0.85], [2.0, 0.3], [1.9, 1.6], [1.6, 2.3],
                         [1.5, 1.3], [1.35, 0.2], [0.9, -0.45]], 3)
        return [Shape(tail, c), Shape(_ellipse(0.0, -0.05, 1.14, 1.06), c)]
    raise AssertionError(ch.hair)


def _hair_front(ch: Character, rng: np.random.Generator) -> list[Shape]:
    c = ch.colors["hair"]
    if ch.hair == "bob":
        return _front_hair(rng, c, 0.95, 4, 0.0, blunt=True)
    if ch.hair == "spiky":
        return _front_hair(rng, c, 0.35, 5, 0.12, spiky=True)
    if ch.hair == "long":
        return _front_hair(rng, c, 1.7, 4, 0.05)
    if ch.hair == "twintails":
        shapes = _front_hair(rng, c, 0.6, 4, 0.02)
        for s in (1.0, -1.0):  # hair ties where the tails start
            shapes.append(Shape(_ellipse(1.02 * s, -0.62, 0.13, 0.17), ch.colors["ribbon"]))
        return shapes
    if ch.hair == "short":
        return _front_hair(rng, c, 0.3, 3, -0.05)
    if ch.hair == "ponytail":
        shapes = _front_hair(rng, c, 0.5, 3, 0.0)
        shapes.append(Shape(_ellipse(1.0, -0.98, 0.12, 0.16), ch.colors["ribbon"]))
        return shapes
    raise AssertionError(ch.hair)


def _body(ch: Character) -> list[Shape]:
    """Neck, shoulders and the collar, whose shape keys the clothes colour."""
    skin, clothes, trim = ch.colors["skin"], ch.colors["clothes"], ch.colors["trim"]
    neck = Shape(np.array([[-0.3, 0.6], [0.3, 0.6], [0.32, 2.0], [-0.32, 2.0]]), skin)
    torso = Shape(_chaikin([[-0.3, 1.58], [-1.3, 1.8], [-1.85, 2.15], [-2.05, 2.9], [-2.15, 4.6], [2.15, 4.6],
                            [2.05, 2.9], [1.85, 2.15], [1.3, 1.8], [0.3, 1.58]], 2), clothes)
    # arm lines: the torso reads as shoulders and arms, not as a ball
    arms = [_line([[1.62 * s, 2.75], [1.58 * s, 3.4], [1.55 * s, 4.6]], _scaled(clothes, 0.85), 0.6)
            for s in (-1.0, 1.0)]
    shapes = [neck, torso, *arms]
    if ch.collar == "crew":
        band = np.vstack([_ellipse(0.0, 1.55, 0.52, 0.32, 0, 180, 20), _ellipse(0.0, 1.55, 0.34, 0.18, 180, 0, 20)])
        shapes.append(Shape(band, trim))
    elif ch.collar == "vneck":
        shapes.append(Shape(np.array([[-0.42, 1.6], [0.42, 1.6], [0.0, 2.45]]), trim))
        shapes.append(Shape(np.array([[-0.3, 1.6], [0.3, 1.6], [0.0, 2.25]]), skin))
    elif ch.collar == "sailor":
        flap = _chaikin([[-0.32, 1.58], [-1.5, 1.92], [-1.45, 2.45], [0.0, 3.05], [1.45, 2.45], [1.5, 1.92],
                         [0.32, 1.58], [0.0, 2.45]], 1)
        shapes.append(Shape(flap, trim))
        shapes.append(_line([[-1.3, 2.38], [0.0, 2.9], [1.3, 2.38]], _scaled(trim, 1.4), 0.5))  # collar stripe
        shapes.append(Shape(np.array([[-0.22, 2.55], [0.22, 2.55], [0.0, 2.95]]), ch.colors["ribbon"]))  # scarf knot
    elif ch.collar == "shirt":
        wing = np.array([[-0.34, 1.56], [-0.75, 1.75], [-0.55, 2.15], [-0.05, 1.9]])
        shapes.append(Shape(np.array([[-0.1, 1.9], [0.1, 1.9], [0.16, 2.75], [0.0, 2.98], [-0.16, 2.75]]), trim))
        shapes += [Shape(wing, _mix(clothes, WHITE, 0.8)), Shape(_mirror(wing), _mix(clothes, WHITE, 0.8))]
        shapes.append(Shape(_ellipse(0.0, 1.9, 0.11, 0.09, n=16), trim))  # tie knot
    elif ch.collar == "hoodie":
        shapes.append(Shape(_ellipse(0.0, 1.68, 1.0, 0.42), trim))  # the hood, bunched up around the neck
        shapes.append(Shape(_ellipse(0.0, 1.66, 0.36, 0.2), skin))  # neck opening
        for s in (-1.0, 1.0):  # drawstrings
            shapes.append(_line([[0.22 * s, 1.78], [0.26 * s, 2.5]], _scaled(trim, 0.8), 0.5))
    return shapes


def _face(ch: Character) -> list[Shape]:
    skin = ch.colors["skin"]
    ears = [Shape(_ellipse(s * 0.95, 0.22, 0.14, 0.2), skin) for s in (-1.0, 1.0)]
    top = _ellipse(0.0, 0.0, 1.0, 1.0, 160.0, 380.0, 30)
    jaw = _chaikin([[0.94, 0.34], [0.86, 0.72], [0.45, 1.12], [0.0, 1.32], [-0.45, 1.12], [-0.86, 0.72],
                    [-0.94, 0.34]], 2, closed=False)
    return ears + [Shape(np.vstack([top, jaw[1:-1]]), skin)]


# Eye shapes for the right-hand eye (x > 0 is towards the outer corner); the left eye is mirrored.
# Each: the sclera outline, and the iris (cx, cy, rx, ry) inside it.
EYE_SHAPES = {
    "round": (_ellipse(0.0, 0.0, 0.24, 0.27), (0.0, 0.02, 0.18, 0.22)),
    "tall": (_ellipse(0.0, 0.0, 0.18, 0.32), (0.0, 0.04, 0.14, 0.25)),
    # tsurime: the outer corner lifted
    "sharp": (_chaikin([[-0.24, 0.06], [-0.12, -0.12], [0.12, -0.17], [0.30, -0.22], [0.22, 0.06],
                        [0.05, 0.15], [-0.12, 0.14]]), (0.01, 0.0, 0.13, 0.13)),
    # tareme: the outer corner drooping
    "droopy": (_chaikin([[-0.24, -0.10], [-0.08, -0.21], [0.12, -0.18], [0.26, -0.02], [0.28, 0.14],
                         [0.08, 0.18], [-0.12, 0.13]]), (0.02, 0.0, 0.15, 0.16)),
}
EYE_CENTER = (0.42, 0.34)


def _eye(ch: Character, side: float) -> list[Shape]:
    sclera, (ix, iy, irx, iry) = EYE_SHAPES[ch.eyes]
    iris, lids = ch.colors["iris"], _scaled(ch.colors["hair"], 0.45)
    shapes = [
        Shape(sclera, EYE_WHITE, 0.6),
        Shape(_ellipse(ix, iy, irx, iry), iris, 0.5),
        Shape(_ellipse(ix, iy + 0.02, irx * 0.45, iry * 0.5), _scaled(iris, 0.45), 0.3),  # pupil
        Shape(_ellipse(ix - irx * 0.4, iy - iry * 0.45, irx * 0.32, irx * 0.32, n=16), WHITE, 0.3),  # highlight
    ]
    # upper lash line: the upper third of the sclera outline, drawn thick
    upper = sclera[sclera[:, 1] < np.percentile(sclera[:, 1], 38)]
    upper = upper[np.argsort(upper[:, 0])]
    shapes.append(_line(upper, _mix(lids, WHITE, 0.25), 2.2))
    brow_y = sclera[:, 1].min() - 0.16
    shapes.append(_line(_bezier((-0.2, brow_y + 0.03), (0.05, brow_y - 0.06), (0.28, brow_y + 0.02), 6), lids, 0.55))
    ex, ey = EYE_CENTER
    for s in shapes:
        s.points = s.points + [ex, ey]
        if side < 0:
            s.points = _mirror(s.points)
    return shapes


def _mouth(ch: Character) -> list[Shape]:
    lip = _scaled(ch.colors["skin"], 0.62)
    nose = _line([[0.03, 0.7], [-0.01, 0.76]], lip, 0.45)
    if ch.mouth == "smile":
        mouth = [_line(_ellipse(0.0, 0.86, 0.16, 0.1, 30, 150, 10), lip)]
    elif ch.mouth == "open":
        mouth = [Shape(np.vstack([[[-0.16, 0.94]], _ellipse(0.0, 0.94, 0.16, 0.14, 0, 180, 12)]), MOUTH_RED, 0.6)]
    elif ch.mouth == "cat":  # the ":3" mouth: two small arcs side by side
        half = _ellipse(0.07, 0.92, 0.07, 0.06, 180, 0, 7)[::-1]
        mouth = [_line(np.vstack([_mirror(half)[::-1], half[1:]]), lip)]
    else:  # flat
        mouth = [_line([[-0.1, 0.96], [0.1, 0.96]], lip)]
    return [nose] + mouth


def _accessory(ch: Character) -> list[Shape]:
    c = ch.colors["accessory"]
    if ch.accessory == "bow":  # on the crown, to one side
        at = np.array([0.62, -1.05])
        wing = np.array([[0.0, 0.0], [0.38, -0.24], [0.42, 0.2]])
        return [Shape(at + wing, c), Shape(at + _mirror(wing), c), Shape(_ellipse(*at, 0.1, 0.12, n=16), c)]
    if ch.accessory == "clip":  # two crossed bars over the fringe
        at = np.array([-0.62, -0.35])
        bar = np.array([[-0.2, -0.04], [0.2, -0.04], [0.2, 0.04], [-0.2, 0.04]])
        rot = lambda deg: bar @ np.array([[np.cos(np.radians(deg)), np.sin(np.radians(deg))],  # noqa: E731
                                          [-np.sin(np.radians(deg)), np.cos(np.radians(deg))]])
        return [Shape(at + rot(35), c, 0.6), Shape(at + rot(-35), c, 0.6)]
    if ch.accessory == "flower":
        at = np.array([-0.72, -0.72])
        petals = [Shape(at + _ellipse(0.13 * np.cos(a), 0.13 * np.sin(a), 0.11, 0.11, n=16), c, 0.6)
                  for a in np.radians(np.arange(0, 360, 72) + 18)]
        return petals + [Shape(at + _ellipse(0, 0, 0.07, 0.07, n=16), _hsv(*FLOWER_CENTER), 0.5)]
    return []


def _scene(ch: Character, rng: np.random.Generator) -> list[Shape]:
    """All shapes of one picture, back to front."""
    return (_background(ch, rng) + _hair_back(ch, rng) + _body(ch) + _face(ch)
            + _eye(ch, 1.0) + _eye(ch, -1.0) + _mouth(ch) + _hair_front(ch, rng) + _accessory(ch))


# ---------------------------------------------------------------------------------------------------
# Painters
# ---------------------------------------------------------------------------------------------------
SUPERSAMPLE = 2  # cel painter: draw at 2x, then area-average down; that is the anti-aliasing
LINE_TYPE = cv2.LINE_8  # cv2's LINE_AA costs twice as much and adds nothing on top of supersampling
SHIFT = 3  # fixed-point bits for cv2 drawing: sub-pixel precise outlines
PNG_LEVEL = 1  # zlib level: as small as level 6 for flat cels, 2x faster for the noisy soft renders


def _to_canvas(shape: Shape, ch: Character, canvas: int) -> np.ndarray:
    """Head units (or image units) -> canvas pixels, as fixed-point int32 for cv2 with SHIFT bits."""
    if shape.frame == "image":
        px = shape.points * canvas
    else:
        p = shape.points * np.array([-1.0 if ch.flip else 1.0, 1.0])
        a = np.radians(ch.angle)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        px = (p @ rot.T) * (ch.radius * canvas) + np.array(ch.center) * canvas
    return np.round(px * (1 << SHIFT)).astype(np.int32)


def _line_width(canvas: int, factor: float) -> int:
    # the main outline is ~1 px per 128 px of image, and at least 2 canvas px (one output pixel when
    # supersampled), so that small images (64 px face crops) still have solid ink lines
    return max(1, int(round(max(canvas / 128.0, 2.0) * factor)))


def _paint_cel(shapes: list[Shape], ch: Character, size: int, sketch: bool) -> tuple[np.ndarray | None, np.ndarray]:
    canvas = size * SUPERSAMPLE
    color = np.empty((canvas, canvas, 3), np.uint8)  # the first shape is always the full background
    lines = np.full((canvas, canvas, 3), 255, np.uint8) if sketch else None
    for shape in shapes:
        pts = _to_canvas(shape, ch, canvas)
        if shape.fill is not None:
            cv2.fillPoly(color, [pts], shape.fill, LINE_TYPE, SHIFT)
            if lines is not None:  # white fill: a shape hides the lines behind it, as it hides colours
                cv2.fillPoly(lines, [pts], WHITE, LINE_TYPE, SHIFT)
        if shape.line > 0:
            width = _line_width(canvas, shape.line)
            cv2.polylines(color, [pts], shape.closed, INK, width, LINE_TYPE, SHIFT)
            if lines is not None:
                cv2.polylines(lines, [pts], shape.closed, SKETCH_INK, width, LINE_TYPE, SHIFT)
    color = cv2.resize(color, (size, size), interpolation=cv2.INTER_AREA)
    if lines is not None:
        lines = cv2.resize(lines, (size, size), interpolation=cv2.INTER_AREA)
    return lines, color


def _paint_soft(shapes: list[Shape], ch: Character, size: int, rng: np.random.Generator) -> np.ndarray:
    """Photo-like: shaded regions (light from the top left, rounded volumes), blurred edges, sensor noise
    and no outlines. Regions go into a label map, so each pixel knows its region's colour and extent;
    no supersampling needed, the blur smooths the edges."""
    labels = np.zeros((size, size), np.uint8)
    palette: list[RGB] = [(0, 0, 0)]
    boxes = [(0.0, 0.0, 1e9)]  # per label: centre x, centre y, radius (huge: flat, no volume)
    softened: dict[RGB, RGB] = {}
    for shape in shapes:
        color = shape.fill if shape.fill is not None else shape.soft
        if color is None:
            continue
        if len(palette) > 255:
            raise AssertionError("too many shapes for a uint8 label map")
        pts = _to_canvas(shape, ch, size)
        if shape.fill is not None:
            cv2.fillPoly(labels, [pts], len(palette), cv2.LINE_8, SHIFT)
        else:
            cv2.polylines(labels, [pts], shape.closed, len(palette), _line_width(size, shape.line), cv2.LINE_8, SHIFT)
        if color not in softened:
            softened[color] = _soften(color)
        palette.append(softened[color])
        p = pts / float(1 << SHIFT)
        lo, hi = p.min(axis=0), p.max(axis=0)
        rounded = shape.volume and shape.fill is not None
        boxes.append(((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, max(float(np.max(hi - lo)) / 2, 1.0) if rounded else 1e9))
    lut = np.asarray(palette, np.float32)
    box = np.asarray(boxes, np.float32)
    xs = np.arange(size, dtype=np.float32)[None, :]  # broadcast rows/columns, no full coordinate grids
    ys = xs.T
    per_pixel = np.take(box, labels, axis=0)  # np.take: several times faster than fancy indexing here
    cx, cy, r = per_pixel[..., 0], per_pixel[..., 1], per_pixel[..., 2]
    d2 = ((xs - cx) ** 2 + (ys - cy) ** 2) / (r * r)
    light = 1.1 - (0.16 / size) * (xs + ys)          # light from the top left
    volume = 1.06 - 0.2 * np.minimum(d2, 1.2)       # rounded: brighter in the middle of each region
    img = np.take(lut, labels, axis=0) * (light * volume)[..., None]
    img = cv2.GaussianBlur(img, (0, 0), max(0.6, size * 0.005))
    img += 3.0 * rng.standard_normal((size, size, 1), dtype=np.float32)  # mild luminance grain
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------
# Public renderers
# ---------------------------------------------------------------------------------------------------
def _check_size(size: int) -> None:
    if int(size) != size or size < 16:
        raise ValueError(f"size must be an integer >= 16, got {size!r}")


def render_paired(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(sketch, color): the colour cel and its line art, whose lines are exactly the colour cel's outlines."""
    _check_size(size)
    ch = sample_character(rng, "scene")
    sketch, color = _paint_cel(_scene(ch, rng), ch, size, sketch=True)
    assert sketch is not None
    return sketch, color


def render_cel(rng: np.random.Generator, size: int) -> np.ndarray:
    """Flat cel colours with dark outlines (unpaired domain B; the colour side of ``render_paired``)."""
    _check_size(size)
    ch = sample_character(rng, "scene")
    return _paint_cel(_scene(ch, rng), ch, size, sketch=False)[1]


def render_soft(rng: np.random.Generator, size: int) -> np.ndarray:
    """Soft photo-like render: shaded gradients, blurred edges, mild noise, pastel palette, no outlines
    (unpaired domain A)."""
    _check_size(size)
    ch = sample_character(rng, "scene")
    return _paint_soft(_scene(ch, rng), ch, size, rng)


def render_face(rng: np.random.Generator, size: int) -> np.ndarray:
    """A colour head crop: the face fills most of the frame (like anime face-crop data sets)."""
    _check_size(size)
    ch = sample_character(rng, "face")
    return _paint_cel(_scene(ch, rng), ch, size, sketch=False)[1]


# ---------------------------------------------------------------------------------------------------
# Rows in the shard schema
# ---------------------------------------------------------------------------------------------------
CHUNK = 32  # examples per task when generating with several workers


def _row(kind: str, index: int, size: int, seed: int) -> dict:
    rng = np.random.default_rng([seed, index])  # an example depends on (seed, index) only
    row: dict = {"id": f"synth-{index:06d}"}
    if kind == "paired":
        sketch, color = render_paired(rng, size)
        row.update(sketch=encode_png(sketch, PNG_LEVEL), color=encode_png(color, PNG_LEVEL))
    elif kind == "unpaired":
        domain = "A" if index % 2 == 0 else "B"
        image = render_soft(rng, size) if domain == "A" else render_cel(rng, size)
        row.update(domain=domain, image=encode_png(image, PNG_LEVEL))
    else:
        row.update(image=encode_png(render_face(rng, size), PNG_LEVEL), label=None)
    row.update(width=size, height=size)
    return row


def _rows(args: tuple[str, int, int, int, int]) -> list[dict]:
    kind, start, stop, size, seed = args
    return [_row(kind, i, size, seed) for i in range(start, stop)]


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would oversubscribe


def examples(kind: str, count: int, size: int, seed: int, workers: int = 1) -> Iterator[dict]:
    """Yield ``count`` synthetic rows of ``kind`` in index order, images as PNG bytes.

    Rows: paired ``{id, sketch, color, width, height}``; unpaired ``{id, domain, image, width, height}``
    with domain "A" (soft renders) at even and "B" (cels) at odd indices; faces
    ``{id, image, label: None, width, height}``. Identical for any ``workers``.

    ``workers > 1`` renders chunks of CHUNK indices in spawned processes (about a second to start), so
    the usual multiprocessing rule applies: a calling script needs an ``if __name__ == "__main__":``
    guard (a script piped on stdin cannot be re-imported and gets BrokenProcessPool).
    Validation happens at call time, before the first row is asked for.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown synthetic kind {kind!r}; expected one of {KINDS}")
    if int(count) != count or count < 1:
        raise ValueError(f"count must be an integer >= 1, got {count!r}")
    _check_size(size)
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if int(workers) != workers or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    return _generate(kind, int(count), int(size), int(seed), int(workers))


def _generate(kind: str, count: int, size: int, seed: int, workers: int) -> Iterator[dict]:
    chunks = [(kind, start, min(start + CHUNK, count), size, seed) for start in range(0, count, CHUNK)]
    if workers == 1 or len(chunks) == 1:
        for chunk in chunks:
            yield from _rows(chunk)
        return
    # spawn, not fork: the caller may hold threads (Ray, torch) that a forked child would inherit broken.
    # A process pool executor, not multiprocessing.Pool: a worker that cannot start (e.g. the main
    # script is unimportable) raises BrokenProcessPool instead of being respawned forever.
    pool = ProcessPoolExecutor(min(workers, len(chunks)), mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker)
    try:
        # a bounded window of chunks in flight: rows come back in index order, and a slow consumer
        # (a shard writer on a remote store) does not make finished images pile up in memory
        todo = iter(chunks)
        pending = deque(pool.submit(_rows, chunk) for chunk in islice(todo, 2 * workers))
        while pending:
            rows = pending.popleft().result()
            for chunk in islice(todo, 1):
                pending.append(pool.submit(_rows, chunk))
            yield from rows
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
