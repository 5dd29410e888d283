"""Time advbench's batched JSMA against torchattacks.JSMA on the same CIFAR-10 images, victim and targets.

    python benchmarks/bench_jsma.py --n 20 [--victim-checkpoint alexnet.pt] [--threads 1]

The data come from the ``cifar10`` dataset plugin and the victim from the ``alexnet`` victim plugin. Without
``--victim-checkpoint`` the victim is trained briefly here (``--train-epochs`` epochs on a ``--train-limit``
subset) so the script is self-contained; with a checkpoint path that does not exist yet, the briefly trained
victim is saved there for the next run. The images are the first ``--n`` test images the victim classifies
correctly.

Both attacks get theta = 1, gamma = 0.1 and the same target per image (advbench's JSMA rule, ``--target``;
torchattacks is put in targeted mode with those targets; left alone it would use (y + 1) mod 10).
Reported per attack: seconds per image (wall clock, whole batch / n), success rate (the victim's label
changed, as the harness counts it), the share that reached the target, and the mean l0 over successful
images, counted per input element (C x H x W features, as both attacks count their budget), with the mean
number of changed pixels (any channel) beside it. The last line is
``jsma speedup <ratio>x, success <ours> vs <theirs>, l0 <ours> vs <theirs>``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20, help="number of test images (default 20)")
    p.add_argument("--victim-checkpoint", type=Path, default=None,
                   help="alexnet state_dict to load (trained briefly and saved there if it does not exist)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"CIFAR-10 data (default {DEFAULT_DATA})")
    p.add_argument("--train-limit", type=int, default=10_000, help="training subset for the brief training")
    p.add_argument("--train-epochs", type=int, default=1, help="epochs of the brief training")
    p.add_argument("--target", choices=["random", "next", "least_likely"], default="random",
                   help="target rule for both attacks (advbench JSMA's option; default random)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-reference", action="store_true", help="time only advbench's JSMA")
    return p.parse_args()


def load_victim(args: argparse.Namespace, data, ctx) -> nn.Module:
    from advbench.plugins import lookup

    victim = lookup("victim", "alexnet").cls(epochs=args.train_epochs)
    model = victim.build(data.input_shape, data.num_classes)
    ckpt = args.victim_checkpoint
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)  # tensors only: no pickled code runs
        model.load_state_dict(state.get("state_dict", state))
        print(f"victim: alexnet loaded from {ckpt}")
    else:
        n = min(args.train_limit, len(data.train_x))
        print(f"victim: alexnet trained here for {args.train_epochs} epoch(s) on {n} training images "
              f"(no checkpoint to load; a quick stand-in, not the paper's victim)")
        start = time.perf_counter()
        victim.fit(model, data.train_x[:n], data.train_y[:n], ctx)
        print(f"  trained in {time.perf_counter() - start:.1f} s")
        if ckpt is not None:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), ckpt)
            print(f"  saved to {ckpt}")
    return model.to(ctx.device).eval().requires_grad_(False)


def summarise(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor,
              x_adv: torch.Tensor, seconds: float) -> dict:
    with torch.no_grad():
        pred = model(x_adv).argmax(1)
    success = pred != y
    changed = (x_adv - x).abs() > 1e-6
    l0 = changed.flatten(1).sum(1).float()
    pixels = changed.any(1).flatten(1).sum(1).float()
    row = {
        "sec_per_image": seconds / len(x),
        "success": success.float().mean().item(),
        "target_hit": (pred == target).float().mean().item(),
        "l0": l0[success].mean().item() if success.any() else float("nan"),
        "pixels": pixels[success].mean().item() if success.any() else float("nan"),
    }
    print(f"{name:>12}: {row['sec_per_image']:.3f} s/image, success {row['success']:.3f} "
          f"(target reached {row['target_hit']:.3f}), mean l0 {row['l0']:.1f} input elements "
          f"({row['pixels']:.1f} pixels) over successful images")
    return row


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    from advbench.api import RunContext
    from advbench.plugins import lookup

    ctx = RunContext(device=torch.device("cpu"), batch_size=max(args.n, 1), seed=args.seed)
    print(f"data: cifar10 from {args.data}; threads {torch.get_num_threads()}")
    dataset = lookup("dataset", "cifar10").cls(path=str(args.data), train_limit=args.train_limit)
    data = dataset.load(ctx)
    model = load_victim(args, data, ctx)

    with torch.no_grad():
        pred = torch.cat([model(xb).argmax(1) for (xb,) in ctx.batches(data.test_x, batch_size=500)])
    accuracy = (pred == data.test_y).float().mean().item()
    keep = (pred == data.test_y).nonzero().squeeze(1)[:args.n]
    x = data.test_x[keep].contiguous()
    y = data.test_y[keep].contiguous()
    print(f"victim test accuracy {accuracy:.3f}; attacking {len(x)} correctly classified test images "
          f"({x[0].numel()} features each)")

    ours = lookup("attack", "jsma").cls(theta=1.0, gamma=0.1, target=args.target)
    attack_ctx = ctx.child("bench-jsma")
    target = ours.targets(model, x, y, attack_ctx)

    start = time.perf_counter()
    adv_ours = ours.run(model, x, y, attack_ctx, target=target)
    mine = summarise("advbench", model, x, y, target, adv_ours, time.perf_counter() - start)

    if args.skip_reference:
        return
    import torchattacks

    reference = torchattacks.JSMA(model, theta=1.0, gamma=0.1)
    reference.set_mode_targeted_by_function(lambda images, labels: target, quiet=True)
    start = time.perf_counter()
    adv_ref = reference(x.clone().contiguous(), y.clone())
    theirs = summarise("torchattacks", model, x, y, target, adv_ref.detach(), time.perf_counter() - start)

    same = ((adv_ours - adv_ref).abs() <= 1e-6).flatten(1).all(1).float().mean().item()
    print(f"identical adversarial images: {same:.3f}")
    speedup = theirs["sec_per_image"] / mine["sec_per_image"]
    print(f"jsma speedup {speedup:.1f}x, success {mine['success']:.3f} vs {theirs['success']:.3f}, "
          f"l0 {mine['l0']:.1f} vs {theirs['l0']:.1f}")


if __name__ == "__main__":
    main()
