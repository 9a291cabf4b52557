"""Render the README's pictures from the generated "cells" sample (``make_cells()``, what
``napari-segrep demo`` and napari's File > Open Sample show).

python docs/make_figures.py        # writes docs/sample_cells.png and docs/crops.png
"""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
from skimage.segmentation import find_boundaries

from napari_segrep._sample_data import CELL_CLASSES, make_cells
from napari_segrep.engine.segments import iter_crop_batches, resolve_normalization, segment_table

HERE = Path(__file__).parent
COLOURS = {"round": (255, 120, 60), "elongated": (80, 200, 255), "spotty": (140, 255, 110)}


def _grey_to_rgb(img: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(img, (1, 99.8))
    g = np.clip((img - lo) / (hi - lo), 0, 1)
    return (np.stack([g, g, g], -1) * 255).astype(np.uint8)


def main() -> None:
    image, labels, classes = make_cells()  # the "cells" sample itself: 512x512, 120 cells
    # 1. the sample with outlines coloured by class, at its own size
    rgb = _grey_to_rgb(image)
    edges = find_boundaries(labels, mode="inner")
    for lab, kind in classes.items():
        rgb[edges & (labels == lab)] = COLOURS[kind]
    iio.imwrite(HERE / "sample_cells.png", rgb)

    # 2. what the encoder sees: crop (context visible), its mask, the image-masked input
    table = segment_table(labels)
    norm = resolve_normalization(image[None], "image")
    batch = next(iter_crop_batches(image[None], table, crop_size=64, batch_size=64, norm=norm))
    rows = []
    for kind in CELL_CLASSES:
        ids = [i for i, lab in enumerate(table.geometry["label"]) if classes[int(lab)] == kind][:3]
        tiles = []
        for i in ids:
            crop = np.clip(batch.images[i, 0], 0, 1)
            mask = batch.masks[i, 0]
            tiles += [crop, mask.astype(float), crop * mask]
        rows.append(np.concatenate([np.pad(t, 2, constant_values=1) for t in tiles], axis=1))
    montage = (np.concatenate(rows, axis=0) * 255).astype(np.uint8)
    iio.imwrite(HERE / "crops.png", np.kron(montage, np.ones((2, 2), np.uint8)))
    print("wrote", HERE / "sample_cells.png", HERE / "crops.png")


if __name__ == "__main__":
    main()
