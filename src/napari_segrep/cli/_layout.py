"""``--axes`` and ``--spacing``: what the label images' axes are and their voxel size, the same
options in every command that reads image/label pairs.

Standard library only at import time (``napari-segrep --help`` must not load numpy or torch).
"""

from __future__ import annotations

__all__ = ["AXES_CHOICES", "AXES_HOW", "add_layout_options"]

#: ``--axes`` values (those of :data:`napari_segrep._images.AXES`).
AXES_CHOICES = ("yx", "zyx", "tyx", "tzyx")
#: How the CLI says the axes in the fix of :class:`napari_segrep._images.AxesUnknown`.
AXES_HOW = "--axes {axes}"


def add_layout_options(group) -> None:
    """``--axes {yx,zyx,tyx,tzyx}`` and ``--spacing DZ DY DX`` (or ``DY DX``) on ``group`` (a
    parser or one of its argument groups; the parser's formatter :class:`HelpFormatter`)."""
    group.add_argument(
        "--axes",
        choices=AXES_CHOICES,
        default=None,
        type=str.lower,
        help="the label images' axes: zyx for a z-stack (one 3D object per label), tyx for a "
        "time-lapse (2D frames), tzyx for a time-lapse of volumes (default: yx for 2D labels, "
        "tzyx for 4D; 3D labels must say)",
    )
    group.add_argument(
        "--spacing",
        nargs="+",
        type=float,
        default=None,
        metavar="DZ DY DX",
        help="the voxel size of volumes (DY DX for 2D images), in any one unit: each object is "
        "resampled to near-isotropic voxels (default: isotropic)",
    )
