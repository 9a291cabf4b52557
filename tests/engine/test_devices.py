"""Device choice: resolve_device and available_devices."""

from __future__ import annotations

import pytest
import torch

import napari_segrep as sr
from napari_segrep.engine.devices import available_devices, resolve_device


def test_resolve_device__names():
    assert sr.resolve_device("cpu") == torch.device("cpu")
    assert sr.resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            sr.resolve_device("gpu")


def test_resolve_device__a_device_passes_through_and_bad_names_are_named():
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="not a device name"):
        resolve_device("tpu")


def test_available_devices__cpu_first_and_each_one_resolves():
    devices = available_devices()
    assert devices[0] == "cpu"
    assert all(isinstance(resolve_device(name), torch.device) for name in devices)
