"""Write an image-classification dataset as one .npz that recipes/resnet/train.py reads.

Sources:
- `digits`: scikit-learn's bundled handwritten digits (1,797 8×8 grey images, 10 classes; the UCI
  optical-recognition set), which needs no network: `pip install scikit-learn`. A stratified,
  seeded split keeps --test-fraction of each class for testing.
- `cifar10`, `cifar100`: the Hub copies (`uoft-cs/cifar10`, `uoft-cs/cifar100`, needs network), with
  their own train/test splits.

The file holds x_train, x_test (uint8, N × C × H × W), y_train, y_test (int64) and class_names, so
that a machine without scikit-learn, datasets or network trains from it.

    python recipes/resnet/prepare.py --source digits --output data/digits.npz
    python recipes/resnet/prepare.py --source cifar10 --output data/cifar10.npz
"""

from __future__ import annotations

import argparse
import os

import numpy as np

HUB_COPIES = {"cifar10": ("uoft-cs/cifar10", "img", "label"), "cifar100": ("uoft-cs/cifar100", "img", "fine_label")}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, choices=["digits", *HUB_COPIES])
    p.add_argument("--test-fraction", type=float, default=0.2, help="digits only: held out per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True)
    return p.parse_args(argv)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test): round(test_fraction · n_c) random examples of each class c go to test."""
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        test.append(members[: round(test_fraction * len(members))])
    test = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(len(labels)), test), test


def load_digits(test_fraction: float, seed: int) -> dict:
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    # grey levels 0..16 → 0..255, one channel
    images = np.clip(np.rint(digits.images * 255 / 16), 0, 255).astype(np.uint8)[:, None]
    labels = digits.target.astype(np.int64)
    train, test = stratified_split(labels, test_fraction, seed)
    return dict(x_train=images[train], y_train=labels[train], x_test=images[test], y_test=labels[test],
                class_names=np.array([str(c) for c in digits.target_names]))


def load_hub(source: str) -> dict:
    import datasets

    name, image_column, label_column = HUB_COPIES[source]
    data = datasets.load_dataset(name)
    arrays = {}
    for split in ("train", "test"):
        images = np.stack([np.asarray(img.convert("RGB")) for img in data[split][image_column]])
        arrays[f"x_{split}"] = images.transpose(0, 3, 1, 2).copy()
        arrays[f"y_{split}"] = np.asarray(data[split][label_column], dtype=np.int64)
    arrays["class_names"] = np.array(data["train"].features[label_column].names)
    return arrays


def main(argv=None) -> dict:
    args = parse_args(argv)
    arrays = load_digits(args.test_fraction, args.seed) if args.source == "digits" else load_hub(args.source)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    np.savez_compressed(args.output, **arrays)
    print(f"{args.source}: {len(arrays['y_train'])} training and {len(arrays['y_test'])} test images of shape "
          f"{arrays['x_train'].shape[1:]}, {len(arrays['class_names'])} classes → {args.output}")
    return arrays


if __name__ == "__main__":
    main()
