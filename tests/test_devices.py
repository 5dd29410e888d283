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


# ---------------------------------------------------------------------- batch_size: auto


@pytest.mark.parametrize("limit, expected", [(0, 0), (1, 1), (3, 2), (128, 128), (300, 256), (4096, 4096),
                                             (10**6, 4096)])
def test_auto_batch_is_the_largest_power_of_two_that_fits_up_to_the_cap(limit, expected):
    from advbench.devices import largest_fitting

    tried: list[int] = []

    def fits(n: int) -> bool:  # a GPU that holds batches up to ``limit``
        tried.append(n)
        return n <= limit

    assert largest_fitting(fits) == expected
    # doubling from 1, and no try after the first batch that did not fit
    assert tried == [2 ** i for i in range(len(tried))] and all(n <= limit for n in tried[:-1])
    assert largest_fitting(lambda n: n <= limit, cap=64) == min(expected, 64)


def test_the_probe_runs_forward_and_backward_and_counts_out_of_memory_as_not_fitting():
    from advbench.devices import fits_forward_backward, largest_fitting

    class Capped(torch.nn.Module):
        """A model whose forward runs out of (pretend) GPU memory above 24 images."""

        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(12, 3)
            self.sizes: list[int] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.sizes.append(len(x))
            if len(x) > 24:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (pretend)")
            return self.linear(x.flatten(1))

    model = Capped()
    probe = fits_forward_backward(model, (3, 2, 2), torch.device("cpu"))
    assert probe(8) and model.linear.weight.grad is None  # ran, and its gradients were freed
    assert not probe(32)
    assert largest_fitting(probe) == 16

    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):  # only running out of memory means "does not fit"
        fits_forward_backward(Broken(), (3, 2, 2), torch.device("cpu"))(1)
