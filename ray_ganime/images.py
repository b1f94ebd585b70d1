"""Image bytes <-> uint8 RGB arrays, with the safety checks every entry point shares.

All image arrays in ray-ganime are ``numpy.uint8`` of shape ``(H, W, 3)``, RGB, until the
very last step that turns a batch into float tensors for a network.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

# Refuse decompression bombs: an anime frame or page is far below this (8k x 8k).
MAX_PIXELS = 8192 * 8192
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class BadImage(ValueError):
    """The bytes are not a decodable image (empty, truncated, not an image, or too large)."""


class TooLarge(BadImage):
    """An image refused for its pixel count alone (a decompression bomb, or over MAX_PIXELS)."""


def probe(data: bytes) -> tuple[int, int, str]:
    """(width, height, format) from the header alone; raises BadImage."""
    if not data:
        raise BadImage("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                fmt = (im.format or "").lower()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise TooLarge(f"refused, too many pixels: {e}") from None
    except Exception as e:  # PIL raises many types for garbage input
        raise BadImage(f"not an image: {type(e).__name__}: {e}") from None
    if width * height > MAX_PIXELS:
        raise TooLarge(f"refused, {width}x{height} is over the {MAX_PIXELS}-pixel limit")
    return width, height, fmt


def decode_rgb(data: bytes, max_side: int | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode any PIL-readable image to uint8 RGB (H, W, 3).

    Transparent pixels are composited onto white (line art and cels are drawn on white paper).
    Truncated files raise BadImage instead of decoding half an image.

    ``max_side``: the caller shrinks the result to fit that side next. JPEGs then decode at the smallest of
    1/1, 1/2, 1/4, 1/8 scale (libjpeg's DCT scaling) that still covers it: a fraction of the time and memory,
    so the result is at least that size but not yet shrunk. ``max_pixels``: the most pixels it may decode to
    (at that scale), checked from the header before anything is decoded (TooLarge).
    """
    width, height, _ = probe(data)
    try:
        with Image.open(io.BytesIO(data)) as im:
            if max_side and max(width, height) > max_side:
                # Only the longer side bounds the scale: it reaches max_side last (the other side's 1 px asks for
                # nothing), and the scaled size is rounded up.
                im.draft(None, (max_side, 1) if width >= height else (1, max_side))
            if im.width * im.height > max_pixels:
                at = f" (decoding at {im.width}x{im.height})" if im.size != (width, height) else ""
                raise TooLarge(f"{width}x{height}{at} is over the limit of {max_pixels} pixels")
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im if im.mode == "RGBA" else im.convert("RGBA")
                im_rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
            else:
                im_rgb = im if im.mode == "RGB" else im.convert("RGB")  # no copy of what is RGB already
            return np.asarray(im_rgb, dtype=np.uint8)
    except BadImage:
        raise
    except Exception as e:
        raise BadImage(f"cannot decode: {type(e).__name__}: {e}") from None


def encode_png(image: np.ndarray, compress_level: int = 6) -> bytes:
    """uint8 RGB (H, W, 3) or gray (H, W) -> PNG bytes; deterministic for the same array."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
