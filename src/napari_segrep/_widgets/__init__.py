"""napari dock widgets: the only package that imports napari, magicgui or qtpy.

Importing it first keeps ``triton`` out of the napari process (see :func:`keep_triton_out`).
"""

from __future__ import annotations

import sys


def keep_triton_out() -> bool:
    """Make ``import triton`` fail in this process, unless triton is already loaded.

    Why: with Mesa OpenGL (Xvfb, Intel/AMD Linux desktops, VMs, remote desktops), importing
    torchvision after napari's canvas exists makes ``torch._dynamo`` import ``triton``, whose
    bundled LLVM clashes with Mesa's ``libLLVM`` and segfaults the whole viewer.  Users open our
    widgets after napari has started, which is exactly that order.  The GUI process never needs
    triton (it only serves ``torch.compile`` on GPUs, which the widgets don't use); torch treats a
    failing ``import triton`` as "triton not installed".  Command-line and API use, where torch
    comes first, are untouched.

    Returns True when the guard was installed by this call.
    """
    if "triton" in sys.modules:
        return False
    sys.modules["triton"] = None  # type: ignore[assignment]
    return True


keep_triton_out()
