"""Shared fixtures: small generated scenes and encoders (real models, no mocks)."""

from __future__ import annotations

import os

import numpy as np
import pytest


def require_napari() -> None:
    """Skip a GUI test module when napari is missing, except in CI (SEGREP_REQUIRE_GUI=1),
    where a missing GUI stack is an error: GUI tests must run there, not skip."""
    try:
        import napari  # noqa: F401
    except ImportError:
        if os.environ.get("SEGREP_REQUIRE_GUI") == "1":
            raise
        pytest.skip("napari is not installed (pip install -e '.[test]')", allow_module_level=True)


def disc_labels(shape, centres_radii, *, start=1):
    """Label image with one disc per (cy, cx, r), ids from ``start``; later discs overwrite."""
    labels = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    for k, (cy, cx, r) in enumerate(centres_radii):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = start + k
    return labels


def blob_masks(b, size, seed=0):
    """(b, 1, size, size) bool Tensor: one random disc per crop, well inside it."""
    import torch

    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = torch.zeros(b, 1, size, size, dtype=torch.bool)
    for i in range(b):
        cy, cx = torch.randint(size // 4, 3 * size // 4, (2,), generator=g)
        r = int(torch.randint(3, size // 4, (1,), generator=g))
        masks[i, 0] = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return masks


def relative_max_diff(a, b) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))


def emb(df):
    """The embedding block of an embed_segments table as an array."""
    return df.filter(regex=r"^emb_").to_numpy()


def write_pairs_folder(root, n, *, shape=(96, 96), cells=6):
    """``root/images/im<i>.tif`` and ``root/labels/im<i>_labels.tif``: ``n`` generated cell
    images and their labels (``napari-segrep embed --data root``'s layout)."""
    import tifffile

    from napari_segrep._sample_data import make_cells

    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        image, labels, _ = make_cells(shape=shape, n_cells=cells, seed=i)
        tifffile.imwrite(root / "images" / f"im{i}.tif", image)
        tifffile.imwrite(root / "labels" / f"im{i}_labels.tif", labels)
    return root


@pytest.fixture()
def one_torch_thread():
    """Run a test with one torch intra-op thread (restored afterwards)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def scene():
    """A 96x96 float image with 6 segments, two of them touching."""
    rng = np.random.default_rng(42)
    image = rng.random((96, 96)).astype(np.float32)
    labels = disc_labels(
        (96, 96), [(20, 20, 9), (20, 38, 9), (60, 20, 6), (70, 70, 14), (45, 80, 3), (90, 5, 4)]
    )
    return image, labels


@pytest.fixture(scope="session")
def encoder():
    """The default encoder: resnet18, 1 channel, 512-d (for tests about the default)."""
    from napari_segrep import SegmentEncoder

    return SegmentEncoder(in_channels=1, seed=0).eval()


#: A shrunken real ResNet registered for tests (cellpose keeps 2 of 24 blocks for speed): the
#: masked ResNet code path, BasicBlock, one block per stage, widths 8/16/32/64, stride 32, 64-d.
NARROW_BACKBONE = "resnet_narrow_test"
#: Small and fast training: batch 8, 32 px crops, a small projection head, the narrow test ResNet
#: (24 cells -> 3 steps per epoch).
TRAIN_SMALL = {
    "backbone": NARROW_BACKBONE,
    "batch_size": 8,
    "crop_size": 32,
    "device": "cpu",
    "projection_hidden": 64,
    "projection_dim": 32,
}


def register_narrow_backbone() -> str:
    """Register :data:`NARROW_BACKBONE` through the backbone registry (idempotent)."""
    from functools import partial

    from torchvision.models.resnet import BasicBlock

    from napari_segrep.engine.backbones import BACKBONES, register_backbone
    from napari_segrep.engine.backbones.resnet import MaskedResNet

    if NARROW_BACKBONE not in BACKBONES:
        register_backbone(NARROW_BACKBONE, partial(MaskedResNet, BasicBlock, [1, 1, 1, 1], width=8))
    return NARROW_BACKBONE


@pytest.fixture(scope="session")
def narrow_backbone() -> str:
    """The name of the narrow test ResNet, registered; ``SegmentEncoder(narrow_backbone)``."""
    return register_narrow_backbone()


@pytest.fixture(scope="session")
def narrow_encoder(narrow_backbone):
    """A 1-channel encoder on the narrow test ResNet, eval mode (64-d embeddings)."""
    from napari_segrep import SegmentEncoder

    return SegmentEncoder(narrow_backbone, in_channels=1, seed=0).eval()


#: The 3D counterpart of :data:`NARROW_BACKBONE`: the masked 3D ResNet code path (resnet18_3d's
#: module), one block per stage, widths 8/16/32/64, stride 32, 64-d; 16-24 voxel crops.
NARROW_BACKBONE_3D = "resnet3d_narrow_test"


def register_narrow_backbone_3d() -> str:
    """Register :data:`NARROW_BACKBONE_3D` (``spatial_dims=3``) through the registry (idempotent)."""
    from functools import partial

    from napari_segrep.engine.backbones import BACKBONES, register_backbone
    from napari_segrep.engine.backbones.resnet3d import MaskedResNet3d

    if NARROW_BACKBONE_3D not in BACKBONES:
        register_backbone(
            NARROW_BACKBONE_3D, partial(MaskedResNet3d, [1, 1, 1, 1], width=8), spatial_dims=3
        )
    return NARROW_BACKBONE_3D


@pytest.fixture(scope="session")
def narrow_backbone_3d() -> str:
    """The name of the narrow 3D test ResNet, registered; ``SegmentEncoder(narrow_backbone_3d)``
    takes (B, C, D, H, W) crops."""
    return register_narrow_backbone_3d()


@pytest.fixture(scope="session")
def narrow_encoder_3d(narrow_backbone_3d):
    """A 1-channel dual-masked encoder on the narrow 3D test ResNet, eval mode (64-d)."""
    from napari_segrep import SegmentEncoder

    return SegmentEncoder(narrow_backbone_3d, in_channels=1, seed=0).eval()


def blob_masks_3d(b, size, seed=0):
    """(b, 1, size, size, size) bool Tensor: one random ellipsoid per crop, well inside it."""
    import torch

    g = torch.Generator().manual_seed(seed)
    zz, yy, xx = torch.meshgrid(*(torch.arange(size),) * 3, indexing="ij")
    masks = torch.zeros(b, 1, size, size, size, dtype=torch.bool)
    for i in range(b):
        cz, cy, cx = torch.randint(size // 4, 3 * size // 4, (3,), generator=g).tolist()
        rz, ry, rx = (torch.randint(2, max(3, size // 4), (3,), generator=g) + 0.5).tolist()
        inside = ((zz - cz) / rz) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        masks[i, 0] = inside
    return masks


@pytest.fixture()
def weights_server():
    """A local HTTP server on 127.0.0.1 standing in for download.pytorch.org (see
    tests/weights_server.py); stopped afterwards."""
    from .weights_server import WeightsServer

    server = WeightsServer().start()
    yield server
    server.stop()


@pytest.fixture()
def weights_cache(tmp_path, monkeypatch):
    """The torch cache in a fresh folder (TORCH_HOME), no mirror, no proxy for 127.0.0.1;
    returns the folder the ImageNet weights go to (``<TORCH_HOME>/hub/checkpoints``)."""
    from .weights_server import use_temporary_torch_cache

    return use_temporary_torch_cache(tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def stand_in() -> bytes:
    """The bytes of a small real state dict, served (and published) as torchvision's ResNet-18
    weights file in the download tests."""
    from .weights_server import state_dict_bytes

    return state_dict_bytes()
