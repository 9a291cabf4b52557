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

Built in: torchvision's ``resnet18``, ``resnet34``, ``resnet50`` (2D, :mod:`.resnet`) and their
native 3D counterparts ``resnet18_3d``, ``resnet34_3d`` (:mod:`.resnet3d`, which read the 2D
ImageNet file and inflate it); the fast CPU modes for volumes ``resnet18_planes`` and
``resnet18_slices`` (:mod:`.planes`: resnet18's 2D network on three orthogonal planes, or on the
z-slices, of a 3D crop; resnet18's ImageNet file as it is); timm's Vision Transformers
``vit_tiny_patch16_224``, ``vit_small_patch16_224`` and ``vit_small_patch14_reg4_dinov2``
(:mod:`.vit`: masked attention and in-segment pooling; timm is imported when one is built).

:class:`~napari_segrep.engine.encoder.SegmentEncoder` builds backbones by name with
:func:`build_backbone` and knows nothing else about them.  A new backbone (ViT, 3D...) is a new
file in this package with a builder ``build(*, in_channels, seed)``, registered by name with
:func:`register_backbone`.

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

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "BACKBONES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BackboneSpec",
    "backbone_names",
    "build_backbone",
    "get_backbone",
    "imagenet_cache_path",
    "load_imagenet_weights",
    "register_backbone",
    "unregister_backbone",
]

#: RGB mean and std of ImageNet, which torchvision's ImageNet weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
        torchvision's download URL of the backbone's ImageNet weights: its file name finds
        the file in the local torch hub cache; it is downloaded only when the user asks
        (:func:`napari_segrep.weights.download_weights`).
        ``None``: no ImageNet weights.
    imagenet_mean, imagenet_std : tuple of float
        RGB statistics the ImageNet weights expect their input standardised with.
    spatial_dims : int
        2: the backbone embeds 2D crops ``(B, C, H, W)``; 3: volumes ``(B, C, D, H, W)``.
    feature_map : bool
        The backbone has one last feature map before pooling, ``feature_map(x, mask) ->
        (features, mask grid)`` (what a decoder of the pretext objectives reads); False for
        the plane/slice backbones, whose embedding pools several 2D maps.
    """

    name: str
    build: Callable[..., nn.Module]
    imagenet_url: str | None = None
    imagenet_mean: tuple[float, ...] = IMAGENET_MEAN
    imagenet_std: tuple[float, ...] = IMAGENET_STD
    spatial_dims: int = 2
    feature_map: bool = True


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
) -> BackboneSpec:
    """Make ``SegmentEncoder(backbone=name)`` build its backbone with ``build``.

    Parameters
    ----------
    name : str
    build : callable(*, in_channels: int, seed: int) -> nn.Module
    imagenet_url, imagenet_mean, imagenet_std, spatial_dims, feature_map
        See :class:`BackboneSpec`.
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
    spec = BackboneSpec(
        name,
        build,
        imagenet_url,
        tuple(map(float, imagenet_mean)),
        tuple(map(float, imagenet_std)),
        int(spatial_dims),
        bool(feature_map),
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


def imagenet_cache_path(name: str) -> Path:
    """Where torchvision's ImageNet weights for backbone ``name`` must lie (the torch hub cache)."""
    spec = get_backbone(name)
    if spec.imagenet_url is None:
        raise ValueError(f"backbone {name!r} has no ImageNet weights; use weights=None")
    filename = os.path.basename(spec.imagenet_url)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def load_imagenet_weights(backbone: nn.Module, name: str) -> tuple[Tensor, Tensor]:
    """Load the ImageNet weights of backbone ``name`` from the local torch hub cache into
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
    path = imagenet_cache_path(name)
    source = _imagenet_source(spec)
    extra = "" if source == "resnet18" else f" --backbone {source}"
    built_from = "" if source == name else f", which {name} is built from"
    if not path.is_file():
        raise FileNotFoundError(
            f"ImageNet weights for {name} are not in the local torch cache: download them "
            f"with `napari-segrep weights download imagenet{extra}` (or the 'Download ImageNet "
            f"weights' button in Embed segments), or copy the file {path.name} (torchvision's "
            f"{source} IMAGENET1K_V1 weights{built_from}) from a machine with internet to "
            f"{path}; or use weights=None."
        )
    fix = (
        f"download it again with `napari-segrep weights download imagenet{extra} --force`, or "
        f"copy torchvision's {path.name} there again from a machine with internet"
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
        raise ValueError(f"the ImageNet weights file {path} is damaged ({what}): {fix}") from None
    try:
        if not isinstance(state, dict):
            raise ValueError(f"it holds a {type(state).__name__}, not a dict of tensors")
        backbone.load_imagenet_state(state)
    except (ValueError, KeyError, RuntimeError) as exc:  # other keys, other shapes
        text = f"no {exc.args[0]!r}" if isinstance(exc, KeyError) and exc.args else str(exc)
        reason = " ".join(text.split())[:200]
        raise ValueError(f"{path} does not hold {source} weights ({reason}): {fix}") from None
    return torch.tensor(spec.imagenet_mean), torch.tensor(spec.imagenet_std)


def _imagenet_source(spec: BackboneSpec) -> str:
    """The backbone whose ImageNet file ``spec`` reads: itself, or for a 3D backbone the 2D
    backbone registered with the same file (resnet18 for resnet18_3d: the file it inflates)."""
    if spec.spatial_dims == 3:
        for other in BACKBONES.values():
            if other.spatial_dims == 2 and other.imagenet_url == spec.imagenet_url:
                return other.name
    return spec.name


def _register_builtin_backbones() -> None:
    from . import planes, resnet, resnet3d, vit

    for name in resnet.RESNETS:
        register_backbone(name, resnet.resnet_builder(name), imagenet_url=resnet.imagenet_url(name))
    for name in resnet3d.RESNETS_3D:  # inflate the 2D ResNet's ImageNet file (same cache path)
        url = resnet.imagenet_url(resnet3d.imagenet_source(name))
        register_backbone(name, resnet3d.resnet3d_builder(name), imagenet_url=url, spatial_dims=3)
    # the fast CPU modes for volumes: resnet18's 2D network on three planes or on the z-slices
    # of a 3D crop (they read resnet18's ImageNet file as it is)
    for name, build in (
        ("resnet18_planes", planes.build_resnet18_planes),
        ("resnet18_slices", planes.build_resnet18_slices),
    ):
        register_backbone(
            name, build, imagenet_url=planes.IMAGENET_URL, spatial_dims=3, feature_map=False
        )
    # masked timm ViTs (timm is imported when one is built, not here)
    for name, facts in vit.VITS.items():
        register_backbone(
            name, vit.vit_builder(name), imagenet_mean=facts.mean, imagenet_std=facts.std
        )


_register_builtin_backbones()
