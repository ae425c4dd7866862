"""A low-rank CIFAR-style ResNet with factorized convolutions: SI and FD against neither (Khodak et al. 2021).

The network is He et al.'s CIFAR ResNet (depth 6n + 2: a 3×3 stem with 16 channels, three stages of
n basic blocks with 16/32/64 channels, identity shortcuts that subsample and zero-pad, global
average pooling, a linear classifier), Kaiming-initialized, as akamaster's pytorch_resnet_cifar10 on
which the paper's code is built. `--rank-scale s` replaces every 3×3 convolution of the residual
blocks by a FactorizedConv2d of rank s·c_out·3 (the paper's convention); the stem and the
classifier stay dense. `--spectral` initializes the factors by SVD of the layer's own random
initialization (SI); without it they are fresh factors at the dense layer's scale. `--decay fd`
puts Frobenius decay on the factorized convolutions, coupled through the loss (science.md's rule
for SGD), in place of their weight decay and with the same coefficient (the paper's `--wd2fd`);
`--decay wd` decays every tensor. Training: SGD with momentum 0.9, lr 0.1, weight decay 1e-4 on all
parameters, batch 128, lr × 0.1 at 50% and 75% of the epochs; random crops from images padded by
an eighth of their size, and horizontal flips with --flip (CIFAR, not digits).

    python recipes/resnet/prepare.py --source digits --output data/digits.npz
    accelerate launch recipes/resnet/train.py --data data/digits.npz --depth 20 --rank-scale 0.25 \\
        --spectral --decay fd --epochs 30 --output-dir runs/resnet20-si-fd

Writes results.json (final and best test accuracy, parameter counts, per-epoch curves) and
curves.png (training loss and test accuracy per epoch) into --output-dir.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm

import hf_fnl
from hf_fnl.loop import finish
from hf_fnl.optim import fnl_param_groups
from hf_fnl.plotting import new_figure, save_figure
from hf_fnl.regularize import fd_penalty

FACTORIZED = r"stages\.\d+\.\d+\.conv[12]"  # the residual blocks' 3×3 convolutions


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help=".npz written by recipes/resnet/prepare.py")
    p.add_argument("--depth", type=int, default=20, help="6n + 2: 20, 32, 44, 56, 110")
    p.add_argument("--rank-scale", type=float, help="factorize the blocks' convolutions at this rank scale")
    p.add_argument("--spectral", action="store_true", help="SI of the random init (otherwise fresh factors)")
    p.add_argument("--decay", default="wd", choices=["wd", "fd"], help="fd: Frobenius decay on the factorized convs")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--flip", action="store_true", help="random horizontal flips (natural images)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report-to", default=None, help="accelerate tracker: tensorboard, wandb, ...")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--output-dir", required=True)
    args = p.parse_args(argv)
    if (args.depth - 2) % 6 or args.depth < 8:
        p.error(f"--depth must be 6n + 2 with n >= 1 (20, 32, 44, ...), got {args.depth}")
    if args.decay == "fd" and args.rank_scale is None:
        p.error("--decay fd decays factorized convolutions: give --rank-scale")
    return args


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride, self.extra_channels = stride, planes - in_planes

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x[:, :, :: self.stride, :: self.stride]  # option A: subsample, zero-pad the new channels
        if self.extra_channels:
            half = self.extra_channels // 2
            shortcut = F.pad(shortcut, (0, 0, 0, 0, half, self.extra_channels - half))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int, in_channels: int):
        super().__init__()
        blocks = (depth - 2) // 6
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        stages, planes = [], 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            stages.append(nn.Sequential(*(BasicBlock(planes if i == 0 else width, width, stride if i == 0 else 1)
                                          for i in range(blocks))))
            planes = width
        self.stages = nn.Sequential(*stages)
        self.classifier = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x):
        x = self.stages(F.relu(self.bn(self.stem(x))))
        return self.classifier(x.mean(dim=(2, 3)))


def augment(images: torch.Tensor, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crops of the images zero-padded by an eighth of their size (and random horizontal flips)."""
    n, _, h, w = images.shape
    pad = max(1, h // 8)
    padded = F.pad(images, (pad, pad, pad, pad))
    dy, dx = (torch.randint(0, 2 * pad + 1, (n, 1), generator=generator) for _ in range(2))
    rows, cols = dy + torch.arange(h), dx + torch.arange(w)  # n × h, n × w
    crops = padded[torch.arange(n)[:, None, None, None], torch.arange(images.shape[1])[None, :, None, None],
                   rows[:, None, :, None], cols[:, None, None, :]]
    if flip:
        flipped = torch.rand(n, generator=generator) < 0.5
        crops[flipped] = crops[flipped].flip(-1)
    return crops


def load_arrays(path: str):
    """Float images normalized by the training set's per-channel mean and std, and labels."""
    data = np.load(path)
    x_train, x_test = (torch.from_numpy(data[k]).float() / 255 for k in ("x_train", "x_test"))
    mean, std = x_train.mean(dim=(0, 2, 3), keepdim=True), x_train.std(dim=(0, 2, 3), keepdim=True)
    y_train, y_test = (torch.from_numpy(data[k]).long() for k in ("y_train", "y_test"))
    return (x_train - mean) / std, y_train, (x_test - mean) / std, y_test, len(data["class_names"])


@torch.no_grad()
def accuracy(model, dataloader, accelerator) -> float:
    model.eval()
    correct = total = 0
    for images, labels in dataloader:
        hits = accelerator.gather_for_metrics((model(images).argmax(-1) == labels).long())
        correct, total = correct + hits.sum().item(), total + hits.numel()
    model.train()
    return correct / total


def plot_curves(epochs: list[dict], path: str) -> None:
    fig, (loss_ax, acc_ax) = new_figure(1, 2, figsize=(10, 4))
    x = [e["epoch"] for e in epochs]
    loss_ax.plot(x, [e["train_loss"] for e in epochs])
    acc_ax.plot(x, [e["test_accuracy"] for e in epochs])
    loss_ax.set_ylabel("training loss")
    acc_ax.set_ylabel("test accuracy")
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    save_figure(fig, path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    # 1. accelerator and data
    accelerator = Accelerator(cpu=args.cpu, log_with=args.report_to, project_dir=args.output_dir)
    set_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    x_train, y_train, x_test, y_test, num_classes = load_arrays(args.data)
    train_dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_train, y_train),
                                           batch_size=args.batch_size, shuffle=True, drop_last=True)
    test_dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_test, y_test), batch_size=512)
    crops = torch.Generator().manual_seed(args.seed + accelerator.process_index)

    # 2. model: dense, or its blocks' convolutions factorized (SI of the random init, or fresh factors)
    model = CifarResNet(args.depth, num_classes, x_train.shape[1])
    dense_params = sum(p.numel() for p in model.parameters())
    if args.rank_scale is not None:
        hf_fnl.fnl_factorize_layers(model, FACTORIZED, args.rank_scale, init="spectral" if args.spectral else "default",
                                    progress=False, seed=args.seed)
    params = sum(p.numel() for p in model.parameters())
    accelerator.print(f"ResNet-{args.depth}: {params:,} parameters ({params / dense_params:.1%} of the dense "
                      f"{dense_params:,})")

    # 3. optimizer: FD on the factor pairs through the loss (coupled), weight decay on everything else
    fd_targets = ("conv",) if args.decay == "fd" else ()
    pairs = hf_fnl.fnl_factor_pairs(model, fd_targets) if fd_targets else []
    groups = fnl_param_groups(model, args.weight_decay, args.weight_decay, fd_targets, no_decay=set(), fd_mode="coupled")
    optimizer = torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum)
    steps_per_epoch = len(train_dl)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, [int(0.5 * args.epochs) * steps_per_epoch, int(0.75 * args.epochs) * steps_per_epoch], gamma=0.1)
    model, optimizer, train_dl, test_dl, scheduler = accelerator.prepare(model, optimizer, train_dl, test_dl, scheduler)
    accelerator.init_trackers("resnet", config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str))})

    # 4. train, testing after every epoch
    epochs = []
    progress = tqdm(range(1, args.epochs + 1), desc="epochs", disable=not accelerator.is_local_main_process)
    for epoch in progress:
        loss_sum = torch.zeros((), device=accelerator.device)
        for images, labels in train_dl:
            images = augment(images.cpu(), args.flip, crops).to(accelerator.device)
            loss = F.cross_entropy(model(images), labels)
            loss_sum += loss.detach()
            if pairs:  # coupled FD: λ·½Σ‖U Vᵀ‖² per factorized conv
                loss = loss + args.weight_decay * fd_penalty(pairs)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        entry = {"epoch": epoch, "train_loss": accelerator.reduce(loss_sum, reduction="mean").item() / steps_per_epoch,
                 "test_accuracy": accuracy(model, test_dl, accelerator)}
        epochs.append(entry)
        accelerator.log(entry, step=epoch)
        progress.set_postfix(loss=f"{entry['train_loss']:.3f}", acc=f"{entry['test_accuracy']:.4f}")

    # 5. results
    results = {"test_accuracy": epochs[-1]["test_accuracy"], "best_test_accuracy": max(e["test_accuracy"] for e in epochs),
               "params": params, "dense_params": dense_params, "depth": args.depth, "rank_scale": args.rank_scale,
               "spectral": args.spectral, "decay": args.decay, "seed": args.seed}
    if accelerator.is_main_process:
        with open(os.path.join(args.output_dir, "results.json"), "w") as f:
            json.dump({"results": results, "epochs": epochs}, f, indent=2)
        plot_curves(epochs, os.path.join(args.output_dir, "curves.png"))
        print(json.dumps(results))
    model = accelerator.unwrap_model(model)  # no reference to the DDP wrapper may outlive finish()
    finish(accelerator)
    return results


if __name__ == "__main__":
    main()
