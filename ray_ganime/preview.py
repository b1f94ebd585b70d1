"""Images a person looks at: contact sheets of a data set, sample grids during training."""

from __future__ import annotations

import numpy as np

from ray_ganime import images, transforms


def grid(rows: list[list[np.ndarray]], size: int = 128, pad: int = 4) -> np.ndarray:
    """Tile rows of uint8 RGB images (each resized to size x size) on a white sheet."""
    n_cols = max(len(r) for r in rows)
    sheet = np.full((len(rows) * (size + pad) + pad, n_cols * (size + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            y, x = pad + i * (size + pad), pad + j * (size + pad)
            sheet[y:y + size, x:x + size] = transforms.resize(image, size, "area")
    return sheet


def sample_tile_size(image_size: int) -> int:
    """Tile size of sample sheets (training grids, evaluation samples): twice the image, at most 256 px."""
    return min(256, image_size * 2)


def sample_sheet(rows: list[list[np.ndarray]]) -> np.ndarray:
    """Rows of (input, output, target) images as one sheet, tiled at sample_tile_size."""
    return grid(rows, size=sample_tile_size(rows[0][0].shape[0]))


def contact_sheet(rows: list[dict], image_columns: list[str], size: int = 128, per_line: int = 4) -> np.ndarray:
    """A sheet of data set rows (as read from shards); pairs stay side by side (sketch | color)."""
    tiles = [images.decode_rgb(r[c]) for r in rows for c in image_columns]
    per_line *= len(image_columns)
    return grid([tiles[i:i + per_line] for i in range(0, len(tiles), per_line)], size=size)
