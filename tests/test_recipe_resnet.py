"""recipes/resnet: the digits data file, the CIFAR ResNet (its published parameter counts, exact at
full rank once factorized), the crop augmentation against a loop, and the SI/FD ablation end to end
(one run on two CPU processes)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import hf_fnl

from .launch import ROOT, launcher, load_recipe, run

RECIPE = os.path.join(ROOT, "recipes", "resnet")
prepare, train, ablation = (load_recipe("resnet", name) for name in ("prepare", "train", "ablation"))


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    path = tmp_path_factory.mktemp("resnet") / "digits.npz"
    prepare.main(["--source", "digits", "--output", str(path)])
    return path


def test_digits_file_has_a_stratified_split(digits):
    data = np.load(digits)
    assert data["x_train"].shape == (1438, 1, 8, 8) and data["x_test"].shape == (359, 1, 8, 8)
    assert data["x_train"].dtype == np.uint8 and data["x_train"].max() == 255
    train_counts, test_counts = np.bincount(data["y_train"]), np.bincount(data["y_test"])
    assert np.all(np.abs(test_counts / (train_counts + test_counts) - 0.2) < 0.01)
    from sklearn.datasets import load_digits

    images = load_digits().images
    assert sorted(map(bytes, np.concatenate([data["x_train"], data["x_test"]]).reshape(-1, 64))) == sorted(
        map(bytes, np.clip(np.rint(images * 255 / 16), 0, 255).astype(np.uint8).reshape(-1, 64)))


@pytest.mark.parametrize("depth, params", [(20, 269_722), (32, 464_154)])
def test_cifar_resnet_has_the_published_parameter_count(depth, params):
    model = train.CifarResNet(depth, num_classes=10, in_channels=3)
    assert sum(p.numel() for p in model.parameters()) == params  # He et al.: 0.27M and 0.46M


def test_factorized_resnet_at_full_rank_equals_the_dense_one():
    torch.manual_seed(0)
    dense = train.CifarResNet(20, num_classes=10, in_channels=3).eval()
    factorized = train.CifarResNet(20, num_classes=10, in_channels=3).eval()
    factorized.load_state_dict(dense.state_dict())
    entries = hf_fnl.fnl_factorize_layers(factorized, train.FACTORIZED, 1.0, progress=False)
    assert len(entries) == 18 and "stem" not in entries  # 3 stages × 3 blocks × 2 convs
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(factorized(x), dense(x), atol=1e-5, rtol=0)


def test_augment_crops_shifted_windows_of_the_padded_images():
    images = torch.randn(6, 3, 16, 16)
    crops = train.augment(images, flip=True, generator=torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for image, crop in zip(padded, crops):  # each crop is one window of its padded image, maybe mirrored
        windows = [image[:, y:y + 16, x:x + 16] for y in range(5) for x in range(5)]
        assert any(torch.equal(crop, w) or torch.equal(crop, w.flip(-1)) for w in windows)
    assert not torch.equal(crops, images)


def test_bad_arguments_say_what_to_do(tmp_path):
    with pytest.raises(SystemExit):
        train.parse_args(["--data", "x.npz", "--depth", "21", "--output-dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        train.parse_args(["--data", "x.npz", "--decay", "fd", "--output-dir", str(tmp_path)])


def test_ablation_trains_every_setting_and_tables_them(digits, tmp_path):
    root = tmp_path / "ablation"
    common = ["--data", str(digits), "--depth", "8", "--rank-scale", "0.25", "--epochs", "3", "--batch-size", "64",
              "--cpu"]
    run([os.path.join(RECIPE, "ablation.py"), "--output-root", str(root), "--seeds", "0", "--dense", "--run", "--",
         *common])
    rows = {r["setting"]: r for r in ablation.collect(list(ablation.commands(ablation.parse_args(
        ["--output-root", str(root), "--seeds", "0", "--dense", "--", *common]))), str(root))}
    assert list(rows) == ["si+fd", "si", "fd", "neither", "dense"]
    assert all(0.3 < r["accuracies"][0] <= 1 for r in rows.values())  # 3 epochs on digits: far above chance
    assert rows["si+fd"]["params"] == rows["neither"]["params"] < rows["dense"]["params"] == rows["dense"]["dense_params"]
    record = json.loads((root / "si+fd-seed0" / "results.json").read_text())
    assert record["results"]["spectral"] and record["results"]["decay"] == "fd" and len(record["epochs"]) == 3
    assert (root / "si+fd-seed0" / "curves.png").exists() and (root / "ablation.png").stat().st_size > 5000
    assert (root / "ablation.md").read_text().count("\n") == 2 + 5


def test_training_on_two_cpu_processes(digits, tmp_path):
    run([os.path.join(RECIPE, "train.py"), "--data", str(digits), "--depth", "8", "--rank-scale", "0.25",
         "--spectral", "--decay", "fd", "--epochs", "2", "--batch-size", "32", "--output-dir", str(tmp_path)],
        launcher(2))
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["epochs"]) == 2 and 0 < results["results"]["test_accuracy"] <= 1
