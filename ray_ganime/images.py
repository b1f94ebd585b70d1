"""Image bytes <-> uint8 RGB arrays, with the safety checks every entry point shares.

All image arrays in ray-ganime are ``numpy.uint8`` of shape ``(H, W, 3)``, RGB, until the
very last step that turns a batch into float tensors for a network.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
import zlib

import cv2
import numpy as np
from PIL import Image, ImageOps

# Refuse decompression bombs: an anime frame or page is far below this (8k x 8k).
MAX_PIXELS = 8192 * 8192
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk every complete PNG ends with


class BadImage(ValueError):
    """The bytes are not a decodable image (empty, truncated, not an image, or too large)."""


class TooLarge(BadImage):
    """An image refused for its pixel count alone (a decompression bomb, or over MAX_PIXELS)."""


ORIENTATION = 0x0112  # the EXIF tag


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
        raise BadImage(f"not an image: {type(e).__name__}: {_without_repr(e)}") from None
    if width * height > MAX_PIXELS:
        raise TooLarge(f"refused, {width}x{height} is over the {MAX_PIXELS}-pixel limit")
    return width, height, fmt


def decode_rgb(data: bytes, max_side: int | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode any PIL-readable image to uint8 RGB (H, W, 3).

    Transparent pixels are composited onto white (line art and cels are drawn on white paper). An EXIF
    orientation (a phone photo held upright) is applied, as viewers show the image: ingest, training data and
    serving all decode here, so they agree. Truncated files raise BadImage instead of decoding half an image.

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
            upright = im.getexif().get(ORIENTATION, 1) in (0, 1)
            fast = _decode_png_cv2(data, im) if upright else None
            if fast is not None:
                return fast
            im.load()
            if not upright:
                im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im if im.mode == "RGBA" else im.convert("RGBA")
                im_rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
            else:
                im_rgb = im if im.mode == "RGB" else im.convert("RGB")  # no copy of what is RGB already
            return np.asarray(im_rgb, dtype=np.uint8)
    except BadImage:
        raise
    except Exception as e:
        raise BadImage(f"cannot decode: {type(e).__name__}: {_without_repr(e)}") from None


def _without_repr(error: Exception) -> str:
    """PIL's message without the in-memory file's repr (``<_io.BytesIO object at 0x...>``): no use to a reader."""
    return re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(error))


def _decode_png_cv2(data: bytes, im: Image.Image) -> np.ndarray | None:
    """An 8-bit RGB or gray PNG without transparency decoded by OpenCV (libpng or libspng, faster than PIL's
    decoder), else None. PNG is lossless, so the pixels are PIL's, bit for bit; the size was checked from the
    header already. None also when OpenCV cannot decode it: PIL then decodes it, or says why not."""
    if im.format != "PNG" or im.mode not in ("RGB", "L") or "transparency" in im.info or len(im.tile) != 1 \
            or im.tile[0].args not in ("RGB", "L"):  # 16-bit samples have their own raw modes ("RGB;16B")
        return None
    if not data.endswith(PNG_END):  # truncated (or trailing bytes): PIL decides, as it always did
        return None
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION  # only called for upright images
    try:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        return None
    if bgr is None or bgr.shape[:2] != (im.height, im.width):
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def encode_png_fast(image: np.ndarray, compress_level: int = 1) -> bytes:
    """uint8 RGB (H, W, 3) or gray (H, W) -> PNG bytes, for answers that must leave fast; deterministic.

    Every row carries PNG's Up filter (the difference to the row above: one vectorised subtraction instead of
    PIL's per-row trial of five filters), then zlib at ``compress_level``: 0 stores the rows unfiltered, 1
    uses zlib's run-length strategy (about as small as level 1's default strategy on filtered rows, in a
    fraction of the time), 2-9 the default strategy. Lossless like any PNG; zlib and numpy release the GIL,
    so encodes in a thread pool run in parallel."""
    if not 0 <= compress_level <= 9:
        raise ValueError(f"compress_level is 0-9, not {compress_level}")
    array = np.ascontiguousarray(image)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"expected uint8 (H, W, 3) or (H, W), got {array.dtype} {array.shape}")
    height, width = array.shape[:2]
    flat = array.reshape(height, -1)
    rows = np.empty((height, flat.shape[1] + 1), np.uint8)  # each row: its filter type byte, then the row
    if compress_level == 0 or height == 1:
        rows[:, 0], rows[:, 1:] = 0, flat  # filter None
    else:
        rows[0, 0], rows[1:, 0], rows[0, 1:] = 0, 2, flat[0]  # the first row has nothing above it
        np.subtract(flat[1:], flat[:-1], out=rows[1:, 1:])  # filter Up, modulo 256
    strategy = zlib.Z_RLE if compress_level == 1 else zlib.Z_DEFAULT_STRATEGY
    packer = zlib.compressobj(compress_level, zlib.DEFLATED, 15, 9, strategy)
    idat = packer.compress(rows.data) + packer.flush()
    color_type = 0 if array.ndim == 2 else 2
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)  # 8 bits, deflate, no interlace
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def encode_png(image: np.ndarray, compress_level: int = 6) -> bytes:
    """uint8 RGB (H, W, 3) or gray (H, W) -> PNG bytes; deterministic for the same array."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_webp(image: np.ndarray, quality: int = 90) -> bytes:
    """Lossy WebP at ``quality``, with libwebp's fastest method (0): much faster than its default (4), for
    files about as small."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="WEBP", quality=quality, method=0)
    return buf.getvalue()
