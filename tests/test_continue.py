"""Start from a finished run (#42, part 1): `train DATA --from RUN` takes RUN's settings, extracts
only the new images' features for a head, continues RUN's network for the network strategies
(its classes' head rows kept, new classes' rows imprinted), records its parent, and refuses what
it cannot continue in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import transferkit
from helpers import make_dataset
from transferkit.errors import UserError

TINY = dict(model="squeezenet1_1", weights="none", image_size=64, quiet=True, no_report=True)


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "transferkit", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("continue")
    two = make_dataset(root / "two", classes=("blue", "red"), n_train=8, n_val=4)
    three = make_dataset(root / "three", classes=("green", "red", "blue"), n_train=8, n_val=4)
    return root, two, three


def test_linear_from_a_run_extracts_only_the_new_images_and_records_its_parent(tmp_path):
    data = make_dataset(tmp_path / "data", classes=("blue", "red"), n_train=8, n_val=4)
    parent = transferkit.train(data, out=str(tmp_path / "parent"), seed=3, **TINY)
    make_dataset(data, classes=("green",), n_train=8, n_val=4)  # a class added to the same folder
    child = transferkit.train(data, from_run=str(parent.path), out=str(tmp_path / "child"), quiet=True,
                              no_report=True)
    info = child.results["strategy_info"]
    assert info["features_computed"] == 12 and info["features_cached"] == 24  # green's 8 + 4, the rest cached
    saved = yaml.safe_load((tmp_path / "child" / "config.yaml").read_text())
    assert (saved["model"], saved["image_size"], saved["seed"], saved["weights"]) == ("squeezenet1_1", 64, 3, "none")
    assert saved["from_run"] == str(Path(parent.path).absolute())
    record = child.results["parent"]
    assert record["classes_added"] == ["green"] and record["classes_kept"] == ["blue", "red"]
    assert record["continued"] == "settings" and record["classes_dropped"] == []
    assert transferkit.train(data, out=str(tmp_path / "plain"), **TINY).results["parent"] is None
    from transferkit.runs import format_runs, list_runs

    table = format_runs(list_runs(tmp_path))
    assert " from " in table.splitlines()[0] and "parent" in table.splitlines()[2]


def test_finetune_from_a_run_keeps_its_rows_and_imprints_the_new_class(datasets, tmp_path):
    import torch

    from transferkit.models.bundle import load
    from transferkit.training.parent import Parent

    _, two, three = datasets
    parent = transferkit.train(two, out=str(tmp_path / "parent"), strategy="finetune", epochs=1, **TINY)
    old, _, _ = load(parent.path)
    child = transferkit.train(three, from_run=str(parent.path), epochs=1, out=str(tmp_path / "child"), quiet=True,
                              no_report=True)
    assert child.results["parent"]["continued"] == "network" and child.results["parent"]["new_rows"] == "imprint"
    assert child.results["epochs_run"] == 1 and child.results["strategy"] == "finetune"

    # the start itself: RUN's backbone, its rows by class name, the new row from the mean features
    model, _, _ = load(child.path)  # (a network of the child's shape)
    rng = np.random.default_rng(0)
    means = {c: rng.random(model.head.weight.shape[1]).astype(np.float32) for c in ("green", "red", "blue")}
    start = Parent(Path(parent.path), ["blue", "red"], ["green", "red", "blue"])
    said = start.start(model, lambda names: np.stack([means[c] for c in names]))
    assert "2 head row(s) kept, 1 started from their images' mean features" in said
    for key, value in old.backbone.state_dict().items():
        torch.testing.assert_close(model.backbone.state_dict()[key], value)
    w, b = model.head.weight.detach(), model.head.bias.detach()
    torch.testing.assert_close(w[1], old.head.weight[1].detach())  # red
    torch.testing.assert_close(w[2], old.head.weight[0].detach())  # blue
    centre = torch.from_numpy(np.mean([means[c] for c in ("green", "red", "blue")], axis=0))
    direction = torch.from_numpy(means["green"]) - centre  # centred: from the classes' centre to its own mean
    norm = old.head.weight.detach().norm(dim=1).mean()
    torch.testing.assert_close(w[0], direction / direction.norm() * norm)
    # its logit at the centre: the kept classes' mean logit there
    level = (old.head.weight.detach() @ centre + old.head.bias.detach()).mean()
    torch.testing.assert_close(w[0] @ centre + b[0], level)


def test_another_strategy_takes_its_own_defaults_not_the_runs(datasets, tmp_path):
    _, two, three = datasets
    parent = transferkit.train(two, out=str(tmp_path / "parent"), strategy="finetune", epochs=1, lr=0.01, **TINY)
    child = transferkit.train(three, from_run=str(parent.path), strategy="linear", out=str(tmp_path / "child"),
                              quiet=True, no_report=True)
    saved = yaml.safe_load((tmp_path / "child" / "config.yaml").read_text())
    assert (saved["strategy"], saved["optimizer"], saved["epochs"], saved["lr"]) == ("linear", "lbfgs", None, None)
    assert child.results["parent"]["continued"] == "settings"
    # its own network continued: a quarter of its epochs (at least 1) at 0.3x its learning rate, unless given
    from transferkit.training.parent import continue_config

    cfg = continue_config(parent.path, str(three), {})
    assert (cfg.strategy, cfg.epochs, cfg.lr) == ("finetune", 1, pytest.approx(0.003))
    cfg = continue_config(parent.path, str(three), {"lr": 0.05, "epochs": 3})
    assert (cfg.epochs, cfg.lr) == (3, 0.05)


def test_what_cannot_be_continued_is_one_line(datasets, tmp_path):
    root, two, three = datasets
    parent = transferkit.train(two, out=str(tmp_path / "parent"), **TINY)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "checkpoint.pt").write_bytes(b"x")
    for args, says in [(["--from", parent.path, "--model", "resnet18"], "that run's backbone is squeezenet1_1"),
                       (["--from", parent.path, "--strategy", "scratch"], "not scratch: train without --from"),
                       (["--from", tmp_path / "nowhere"], "no such run folder"),
                       (["--from", unfinished], "this run is unfinished"),
                       (["--from", root], "not a finished run")]:
        proc = cli("train", three, "--out", tmp_path / "child", *args)
        assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "child").exists()
    with pytest.raises(UserError, match="this data is multi-label"):
        from transferkit.training.parent import Parent

        cfg = transferkit.TrainConfig.from_mapping({"data": str(three), "model": "squeezenet1_1",
                                                    "from_run": str(parent.path)})
        Parent.of(cfg, ["blue", "red"], multi=True)


def test_classes_missing_from_the_new_data_are_named(datasets, tmp_path, capsys):
    root, _, three = datasets
    parent = transferkit.train(three, out=str(tmp_path / "parent"), **TINY)
    renamed = make_dataset(root / "renamed", classes=("blue", "red"), n_train=8, n_val=4)
    child = transferkit.train(renamed, from_run=str(parent.path), out=str(tmp_path / "child"), no_report=True)
    assert child.results["parent"]["classes_dropped"] == ["green"]
    assert "their head rows dropped: green" in capsys.readouterr().err
    assert json.loads((tmp_path / "child" / "results.json").read_text())["parent"]["run"] == str(Path(parent.path).absolute())
