"""Helpers shared by the built-in interpreters (not a plugin; no class here is registered).

Conventions every interpreter here follows:
- the label explained is the victim's own prediction ``argmax f1(x)``, never the true label (there is none at
  test time, and an adversarial input must be explained as the victim sees it);
- gradients are taken under ``torch.enable_grad()`` so ``explain`` also works when the harness calls it inside
  ``torch.no_grad()`` (``torch.inference_mode()`` cannot be undone and is not supported);
- with ``ctx.differentiable`` a gradient-based map is returned by ``exact_map_surrogate_gradient``: its value is
  the map of the real victim, bit for bit the one computed without ``ctx.differentiable``, and its gradient w.r.t.
  x is that of the same map on a softplus surrogate of the victim (``softplus_surrogate``), taken by double
  backprop (``create_graph=True``, nothing detached). A ReLU victim's own gradient map is piecewise constant in
  x, so differentiating it exactly would mask the gradient an adaptive attacker needs;
- every sample's mask depends on that sample alone: maps are normalized per sample, and where noise is needed
  each sample gets its own generator, seeded from the run seed and a hash of the sample's bytes, so the mask
  is the same whether the sample is explained alone or inside any batch (see ``sample_generators``); on CUDA
  the hash and the noise are computed on the device instead (``SampleNoise``).
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from advbench.api import RunContext
from advbench.errors import AdvbenchError


class InterpreterError(AdvbenchError):
    """An interpreter cannot work with the given victim or state (the message says why and what to do)."""


def predicted_labels(victim: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """argmax f1(x): the label every interpreter explains."""
    with torch.no_grad():
        return victim(x).argmax(dim=1)


def input_gradient(victim: nn.Module, x: torch.Tensor, labels: torch.Tensor,
                   create_graph: bool = False) -> torch.Tensor:
    """d logit[label] / dx for each sample (the sum over the batch separates: no cross-sample terms).

    With ``create_graph`` the gradient stays a differentiable function of x (double backprop, for adaptive
    attacks through the map): x itself is differentiated, not a detached copy. For a piecewise-linear victim
    (ReLU, max-pooling) that second derivative is zero almost everywhere: exact, but it tells an attacker nothing,
    which is why the interpreters take it on ``softplus_surrogate`` (see ``exact_map_surrogate_gradient``).
    """
    with torch.enable_grad():
        if create_graph:
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
        else:
            xg = x.detach().clone().requires_grad_(True)
        logits = victim(xg)
        score = logits.gather(1, labels.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(score, xg, create_graph=create_graph)
    return grad if create_graph else grad.detach()


def chunked_gradient(victim: nn.Module, x: torch.Tensor, labels: torch.Tensor, chunk: int,
                     create_graph: bool = False) -> torch.Tensor:
    """``input_gradient`` over a large stack of inputs, ``chunk`` rows at a time (bounded memory)."""
    parts = [input_gradient(victim, x[i:i + chunk], labels[i:i + chunk], create_graph)
             for i in range(0, len(x), chunk)]
    return torch.cat(parts) if parts else torch.empty_like(x)


# The surrogate's softplus sharpness: softplus(z, beta) = log(1 + exp(beta z)) / beta lies within log(2) / beta of
# relu(z), and torch makes it exactly linear where beta z > 20. Dombrowski et al. (NeurIPS 2019) anneal beta; a
# fixed beta of 10 to 30 is common for [0, 1] inputs: sharp enough that the surrogate's map resembles the real one,
# smooth enough that its second derivative is not zero almost everywhere. On tests/test_adaptive.py's ReLU digits
# CNN a sign step down the surrogate's gradient lowered the real contrastive score most at 20 (of 5 to 100).
SURROGATE_BETA = 20.0


@contextmanager
def softplus_surrogate(victim: nn.Module, beta: float = SURROGATE_BETA) -> Iterator[None]:
    """Within the block, every ``nn.ReLU`` module of ``victim`` (``inplace`` or not) computes
    ``softplus(z, beta)`` instead; max-pooling and everything else, weights included, stay the victim's own
    (nothing is copied). The smooth surrogate gives a gradient map useful second derivatives (Dombrowski, Alber,
    Anders, Ackermann, Mueller and Kessel, "Explanations can be manipulated and geometry is to blame",
    NeurIPS 2019). Each module's own ``forward`` is back on exit, also when the block raises.

    Only modules can be swapped: a ReLU that the victim's ``forward`` calls as a function (``F.relu``,
    ``torch.relu``) stays a ReLU, and the map's gradient through it stays piecewise constant. The swap is on the
    shared victim, so nothing else may run it while the block is open (the harness explains one batch at a time).
    """
    relus = [module for module in victim.modules() if isinstance(module, nn.ReLU)]
    # an instance attribute shadows the class's forward; a module that already had one gets it back
    own_forwards = {module: vars(module).get("forward") for module in relus}

    def smooth(z: torch.Tensor) -> torch.Tensor:
        return F.softplus(z, beta=beta)

    try:
        for module in relus:
            module.forward = smooth
        yield
    finally:
        for module, own in own_forwards.items():
            if own is None:
                del module.forward
            else:
                module.forward = own


def exact_map_surrogate_gradient(saliency: Callable[[torch.Tensor, bool], torch.Tensor], victim: nn.Module,
                                 x: torch.Tensor, ctx: RunContext) -> torch.Tensor:
    """``saliency(x, differentiable)``, a gradient-based map of ``victim``, as an adaptive attacker differentiates it.

    Without ``ctx.differentiable``: ``saliency(x, False)``, nothing else. With it (BPDA-style, straight through):
    the value is ``saliency(x.detach(), False)`` on the real victim, the same numbers bit for bit, and the gradient
    w.r.t. x is that of ``saliency(x, True)`` computed inside ``softplus_surrogate(victim)``:
    ``exact + (smooth - smooth.detach())``. ``saliency`` must compute the victim's predicted labels outside
    (the surrogate's could differ), and with ``differentiable`` keep its graph back to x (double backprop).
    A victim without ``nn.ReLU`` modules (ELU, say) is its own surrogate: the gradient is then the exact one.
    """
    if not ctx.differentiable:
        return saliency(x, False)
    exact = saliency(x.detach(), False)  # detached: x's graph must reach the result through the surrogate only
    with softplus_surrogate(victim, SURROGATE_BETA):  # the constant read now, so a study may change it
        smooth = saliency(x, True)
    return exact + (smooth - smooth.detach())


def channel_max(m: torch.Tensor) -> torch.Tensor:
    """N x C x H x W -> N x 1 x H x W, the largest value over channels."""
    return m.amax(dim=1, keepdim=True)


def normalize_per_sample(m: torch.Tensor, percentile: Optional[float] = None) -> torch.Tensor:
    """Scale each sample's non-negative map into [0, 1] on its own.

    With ``percentile`` None the map is divided by its maximum; otherwise values above that percentile of the
    sample are clipped to it before dividing (SmoothGrad's visualization recipe, robust to a few huge pixels).
    An all-zero map stays all zero.
    """
    m = m.float().clamp_min(0)
    flat = m.reshape(len(m), -1)
    if percentile is None or percentile >= 100:
        top = flat.amax(dim=1)
    else:
        top = torch.quantile(flat, percentile / 100.0, dim=1)
    top = top.view(-1, *([1] * (m.dim() - 1)))
    out = torch.where(top > 0, m / top.clamp_min(torch.finfo(m.dtype).tiny), torch.zeros_like(m))
    return out.clamp(0.0, 1.0)


def sample_digest(sample: torch.Tensor) -> str:
    """A stable hash of one sample's values (float32 bytes, CPU), independent of the batch it came in."""
    data = sample.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:32]


def sample_generators(ctx: RunContext, x: torch.Tensor, *salt: object) -> list[torch.Generator]:
    """One CPU generator per sample, seeded from the run seed, ``salt`` and the sample's content hash.

    Noise drawn from these (then moved to the device) is deterministic for a ctx seed, identical on every
    device, and independent of which other samples share the batch.
    """
    return [ctx.generator(*salt, sample_digest(s)) for s in x]


def per_sample_noise(gens: list[torch.Generator], shape: tuple[int, ...], kind: str,
                     device: torch.device) -> torch.Tensor:
    """Stack one draw of ``shape`` per generator: "normal" (N(0, 1)) or "uniform" (U[0, 1))."""
    draw = torch.randn if kind == "normal" else torch.rand
    return torch.stack([draw(shape, generator=g) for g in gens]).to(device)


# ---------------------------------------------------------------------- the device path
# Hashing each sample on the host costs one device-to-host copy and sync per image, and drawing its noise from a
# CPU generator costs a host-to-device copy per draw. On an accelerator the per-sample noise is instead
# counter-based: a 32-bit integer hash of (the sample's content hash, the draw's number, the element's index),
# all tensor ops on the device, with no transfer and no sync. It keeps the properties the CPU path has
# (deterministic for a seed, each sample's noise independent of the rest of the batch) but not its numbers, so
# it is used only where it saves something: on CUDA. On the CPU the per-sample generators above stay the
# reference, bit for bit, so the CPU's cached results and reference reports stay valid.

_MASK32 = 0xFFFF_FFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2**32`` for x in [0, 2**32) held in int64, without overflowing int64 (two 16-bit halves of c)."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer hash (Wellons' "lowbias32") of int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def device_digests(x: torch.Tensor) -> torch.Tensor:
    """N x 2 int64 (two 32-bit lanes) hashing each sample's float32 values, on x's device, in one pass per batch.

    Each element's bit pattern is mixed with a key from its position and the results summed per sample (a
    position-keyed multiset hash: exact integer arithmetic, so any batch or device gives the same digest).
    """
    n = len(x)
    bits = x.detach().float().contiguous().view(torch.int32).reshape(n, -1).to(torch.int64) & _MASK32
    pos = torch.arange(bits.shape[1], device=x.device, dtype=torch.int64)
    lanes = []
    for key in (0x9E3779B9, 0x85EBCA6B):
        mixed = mix32(bits ^ mix32((pos + key) & _MASK32))
        total = mixed.sum(dim=1)                      # < 2**32 * elements: no int64 overflow below 2**31 elements
        lanes.append(mix32((total ^ (total >> 32)) & _MASK32))
    return torch.stack(lanes, dim=1)


class SampleNoise:
    """Per-sample noise for a batch, each sample's draws depending only on the run seed, ``salt``, the sample's
    content and how many draws came before (not on the rest of the batch).

    On the CPU (default there) each sample has a CPU generator seeded by a SHA-256 of its bytes
    (``sample_generators``): the reference numbers. On CUDA (default there; ``on_device`` forces either) the
    noise is counter-based on the device (``mix32`` of the sample's ``device_digests``, the draw's number and the
    element's index): no host round trip per image or per draw. The two paths give different numbers.
    """

    def __init__(self, ctx: RunContext, x: torch.Tensor, *salt: object, on_device: Optional[bool] = None) -> None:
        self.device = x.device
        self.on_device = x.device.type == "cuda" if on_device is None else on_device
        self.draws = 0
        if self.on_device:
            seed = ctx.derive_seed(*salt, "device-noise")
            keys = device_digests(x)
            self.keys = torch.stack([mix32(keys[:, 0] ^ (seed & _MASK32)),
                                     mix32(keys[:, 1] ^ ((seed >> 32) & _MASK32))], dim=1)
        else:
            self.gens = sample_generators(ctx, x, *salt)

    def draw(self, shape: tuple[int, ...], kind: str) -> torch.Tensor:
        """One draw of ``shape`` per sample (N x shape, float32 on x's device): "normal" or "uniform" [0, 1)."""
        if not self.on_device:
            return per_sample_noise(self.gens, shape, kind, self.device)
        self.draws += 1
        numel = 1
        for size in shape:
            numel *= int(size)
        if kind == "normal":
            u1, u2 = self._uniform(2 * numel).view(len(self.keys), 2, numel).unbind(1)
            # Box-Muller; 1 - u1 lies in (0, 1], so the log is finite
            out = torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos((2.0 * torch.pi) * u2)
        else:
            out = self._uniform(numel)
        return out.view(len(self.keys), *shape)

    def _uniform(self, numel: int) -> torch.Tensor:
        """N x numel U[0, 1) float32 with 24 random bits each, from (sample key, draw number, element index)."""
        lo, hi = self.keys[:, 0:1], self.keys[:, 1:2]
        step = mix32(hi ^ mix32(torch.full_like(hi, (self.draws * 0x9E3779B9) & _MASK32)))
        stream = mix32(lo ^ step)                                                    # N x 1, one per sample
        index = torch.arange(numel, device=self.device, dtype=torch.int64).unsqueeze(0)
        bits = mix32(mix32(index ^ stream) ^ hi)
        return (bits >> 8).to(torch.float32) * (1.0 / (1 << 24))
