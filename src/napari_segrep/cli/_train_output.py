"""What ``napari-segrep train`` prints and writes besides the checkpoint: the per-epoch quality
lines and the summary, ``history.csv``/``quality.csv``, and ``--debug``'s view pairs."""

from __future__ import annotations

import sys
from pathlib import Path

from ._common import CLIError

__all__ = ["quality_line", "quality_summary", "write_debug_views", "write_history"]


def quality_line(record: dict, start: dict, *, epochs: int | None) -> str:
    """One line per quality record: the start's, then each epoch's (mean loss, effective rank
    and view agreement with their start values, and a collapse)."""
    figures = (
        f"effective rank {record['effective_rank']:.1f}, view agreement "
        f"{record['view_agreement']:.2f} ({record['n']} {record['monitor']} segments, chance "
        f"{1 / record['n']:.2f})"
    )
    if record is start:
        return f"start (epoch {record['epoch']}): {figures}"
    loss = record["loss"] if record["loss"] is not None else float("nan")
    line = (
        f"epoch {record['epoch']}{f'/{epochs}' if epochs else ''}: loss {loss:.4f}, effective rank "
        f"{record['effective_rank']:.1f} (start {start['effective_rank']:.1f}), view agreement "
        f"{record['view_agreement']:.2f} (start {start['view_agreement']:.2f})"
    )
    if record.get("collapsed"):
        line += " - COLLAPSED: lower the learning rate or try another loss"
    return line


def quality_summary(quality: list[dict]) -> str:
    """``"; effective rank A -> B, view agreement C -> D"`` for the summary line ("" without
    quality records)."""
    if not quality:
        return ""
    first, last = quality[0], quality[-1]
    collapsed = " (collapsed)" if any(r.get("collapsed") for r in quality) else ""
    return (
        f"; effective rank {first['effective_rank']:.1f} -> {last['effective_rank']:.1f}"
        f"{collapsed}, view agreement {first['view_agreement']:.2f} -> "
        f"{last['view_agreement']:.2f} ({first['n']} {first['monitor']} segments)"
    )


def write_history(history: list[dict], path: Path) -> None:
    import pandas as pd

    from ..io import atomic_write

    text = pd.DataFrame(history).to_csv(index=False).encode()
    atomic_write(path, lambda fh: fh.write(text))


def write_debug_views(images, labels, names, args, normalize, *, layouts, crop_size) -> int:
    """A PNG grid: for 8 segments, view A and view B with their mask outlines in red (for 3D
    objects, the plane of each view where the object is widest)."""
    import imageio.v3 as iio
    import numpy as np
    from skimage.segmentation import find_boundaries

    from ..engine.augment import AugmentConfig
    from ..engine.dataset import SegmentDataset
    from ..io import atomic_write

    ds = SegmentDataset(
        images,
        labels,
        axes=layouts,
        crop_size=crop_size,
        channel_axis=args.channel_axis,
        normalize=normalize,
        min_size=args.min_size,
        augment=AugmentConfig(crop_size=crop_size, rotate90=args.rotations, flip=args.rotations),
        seed=args.seed,
        names=names,
    )
    if len(ds) == 0:
        raise CLIError("no segment of at least --min-size pixels in the data")
    tiles = []
    for i in np.linspace(0, len(ds) - 1, min(8, len(ds))).astype(int):
        a, ma, b, mb = ds[int(i)]
        pair = []
        for view, mask in ((a, ma), (b, mb)):
            view, mask = view.numpy(), mask[0].numpy()
            if mask.ndim == 3:  # a 3D object: the plane where it is widest
                z = int(mask.sum((1, 2)).argmax())
                view, mask = view[:, z], mask[z]
            grey = np.clip(view.mean(0), 0, 1)
            rgb = np.stack([grey] * 3, -1)
            rgb[find_boundaries(mask, mode="inner")] = (1.0, 0.1, 0.1)
            pair.append(np.pad(rgb, ((2, 2), (2, 2), (0, 0)), constant_values=1))
        tiles.append(np.concatenate(pair, axis=1))
    grid = (np.concatenate(tiles, axis=0) * 255).astype(np.uint8)
    grid = np.kron(grid, np.ones((2, 2, 1), np.uint8))
    path = args.log_dir / "debug_views.png"
    atomic_write(path, lambda fh: fh.write(iio.imwrite("<bytes>", grid, extension=".png")))
    print(
        f"{len(ds)} segments ({ds.n_skipped} skipped as smaller than --min-size); "
        f"view pairs written to {path}",
        file=sys.stderr,
    )
    return 0
