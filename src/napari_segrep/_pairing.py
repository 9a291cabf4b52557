"""Pairing image and label files by name: the one rule of the CLI (``--images``/``--labels``
globs, ``--data DIR``) and the widgets' Folder... buttons.

A label file carries a ``_labels``/``_label``/``_mask``/``_masks`` suffix on its stem
(``x_labels.tif`` pairs with ``x.tif``); a folder holds either ``images/`` and ``labels/`` or
both kinds side by side.  Unmatched files are refused, or skipped with one warning when asked.

Headless and standard library only; :mod:`napari_segrep.io` re-exports :class:`FilePairs`,
:func:`pair_files` and :data:`IMAGE_SUFFIXES`.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

__all__ = ["IMAGE_SUFFIXES", "FilePairs", "pair_files"]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


class FilePairs(list):
    """The ``(image, labels)`` pairs :func:`pair_files` found (a list), in image-name order;
    ``skipped``: the files left out because nothing of their name pairs with them (only with
    ``skip_unmatched``)."""

    skipped: tuple[Path, ...] = ()


def pair_files(
    images: str | None = None,
    labels: str | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    skip_unmatched: bool = False,
    unmatched_fix: str | None = "pass --skip-unmatched to leave them out",
) -> FilePairs:
    """Match image and label files by file stem: the one pairing rule of the CLI (``--images``
    and ``--labels`` globs, ``--data DIR``) and the widgets' Folder... buttons.

    A label file may carry a ``_labels``/``_label``/``_mask``/``_masks`` suffix on the stem
    (``x_labels.tif`` pairs with ``x.tif``).  Either two glob patterns (a file the labels
    pattern matches is never an image, so ``'d/*.tif'`` and ``'d/*_labels.tif'`` work on a
    folder holding both), or ``data_dir`` in one of two layouts: ``images/`` and ``labels/``
    folders, or a flat folder where the files whose name carries a label suffix are the labels
    and the others the images.

    Parameters
    ----------
    images, labels : str, optional
        Glob patterns (``**`` recurses); only ``IMAGE_SUFFIXES`` files count.
    data_dir : path-like, optional
        A folder, instead of the two patterns.
    skip_unmatched : bool
        Leave out the files that nothing pairs with (one ``UserWarning`` listing them; they are
        in the result's ``skipped``) instead of refusing them.
    unmatched_fix : str or None
        What the error about unmatched files proposes besides giving them a partner (the
        CLI's option by default).

    Returns
    -------
    FilePairs
        A list of ``(image, labels)`` paths, by image name.

    Raises
    ------
    ValueError
        Listing the unmatched files and the fix (unless ``skip_unmatched``); naming an image
        whose name marks a label file, or two files for one pair; when nothing matched, or
        ``data_dir`` is no folder of either layout.
    """
    import warnings

    if data_dir is not None:
        image_files, label_files, images, labels = _folder_files(Path(data_dir))
    else:
        if not images or not labels:
            raise ValueError("give both --images and --labels patterns, or --data DIR")
        label_files, all_images = _glob_files(labels), _glob_files(images)
        label_set = {os.path.realpath(p) for p in label_files}
        image_files = [p for p in all_images if os.path.realpath(p) not in label_set]
        if not image_files:
            but = ", leaving out the label files" if all_images else ""
            raise ValueError(
                f"no image file matched {images!r} (looked for {', '.join(IMAGE_SUFFIXES)}{but})"
            )
    if not label_files:
        raise ValueError(f"no label file matched {labels!r}")
    for path in image_files:
        if _label_suffix(path):
            raise ValueError(
                f"{path.name} matched the image pattern but its name marks a label file "
                f"({_label_suffix(path)}): narrow the image pattern, or move the label files out "
                "of the images folder"
            )
    for kind, found in (("images", image_files), ("label files", label_files)):
        first: dict[str, Path] = {}
        for path in found:
            if first.setdefault(_pair_key(path), path) is not path:
                raise ValueError(
                    f"{first[_pair_key(path)].name} and {path.name} are {kind} of the same "
                    "name: each image pairs with exactly one label file"
                )

    key = _pair_key
    by_key = {key(p): p for p in label_files}
    out = FilePairs((p, by_key[key(p)]) for p in image_files if key(p) in by_key)
    matched_keys = {key(p) for p in image_files}
    lone_images = [p for p in image_files if key(p) not in by_key]
    lone_labels = [p for p in label_files if key(p) not in matched_keys]
    if (lone_images or lone_labels) and not skip_unmatched:
        raise ValueError(
            "image and label files must pair up by name; unmatched images: "
            f"{_names(lone_images)}; unmatched labels: {_names(lone_labels)}: give each its "
            "partner (x.tif and x_labels.tif) or move it away"
            + (f", or {unmatched_fix}" if unmatched_fix else "")
        )
    if not out:
        raise ValueError(
            f"no image pairs with a label file ({len(image_files)} images, {len(label_files)} "
            "label files): images and labels pair by file name (x.tif and x_labels.tif)"
        )
    out.skipped = tuple(lone_images + lone_labels)
    if out.skipped:
        n = len(out.skipped)
        warnings.warn(
            f"skipped {n} unmatched file{'s' * (n > 1)} (no image or label file of the same "
            f"name): {_names(out.skipped, brackets=False)}",
            UserWarning,
            stacklevel=2,
        )
    return out


def _glob_files(pattern: str) -> list[Path]:
    return sorted(
        Path(f)
        for f in glob.glob(pattern, recursive=True)
        if Path(f).suffix.lower() in IMAGE_SUFFIXES and Path(f).is_file()
    )


def _folder_files(root: Path) -> tuple[list[Path], list[Path], str, str]:
    """``data_dir``'s images and label files (either layout), and the patterns to name."""
    if not root.is_dir():
        raise ValueError(
            f"{root} is not a folder: give a folder holding images/ and labels/, or "
            "x.tif beside x_labels.tif"
        )
    if (root / "images").is_dir() and (root / "labels").is_dir():
        images, labels = (
            glob.escape(str(root / sub)) + os.sep + "*" for sub in ("images", "labels")
        )
        image_files = _glob_files(images)
        if not image_files:
            raise ValueError(
                f"no image file in {root / 'images'} (looked for {', '.join(IMAGE_SUFFIXES)})"
            )
        return image_files, _glob_files(labels), images, labels
    files = _glob_files(glob.escape(str(root)) + os.sep + "*")
    image_files = [p for p in files if not _label_suffix(p)]
    label_files = [p for p in files if _label_suffix(p)]
    if not image_files:
        one = next((d for d in ("images", "labels") if (root / d).is_dir()), None)
        half = f" (it has {one}/ but not {({'images', 'labels'} - {one}).pop()}/)" if one else ""
        raise ValueError(
            f"no image file in {root}{half}: give a folder holding images/ and labels/, "
            "or x.tif beside x_labels.tif"
        )
    if not label_files:
        raise ValueError(
            f"no label file in {root}: give a folder holding images/ and labels/, or x.tif "
            f"beside x_labels.tif (a label file's name ends in {', '.join(_LABEL_SUFFIXES)})"
        )
    return image_files, label_files, str(root / "*"), str(root / "*_labels.*")


def _names(paths, *, shown: int = 5, brackets: bool = True) -> str:
    """File names for a message: the first ``shown``, then how many more."""
    names = [Path(p).name for p in paths]
    if not names:
        return "none"
    text = repr(names[:shown]) if brackets else ", ".join(names[:shown])
    return text + (f" and {len(names) - shown} more" if len(names) > shown else "")


_LABEL_SUFFIXES = ("_labels", "_label", "_masks", "_mask")


def _label_suffix(path: Path) -> str | None:
    return next((sfx for sfx in _LABEL_SUFFIXES if path.stem.endswith(sfx)), None)


def _pair_key(path: Path) -> str:
    """The stem without a label suffix: ``x_labels.tif`` -> ``x``."""
    suffix = _label_suffix(path)
    return path.stem[: -len(suffix)] if suffix else path.stem
