"""The backbones, as facts: one catalogue, standard library only.

Everything that needs to know what a backbone is reads it here: the engine's registry
(:mod:`napari_segrep.engine.backbones` builds each entry from the module it names), the CLI's
``--backbone`` choices and ``weights list/download``, the widgets' pickers and download buttons,
and :mod:`napari_segrep.weights` (where a weight set's file lies, its size, SHA-256 and licence).
Importing it costs nothing (no torch, no timm): napari's GUI thread and ``napari-segrep --help``
ask it freely.

Adding a backbone is one new file in ``engine/backbones/`` with a builder
``build(*, in_channels, seed) -> nn.Module`` and one :class:`Backbone` entry below naming it.

Examples
--------
>>> from napari_segrep.catalogue import get_entry, weight_set
>>> entry = get_entry("vit_small_patch14_reg4_dinov2")
>>> entry.embedding_dim, entry.patch_size, entry.default_crop
(384, 14, 112)
>>> ws = weight_set("vit_small_patch14_reg4_dinov2", "dinov2")
>>> ws.licence, ws.filename
('Apache-2.0', 'dinov2_vits14_reg4_pretrain.pth')
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "BY_NAME",
    "CATALOGUE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LABELS",
    "TORCHVISION_URL",
    "Backbone",
    "WeightSet",
    "backbone_choices",
    "digits_in_name",
    "download_command",
    "get_entry",
    "label_of",
    "weight_set",
    "weight_set_names",
    "weights_backbones",
]

#: RGB mean and std of ImageNet, which torchvision's and DINOv2's weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class WeightSet:
    """One published file of pretrained weights for a backbone.

    Attributes
    ----------
    name : str
        What users call it: ``"imagenet"``, ``"dinov2"`` (``weights="dinov2"``,
        ``napari-segrep weights download dinov2``).
    filename : str
        Its name in the torch hub cache (``$TORCH_HOME/hub/checkpoints``), where
        ``torch.hub`` would put it too.
    url : str
        Where its publisher serves it.
    size : int or None
        Its size in bytes; None where the publisher does not say (then ``approx_size`` is shown
        and a download is capped by :data:`napari_segrep.weights.UNKNOWN_SIZE_LIMIT`).
    sha256 : str or None
        Its SHA-256, in full or its first hex digits; None where the publisher gives none (the
        download is then checked by loading it into the backbone, and its SHA-256 is shown).
    licence : str
    publisher : str
        Who publishes it (for the question asked before a download).
    fmt : str
        The layout of its state dict, passed to the backbone's ``load_pretrained_state``:
        ``"torchvision"`` or ``"dinov2"`` (Meta's original keys).
    mean, std : tuple of float
        The RGB statistics the weights expect their input standardised with.
    approx_size : int
        About how many bytes (for people and for a cap when ``size`` is None).
    """

    name: str
    filename: str
    url: str
    size: int | None
    sha256: str | None
    licence: str
    publisher: str
    fmt: str = "torchvision"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    approx_size: int = 0

    @property
    def label(self) -> str:
        """``"ImageNet"``, ``"DINOv2"``: the name in messages and buttons."""
        return label_of(self.name)


@dataclass(frozen=True)
class Backbone:
    """What one backbone is, without building it.

    Attributes
    ----------
    name : str
        Its name (``SegmentEncoder(name)``, ``--backbone NAME``).
    builder : str
        ``"module:function"`` (relative to ``napari_segrep.engine.backbones``): a function of
        the name returning ``build(*, in_channels, seed) -> nn.Module``.
    spatial_dims : int
        2: embeds 2D crops; 3: volumes.
    embedding_dim : int
        The size of its embedding.
    patch_size : int
        Crops are padded to a multiple of this (a ViT's patch; 1: any size).
    default_crop : int
        The crop side ``crop_size=None`` means for it.
    feature_map : bool
        It has one last feature map before pooling (what the pretext objectives' decoder reads).
    weights : tuple of WeightSet
        Its pretrained weights, the default first (``weights="auto"`` picks it when present).
    requires : tuple of str
        The packages beyond torch/torchvision it needs (``"timm"``).
    summary : str
        One line for pickers and ``--help``.
    """

    name: str
    builder: str
    spatial_dims: int
    embedding_dim: int
    patch_size: int
    default_crop: int
    feature_map: bool = True
    weights: tuple[WeightSet, ...] = ()
    requires: tuple[str, ...] = ()
    summary: str = ""

    @property
    def weight_names(self) -> tuple[str, ...]:
        return tuple(ws.name for ws in self.weights)


#: Where torchvision publishes its weights.
TORCHVISION_URL = "https://download.pytorch.org/models/"

#: A weight set's name -> how messages and buttons call it.
LABELS = {"imagenet": "ImageNet", "dinov2": "DINOv2"}


def label_of(weights: str) -> str:
    """``"imagenet"`` -> ``"ImageNet"`` (a name without a label: itself)."""
    return LABELS.get(weights, weights)


def digits_in_name(filename: str) -> str | None:
    """The first hex digits of a file's SHA-256 that its name carries, torch.hub's convention
    (``resnet18-f37072fd.pth`` -> ``"f37072fd"``); None when it carries none."""
    match = re.search(r"-([a-f0-9]+)\.", filename)
    return match.group(1) if match else None


def _imagenet(filename: str, size: int) -> WeightSet:
    """torchvision's IMAGENET1K_V1 file (its name carries the first hex digits of its SHA-256)."""
    return WeightSet(
        "imagenet",
        filename,
        TORCHVISION_URL + filename,
        size,
        digits_in_name(filename),
        "BSD-3-Clause",
        "torchvision",
        approx_size=size,
    )


_R18 = _imagenet("resnet18-f37072fd.pth", 46_830_571)
_R34 = _imagenet("resnet34-b627a593.pth", 87_319_819)
_R50 = _imagenet("resnet50-0676ba61.pth", 102_530_333)

#: Meta's DINOv2 ViT-S/14 with 4 registers (LVD-142M).  Meta publishes neither its size nor
#: its SHA-256 beside the file, and this project's machines cannot download it to learn them:
#: a download is checked by loading it into the backbone (every tensor, every shape).
_DINOV2_S14_REG4 = WeightSet(
    "dinov2",
    "dinov2_vits14_reg4_pretrain.pth",
    "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth",
    None,
    None,
    "Apache-2.0",
    "Meta AI (DINOv2)",
    fmt="dinov2",
    approx_size=88_300_000,  # ViT-S/14 + registers: 22.06 M float32 values
)

#: Every backbone, in the order pickers show them: 2D first, then volumes.
CATALOGUE: tuple[Backbone, ...] = (
    Backbone("resnet18", "resnet:resnet_builder", 2, 512, 1, 64, weights=(_R18,),
             summary="ResNet-18 (2D), the default: fast on CPU"),
    Backbone("resnet34", "resnet:resnet_builder", 2, 512, 1, 64, weights=(_R34,),
             summary="ResNet-34 (2D)"),
    Backbone("resnet50", "resnet:resnet_builder", 2, 2048, 1, 64, weights=(_R50,),
             summary="ResNet-50 (2D)"),
    Backbone("vit_tiny_patch16_224", "vit:vit_builder", 2, 192, 16, 112, requires=("timm",),
             summary="ViT-Tiny/16 (2D, timm): masked attention"),
    Backbone("vit_small_patch16_224", "vit:vit_builder", 2, 384, 16, 112, requires=("timm",),
             summary="ViT-Small/16 (2D, timm): masked attention"),
    Backbone("vit_small_patch14_reg4_dinov2", "vit:vit_builder", 2, 384, 14, 112,
             weights=(_DINOV2_S14_REG4,), requires=("timm",),
             summary="ViT-Small/14 with registers (2D, timm): DINOv2's, weights on request"),
    Backbone("resnet18_3d", "resnet3d:resnet3d_builder", 3, 512, 1, 32, weights=(_R18,),
             summary="ResNet-18 in 3D (ImageNet weights inflated)"),
    Backbone("resnet34_3d", "resnet3d:resnet3d_builder", 3, 512, 1, 32, weights=(_R34,),
             summary="ResNet-34 in 3D (ImageNet weights inflated)"),
    Backbone("resnet18_planes", "planes:planes_builder", 3, 1536, 1, 32, feature_map=False,
             weights=(_R18,), summary="ResNet-18 on three orthogonal planes (fast 3D on CPU)"),
    Backbone("resnet18_slices", "planes:planes_builder", 3, 512, 1, 32, feature_map=False,
             weights=(_R18,), summary="ResNet-18 on every z-slice (3D)"),
)  # fmt: skip

#: name -> :class:`Backbone`.
BY_NAME = {entry.name: entry for entry in CATALOGUE}


def backbone_choices(spatial_dims: int | None = None) -> list[str]:
    """The catalogue's backbone names in its order (only those of ``spatial_dims`` if given)."""
    return [e.name for e in CATALOGUE if spatial_dims in (None, e.spatial_dims)]


def get_entry(name: str) -> Backbone:
    """The catalogue entry ``name``; ``ValueError`` naming the choices."""
    try:
        return BY_NAME[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown backbone {name!r}; choose one of {', '.join(backbone_choices())}"
        ) from None


def weight_set(backbone: str, name: str) -> WeightSet:
    """``backbone``'s weight set ``name``; ``ValueError`` naming those it has."""
    entry = get_entry(backbone)
    for ws in entry.weights:
        if ws.name == name:
            return ws
    have = ", ".join(entry.weight_names) or "none"
    offer = weights_backbones(name)
    hint = f" ({name} weights: --backbone {' or '.join(offer)})" if offer else ""
    raise ValueError(
        f"backbone {backbone} has no {name!r} weights (it has: {have}){hint}; use weights=None "
        "for an untrained encoder"
    )


def weight_set_names() -> list[str]:
    """Every weight set's name, in catalogue order (``imagenet``, ``dinov2``)."""
    names: list[str] = []
    for entry in CATALOGUE:
        names += [n for n in entry.weight_names if n not in names]
    return names


def weights_backbones(name: str) -> list[str]:
    """The backbones that have a weight set ``name`` (the 2D ones first)."""
    return [e.name for e in CATALOGUE if name in e.weight_names]


def download_command(backbone: str = "resnet18", weights: str = "imagenet") -> str:
    """The command line that downloads ``backbone``'s weight set ``weights`` (for messages):
    ``--backbone`` only when it is not the set's first backbone."""
    first = (weights_backbones(weights) or [backbone])[0]
    extra = "" if backbone == first else f" --backbone {backbone}"
    return f"napari-segrep weights download {weights}{extra}"


def published_files() -> dict[str, tuple[WeightSet, list[str]]]:
    """Each distinct published file (by file name) -> its weight set and the backbones that
    read it (the 3D ResNets and the plane modes read their 2D ResNet's file)."""
    files: dict[str, tuple[WeightSet, list[str]]] = {}
    for entry in CATALOGUE:
        for ws in entry.weights:
            files.setdefault(ws.filename, (ws, []))[1].append(entry.name)
    return files
