"""Render the README's picture of 3D objects as thumbnails: a generated z-stack of three kinds
of blobs (round, elongated, spotty), imaged with planes twice as far apart as the pixels
(spacing 2, 1, 1), shown by ``sr.segment_thumbnails(..., axes="zyx", spacing=...)`` (each
object's z-, y- and x-planes side by side, outlined) in a montage.

python docs/volume_thumbnails.py   # writes docs/volume_thumbnails.png
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import napari_segrep as sr
from napari_segrep.analysis.montage import write_montage

HERE = Path(__file__).parent
KINDS = ("round", "elongated", "spotty")
SPACING = (2.0, 1.0, 1.0)  # (dz, dy, dx): planes twice as far apart as the pixels


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def make_volume(
    shape=(40, 160, 160), n_per_kind: int = 6, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """A (Z, Y, X) float32 image, its labels and each label's kind; coordinates physical."""
    rng = np.random.default_rng(seed)
    grid = [(np.arange(n) + 0.5) * d for n, d in zip(shape, SPACING, strict=True)]
    points = np.stack(np.meshgrid(*grid, indexing="ij"), axis=-1)
    extent = np.array(shape) * np.array(SPACING)
    labels = np.zeros(shape, np.int32)
    image = rng.normal(0.15, 0.03, shape).astype(np.float32)
    kinds: dict[int, str] = {}
    centres: list[np.ndarray] = []
    order = [kind for kind in KINDS for _ in range(n_per_kind)]
    rng.shuffle(order)
    for kind in order:
        radii = {"round": [9, 9, 9], "elongated": [17, 7, 7], "spotty": [10, 10, 10]}[kind]
        radii = np.array(radii) * rng.uniform(0.85, 1.15)
        for _ in range(200):  # a place clear of the others and of the edges
            centre = rng.uniform(radii.max() + 1, extent - radii.max() - 1)
            if all(np.linalg.norm(centre - c) > 2 * radii.max() + 3 for c in centres):
                break
        else:
            continue
        centres.append(centre)
        local = (points - centre) @ _rotation(rng)
        inside = ((local / radii) ** 2).sum(axis=-1) <= 1
        label = len(centres)
        labels[inside] = label
        kinds[label] = kind
        brightness = rng.uniform(0.5, 0.7)
        if kind == "spotty":
            spots = rng.random(shape) < 0.04
            image[inside] = brightness * 0.6 + 0.5 * spots[inside]
        else:
            image[inside] = brightness + rng.normal(0, 0.03, int(inside.sum()))
    return image, labels, kinds


def main() -> None:
    image, labels, kinds = make_volume()
    chosen = [i for kind in KINDS for i in sorted(k for k in kinds if kinds[k] == kind)[:4]]
    thumbs = sr.segment_thumbnails(image, labels, chosen, axes="zyx", spacing=SPACING, size=128)
    captions = [f"{kinds[i]}\nlabel {i}" for i in chosen]
    out = write_montage(
        HERE / "volume_thumbnails.png",
        thumbs,
        captions,
        columns=4,
        title="3D objects: z-, y-, x-planes (spacing 2, 1, 1)",
        overwrite=True,
    )
    print("wrote", out)


if __name__ == "__main__":
    main()
