"""The device check blames whoever asked for the device (issue 16, item 7)."""

from __future__ import annotations

import pytest
import torch

from advbench.devices import resolve_device
from advbench.errors import AdvbenchError


def test_cuda_without_cuda_names_the_origin(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(AdvbenchError, match=r"^suites/x.yaml: device cuda: CUDA is not available"):
        resolve_device("cuda", "suites/x.yaml: device")
    with pytest.raises(AdvbenchError, match=r"^--device cuda: "):
        resolve_device("cuda", "--device")
    assert resolve_device("auto", "--device") == torch.device("cpu")
    assert resolve_device("cpu", "x") == torch.device("cpu")


def test_cuda_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda" and resolve_device("cpu").type == "cpu"


def test_an_unknown_device_is_one_line():
    with pytest.raises(AdvbenchError, match="allowed: auto, cpu, cuda"):
        resolve_device("tpu", "suites/x.yaml: device")
