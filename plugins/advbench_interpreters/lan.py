"""Latent Attention Network interpreter (Grimm et al. 2017), the g of Nguyen et al. 2017."""

from __future__ import annotations

import math
from typing import Literal, Optional, Sequence

import torch
from pydantic import Field
from torch import nn

from advbench import api
from advbench_interpreters._common import InterpreterError
from advbench_interpreters._lan import (LatentAttentionNet, LossKind, OutputKind, corrupt, fidelity_loss,
                                        make_output, sample_mean)


class LatentAttentionNetwork(api.Interpreter):
    """Latent Attention Network of Grimm, Arumugam, Karamcheti, Abel, Wong & Littman, "Latent Attention
    Networks" (arXiv 1706.00536, 2017): the attention model g of Nguyen, Georgiev, Ji & Wang, "Where
    Classification Fails, Interpretation Rises" (2017).

    A mask generator A maps x to A(x) in [0, 1] of x's shape (or one value per pixel with
    ``shared_channels``). It is trained after f1 has converged, with f1 = F frozen, to minimize
    ``L_F(F(x~), F(x)) - beta * mean(A(x))`` where ``x~ = A(x) * eta + (1 - A(x)) * x``: A near 1 means the
    element can be replaced by noise without changing F's output. ``eta`` is, by default, bootstrapped noise as
    in the paper: other training images drawn uniformly at random (``uniform``: U[0, 1] pixels; ``constant``:
    ``noise_value`` everywhere). ``L_F`` is by default the cross-entropy of F(x~) against F's own predicted
    label argmax F(x) (``kl``: KL between the softmaxes; ``mse``: squared difference of the logits).

    Defaults follow Grimm et al.'s setup: ``arch: fc``, a fully connected network of ``depth`` 3 linear layers
    (in -> 512 -> 512 -> out, each under 1000 units) with a sigmoid output, Adam with lr 1e-3, 5 epochs.
    ``beta`` 2.0: beta sets how much loss a pixel's replacement may cost. The cross-entropy of a confidently
    classified input is near 0 and rises to about log K (2.3 for 10 classes) once the evidence is gone, and
    more when the noise is another image that F confidently labels otherwise; the reward for masking
    everything is beta. With beta around log K the trivial all-noise mask does not pay, while beta well below 1
    leaves the mask low almost everywhere and uninformative; 2.0 sits between (raise it for a sparser
    importance map, lower it for a denser one). On an 8x8 digits check (5 epochs, fc 512) the masks' class
    information grew with beta (held-out accuracy of a linear probe predicting F's label from the mask: 0.74
    at beta 2, 0.81 at 3, 0.84 at 4, 0.86 at 6, mean importance falling from 0.48 to 0.35; at 10 epochs
    0.41 at beta 1 against 0.80 at 2), so beta is worth sweeping per
    dataset; 2.0 is kept as the conservative default that does not push weak victims toward all-noise masks.

    ``explain`` returns, by ``output``: ``importance`` = 1 - A(x), high where the pixel matters (DEFAULT, so
    f2 sees the "attention mask" of Nguyen et al.); ``mask`` = A(x); ``masked_image`` = (1 - A(x)) * x.
    On CIFAR-10 with the paper's alexnet (reports/lan-sweep) a LeNet f2 read 0.435 of the importance maps and
    0.623 of the masked images (all training masks, 30 epochs), and no beta, width, depth, epochs, noise or
    shared-channel setting lifted the importance map past 0.42 on a 10k subset: suites/paper.yaml therefore
    uses ``masked_image``, while the default stays the paper's importance map. ``output`` only changes
    ``explain`` (``explain_options``), so one trained LAN serves all three maps.
    Masks have the input's C channels (per-element mask, as in the paper) or 1 with ``shared_channels``
    (``masked_image`` always has C). The label explained is implicitly F's own prediction, since the loss is
    taken against it. ``explain`` is a forward pass: deterministic, per sample, and differentiable with respect
    to x when x requires grad (so an adaptive attack can go through g).

    ``fit`` re-initializes the weights from the run seed, sets the input standardization buffers from the
    training data, and trains in place; shuffling and noise come from ``ctx.generator``. The per-epoch mean
    loss of the last fit is kept in ``self.history`` (diagnostic only; not part of the cached state).
    """

    name = "lan"
    aliases = ("latent-attention",)
    description = "Latent Attention Network mask generator trained against the frozen victim (Grimm et al. 2017)"
    revision = "1"
    # trained with minibatches of ``batch_size``, by default the run's: then the fitted state depends on it
    batch_dependent = True

    def depends_on_batch(self) -> bool:
        return self.options.batch_size is None
    explain_options = ("output",)  # the map handed to f2 is chosen after training: one LAN serves all three

    class Options(api.Options):
        arch: Literal["fc", "conv"] = Field("fc", description="fc: Grimm et al.'s MLP; conv: 3x3 conv stack")
        width: int = Field(512, ge=16, le=4096, description="hidden units per layer (fc)")
        depth: int = Field(3, ge=2, le=6, description="number of linear (fc) or conv (conv) layers")
        conv_width: int = Field(32, ge=4, le=512, description="channels per hidden layer (conv)")
        shared_channels: bool = Field(False, description="one mask value per pixel, shared by all channels")
        beta: float = Field(2.0, ge=0.0, le=100.0, description="weight of the mean-mask reward")
        loss: LossKind = Field("ce", description="L_F: ce against F's label, kl of softmaxes, mse of logits")
        noise: Literal["bootstrap", "uniform", "constant"] = Field(
            "bootstrap", description="eta: random training images, U[0,1] pixels, or a constant")
        noise_value: float = Field(0.0, ge=0.0, le=1.0, description="eta's value for noise: constant")
        epochs: int = Field(5, ge=1, le=1000)
        lr: float = Field(1e-3, gt=0.0, le=1.0, description="Adam learning rate")
        batch_size: Optional[int] = Field(None, ge=1, le=65536, description="default: the harness's batch size")
        output: OutputKind = Field("importance", description="importance = 1 - A (default), mask = A, "
                                                             "masked_image = (1 - A) * x")

    def build(self, input_shape: Sequence[int], num_classes: int) -> nn.Module:
        opt = self.options
        # Creating layers draws from the global RNG; fork it so build leaves the global state untouched.
        # fit re-draws every weight from the run seed anyway.
        with torch.random.fork_rng(devices=[]):
            net = LatentAttentionNet(input_shape, opt.arch, opt.width, opt.depth, opt.conv_width,
                                     opt.shared_channels)
        net.reset_parameters(torch.Generator().manual_seed(0))
        return net.eval()

    def fit(self, state: Optional[nn.Module], victim: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor,
            ctx: api.RunContext) -> None:
        opt = self.options
        net = self._check_state(state)
        device = ctx.device
        net.to(device)
        with torch.no_grad():  # per-channel mean/std of the training data, in chunks (no float64 copy of it all)
            total = torch.zeros(train_x.shape[1], dtype=torch.float64)
            squares = torch.zeros_like(total)
            for start in range(0, len(train_x), 4096):
                part = train_x[start:start + 4096].to(torch.float64)
                total += part.sum(dim=(0, 2, 3))
                squares += part.pow(2).sum(dim=(0, 2, 3))
            count = max(1, train_x.numel() // max(1, train_x.shape[1]))
            mean = total / count
            std = (squares / count - mean.pow(2)).clamp_min(0).sqrt()
            net.mean.copy_(mean.float())
            net.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)).float())
        net.reset_parameters(ctx.generator("lan", "init"))
        order_gen = ctx.generator("lan", "order")
        # U[0, 1] noise is drawn where it is used: on CUDA from a device generator (no copy per step; other numbers
        # than the CPU's), on the CPU from the CPU generator as always. Bootstrap picks index the CPU images.
        on_cuda = device.type == "cuda" and opt.noise == "uniform"
        noise_gen = ctx.generator("lan", "noise", device=device if on_cuda else None)
        n = len(train_x)
        size = opt.batch_size or ctx.batch_size
        per_epoch = math.ceil(n / size)
        optimizer = torch.optim.Adam(net.parameters(), lr=opt.lr)

        def steps():
            for epoch in range(opt.epochs):
                order = torch.randperm(n, generator=order_gen)
                for start in range(0, n, size):
                    yield epoch, order[start:start + size]

        # the loss is summed on the device (float64, the same sums the host made from each float(loss)) and read
        # once at the end: no sync per step
        sums = torch.zeros(opt.epochs, dtype=torch.float64, device=device)
        counts = [0] * opt.epochs
        net.train()
        with torch.enable_grad():
            for epoch, idx in ctx.track(steps(), "train lan", opt.epochs * per_epoch):
                x = train_x[idx].to(device, non_blocking=True)
                with torch.no_grad():
                    logits = victim(x)
                eta = self._noise(train_x, x, noise_gen)
                a = net(x)
                per_sample = fidelity_loss(victim(corrupt(x, a, eta)), logits, opt.loss) - opt.beta * sample_mean(a)
                loss = per_sample.mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                sums[epoch] += loss.detach().double() * len(idx)
                counts[epoch] += len(idx)
        net.eval()
        self.history = [s / max(1, c) for s, c in zip(sums.tolist(), counts)]

    def _noise(self, train_x: torch.Tensor, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        kind = self.options.noise
        if kind == "bootstrap":
            picks = torch.randint(len(train_x), (len(x),), generator=gen)
            return train_x[picks].to(x.device, x.dtype, non_blocking=True)
        if kind == "uniform":
            return torch.rand(x.shape, generator=gen, device=gen.device).to(x.device, x.dtype)
        return torch.full_like(x, self.options.noise_value)

    def _check_state(self, state: Optional[nn.Module]) -> LatentAttentionNet:
        if not isinstance(state, LatentAttentionNet):
            raise InterpreterError("lan needs its mask generator: pass the module returned by build() "
                                   f"(got {type(state).__name__})")
        return state

    def explain(self, state: Optional[nn.Module], victim: nn.Module, x: torch.Tensor,
                ctx: api.RunContext) -> torch.Tensor:
        net = self._check_state(state)
        net.to(x.device).eval()
        # A plain forward pass: differentiable with respect to x for adaptive attacks (ctx.differentiable, even
        # inside a caller's no_grad), and whenever x requires grad.
        with torch.set_grad_enabled(ctx.differentiable or (x.requires_grad and torch.is_grad_enabled())):
            a = net(x)
        return make_output(a, x, self.options.output)
