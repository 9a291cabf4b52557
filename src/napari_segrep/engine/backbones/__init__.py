"""Backbones by name: one small registry.

A backbone is an ``nn.Module`` that embeds a batch of (standardised, possibly image-masked)
crops, each seen through its mask:

- ``embedding_dim`` : int, the size of the pooled output;
- ``forward(x, mask)`` : ``x`` (B, C, *S) float, ``mask`` (B, 1, *S) 0/1 Tensor of ``x``'s
  dtype, or ``None`` for no feature masking -> (B, embedding_dim); ``S`` is ``(H, W)`` for a
  2D backbone, ``(D, H, W)`` for a 3D one (its registration's ``spatial_dims``);
- ``load_imagenet_state(state)`` (only for backbones registered with ImageNet weights): load a
  torchvision state dict, adapting the input layer to the module's channels (a 3D backbone
  inflates the 2D kernels); ``ValueError`` when the state does not fit;
- optional: ``feature_stride`` (int, the stride of ``feature_map``'s grid when it is not 32: the
  pretext objectives' decoder sizes itself by it) and ``param_groups(lr, weight_decay, *,
  layer_decay)`` (the optimiser's groups, used by the trainer instead of its default split:
  :func:`napari_segrep.engine.optim.encoder_param_groups`).

- ``load_pretrained_state(state, fmt)`` (a backbone with other weight sets than torchvision's,
  e.g. the ViTs' ``fmt="dinov2"``): the same for the state dict layout ``fmt``.

Built in: every entry of :mod:`napari_segrep.catalogue` (the facts: dims, embedding size, crop,
weight sets), each built by the module the entry names: torchvision's ``resnet18``,
``resnet34``, ``resnet50`` (2D, :mod:`.resnet`) and their native 3D counterparts ``resnet18_3d``,
``resnet34_3d`` (:mod:`.resnet3d`, which read the 2D ImageNet file and inflate it); the fast CPU
modes for volumes ``resnet18_planes`` and ``resnet18_slices`` (:mod:`.planes`); the masked ViTs
``vit_tiny_patch16_224``, ``vit_small_patch16_224``, ``vit_small_patch14_reg4_dinov2``
(:mod:`.vit`, timm, imported when one is built).

:class:`~napari_segrep.engine.encoder.SegmentEncoder` builds backbones by name with
:func:`build_backbone` and knows nothing else about them.  A new built-in backbone is a new file
in this package with a builder ``build(*, in_channels, seed)`` and one catalogue entry; a
plugin's (or a test's) is registered by name with :func:`register_backbone`.

Examples
--------
>>> from functools import partial
>>> from torchvision.models.resnet import BasicBlock
>>> from napari_segrep.engine.backbones import (
...     build_backbone, register_backbone, unregister_backbone)
>>> from napari_segrep.engine.backbones.resnet import MaskedResNet
>>> _ = register_backbone("resnet10_narrow", partial(MaskedResNet, BasicBlock, [1, 1, 1, 1],
...                       width=8))
>>> build_backbone("resnet10_narrow", in_channels=1, seed=0).embedding_dim
64
>>> unregister_backbone("resnet10_narrow")
"""

from __future__ import annotations

import importlib
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ...catalogue import CATALOGUE, IMAGENET_MEAN, IMAGENET_STD, WeightSet, digits_in_name
from ...catalogue import Backbone as CatalogueEntry

__all__ = [
    "BACKBONES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BackboneSpec",
    "backbone_names",
    "build_backbone",
    "check_weights_fit",
    "get_backbone",
    "imagenet_cache_path",
    "load_imagenet_weights",
    "load_pretrained_weights",
    "pretrained_cache_path",
    "register_backbone",
    "unregister_backbone",
]


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one registered backbone.

    Attributes
    ----------
    name : str
    build : callable(*, in_channels: int, seed: int) -> nn.Module
        A new backbone (see the module docstring), randomly initialised from ``seed`` without
        touching the global random generator.
    imagenet_url : str or None
        torchvision's download URL of the backbone's ImageNet weights (its ``"imagenet"``
        weight set's URL): its file name finds the file in the local torch hub cache; it is
        downloaded only when the user asks (:func:`napari_segrep.weights.download_weights`).
        ``None``: no ImageNet weights.
    imagenet_mean, imagenet_std : tuple of float
        RGB statistics the ImageNet weights expect their input standardised with.
    spatial_dims : int
        2: the backbone embeds 2D crops ``(B, C, H, W)``; 3: volumes ``(B, C, D, H, W)``.
    feature_map : bool
        The backbone has one last feature map before pooling, ``feature_map(x, mask) ->
        (features, mask grid)`` (what a decoder of the pretext objectives reads); False for
        the plane/slice backbones, whose embedding pools several 2D maps.
    weights : tuple of WeightSet
        Its pretrained weight sets (:class:`napari_segrep.catalogue.WeightSet`), the default
        first; a registration with an ``imagenet_url`` has one, ``"imagenet"``.
    default_crop : int or None
        The crop side ``crop_size=None`` means for it (None: the engine's default for its dims).
    """

    name: str
    build: Callable[..., nn.Module]
    imagenet_url: str | None = None
    imagenet_mean: tuple[float, ...] = IMAGENET_MEAN
    imagenet_std: tuple[float, ...] = IMAGENET_STD
    spatial_dims: int = 2
    feature_map: bool = True
    weights: tuple[WeightSet, ...] = ()
    default_crop: int | None = None

    def weight_set(self, name: str) -> WeightSet:
        """The weight set ``name``; ``ValueError`` naming those there are."""
        for ws in self.weights:
            if ws.name == name:
                return ws
        if name == "imagenet":
            raise ValueError(f"backbone {self.name!r} has no ImageNet weights; use weights=None")
        have = ", ".join(ws.name for ws in self.weights) or "none"
        raise ValueError(
            f"backbone {self.name!r} has no {name!r} weights (it has: {have}); use weights=None"
        )


#: name -> :class:`BackboneSpec`, in registration order.
BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(
    name: str,
    build: Callable[..., nn.Module],
    *,
    imagenet_url: str | None = None,
    imagenet_mean: Sequence[float] = IMAGENET_MEAN,
    imagenet_std: Sequence[float] = IMAGENET_STD,
    spatial_dims: int = 2,
    overwrite: bool = False,
    feature_map: bool = True,
    weights: Sequence[WeightSet] = (),
    default_crop: int | None = None,
) -> BackboneSpec:
    """Make ``SegmentEncoder(backbone=name)`` build its backbone with ``build``.

    Parameters
    ----------
    name : str
    build : callable(*, in_channels: int, seed: int) -> nn.Module
    imagenet_url, imagenet_mean, imagenet_std, spatial_dims, feature_map, weights, default_crop
        See :class:`BackboneSpec`.  An ``imagenet_url`` without an ``"imagenet"`` weight set
        makes one (torchvision's file: size unknown, SHA-256 from the digits in its name).
    overwrite : bool
        Replace an existing registration (otherwise a ``ValueError``).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a backbone name must be a non-empty string, got {name!r}")
    if not callable(build):
        raise TypeError(f"build must be callable, got {type(build).__name__}")
    if name in BACKBONES and not overwrite:
        raise ValueError(f"backbone {name!r} is already registered (pass overwrite=True)")
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    sets = tuple(weights)
    mean, std = tuple(map(float, imagenet_mean)), tuple(map(float, imagenet_std))
    if imagenet_url is not None and not any(ws.name == "imagenet" for ws in sets):
        filename = os.path.basename(imagenet_url)
        sets = (
            WeightSet(
                "imagenet",
                filename,
                imagenet_url,
                None,
                digits_in_name(filename),
                "see the publisher",
                "torchvision",
                mean=mean,
                std=std,
            ),
        ) + sets
    if imagenet_url is None:
        imagenet_url = next((ws.url for ws in sets if ws.name == "imagenet"), None)
    spec = BackboneSpec(
        name,
        build,
        imagenet_url,
        mean,
        std,
        int(spatial_dims),
        bool(feature_map),
        sets,
        default_crop,
    )
    BACKBONES[name] = spec
    return spec


def unregister_backbone(name: str) -> None:
    """Remove a registered backbone (tests, plugins)."""
    get_backbone(name)
    del BACKBONES[name]


def backbone_names() -> list[str]:
    """Names of the registered backbones, sorted."""
    return sorted(BACKBONES)


def get_backbone(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` registered as ``name``; ``ValueError`` naming the choices."""
    try:
        return BACKBONES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown backbone {name!r}; choose one of {backbone_names()}") from None


def build_backbone(name: str, *, in_channels: int = 3, seed: int = 0) -> nn.Module:
    """A new backbone ``name`` for ``in_channels`` input channels, initialised from ``seed``."""
    return get_backbone(name).build(in_channels=in_channels, seed=seed)


def pretrained_cache_path(name: str, weights: str = "imagenet") -> Path:
    """Where backbone ``name``'s weight set ``weights`` must lie (the torch hub cache)."""
    filename = get_backbone(name).weight_set(weights).filename
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def imagenet_cache_path(name: str) -> Path:
    """Where torchvision's ImageNet weights for backbone ``name`` must lie (the torch hub cache)."""
    return pretrained_cache_path(name, "imagenet")


def load_imagenet_weights(backbone: nn.Module, name: str) -> tuple[Tensor, Tensor]:
    """:func:`load_pretrained_weights` of the ``"imagenet"`` set."""
    return load_pretrained_weights(backbone, name, "imagenet")


def load_pretrained_weights(
    backbone: nn.Module, name: str, weights: str = "imagenet"
) -> tuple[Tensor, Tensor]:
    """Load backbone ``name``'s weight set ``weights`` from the local torch hub cache into
    ``backbone`` (built by :func:`build_backbone`); return the RGB ``(mean, std)`` they expect.

    Raises
    ------
    FileNotFoundError
        The weights are not in the cache (the message says where to put them).
    ValueError
        The file is damaged (it does not load) or does not hold weights for this backbone (the
        message names the file and the fix).
    """
    spec = get_backbone(name)
    ws = spec.weight_set(weights)
    path = pretrained_cache_path(name, weights)
    source = _weights_source(spec, ws)
    command = _download_command(source, ws)
    built_from = "" if source == name else f", which {name} is built from"
    edition = "IMAGENET1K_V1" if ws.publisher == "torchvision" else ws.label
    if not path.is_file():
        raise FileNotFoundError(
            f"{ws.label} weights for {name} are not in the local torch cache: download them "
            f"with `{command}` (or the 'Download {ws.label} weights' button in Embed segments), "
            f"or copy the file {path.name} ({ws.publisher}'s {source} {edition} "
            f"weights{built_from}) from a machine with internet to {path}; or use weights=None."
        )
    fix = (
        f"download it again with `{command} --force`, or copy {ws.publisher}'s {path.name} "
        "there again from a machine with internet"
    )
    try:  # never a pickle: weights_only
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, empty, a web page...: damaged
        # (torch's own message advises weights_only=False, which could run code: never shown)
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = (
            f"it holds pickled Python objects ({found.group(1)}), never loaded: they could run code"
            if found
            else "it is not a whole torch file: cut short, empty, or another file"
        )
        raise ValueError(f"the {ws.label} weights file {path} is damaged ({what}): {fix}") from None
    try:
        load_state_into(backbone, state, ws)
    except (ValueError, KeyError, RuntimeError) as exc:  # other keys, other shapes
        text = f"no {exc.args[0]!r}" if isinstance(exc, KeyError) and exc.args else str(exc)
        reason = " ".join(text.split())[:200]
        raise ValueError(f"{path} does not hold {source} weights ({reason}): {fix}") from None
    return torch.tensor(ws.mean), torch.tensor(ws.std)


def load_state_into(backbone: nn.Module, state: object, ws: WeightSet) -> None:
    """Load the state dict of weight set ``ws`` into ``backbone``: its
    ``load_pretrained_state(state, fmt)`` when it has one, else (torchvision's layout)
    ``load_imagenet_state(state)``.  ``ValueError``/``KeyError``/``RuntimeError`` when it does
    not fit."""
    if not isinstance(state, dict):
        raise ValueError(f"it holds a {type(state).__name__}, not a dict of tensors")
    loader = getattr(backbone, "load_pretrained_state", None)
    if loader is not None:
        loader(state, ws.fmt)
    elif ws.fmt == "torchvision":
        backbone.load_imagenet_state(state)
    else:
        raise ValueError(f"this backbone cannot read {ws.fmt!r} weights")


def check_weights_fit(state: dict, name: str, weights: str, *, source: str) -> None:
    """That ``state`` (a loaded file) holds backbone ``name``'s weight set ``weights``: it
    loads into the backbone, every tensor and shape (built on torch's meta device: no memory,
    no time).  ``ValueError`` naming ``source`` otherwise (a download whose publisher gives no
    SHA-256 is checked so)."""
    ws = get_backbone(name).weight_set(weights)
    with torch.device("meta"):
        backbone = build_backbone(name, in_channels=3)
    try:
        with warnings.catch_warnings():  # "copying into a meta parameter is a no-op": meant
            warnings.simplefilter("ignore", UserWarning)
            load_state_into(backbone, state, ws)
    except (ValueError, KeyError, RuntimeError) as exc:
        text = f"no {exc.args[0]!r}" if isinstance(exc, KeyError) and exc.args else str(exc)
        raise ValueError(
            f"what {source} sent is not {ws.publisher}'s {ws.label} weights for {name} "
            f"({' '.join(text.split())[:200]}); nothing was written"
        ) from None


def _weights_source(spec: BackboneSpec, ws: WeightSet) -> str:
    """The backbone whose weight file ``spec`` reads: itself, or for a 3D backbone the 2D
    backbone registered with the same file (resnet18 for resnet18_3d: the file it inflates)."""
    if spec.spatial_dims == 3:
        for other in BACKBONES.values():
            if other.spatial_dims == 2 and any(o.filename == ws.filename for o in other.weights):
                return other.name
    return spec.name


def _download_command(source: str, ws: WeightSet) -> str:
    from ...catalogue import download_command

    return download_command(source, ws.name)


def _lazy_builder(entry: CatalogueEntry) -> Callable[..., nn.Module]:
    """``build(*, in_channels, seed)`` for a catalogue entry: imports the module it names on
    the first build (a ViT's timm only when a ViT is built)."""
    module, function = entry.builder.split(":")

    def build(*, in_channels: int = 3, seed: int = 0) -> nn.Module:
        builder = getattr(importlib.import_module(f".{module}", __name__), function)
        return builder(entry.name)(in_channels=in_channels, seed=seed)

    build.__qualname__ = build.__name__ = f"build_{entry.name}"
    return build


def _register_builtin_backbones() -> None:
    for entry in CATALOGUE:
        register_backbone(
            entry.name,
            _lazy_builder(entry),
            spatial_dims=entry.spatial_dims,
            feature_map=entry.feature_map,
            weights=entry.weights,
            default_crop=entry.default_crop,
        )


_register_builtin_backbones()
