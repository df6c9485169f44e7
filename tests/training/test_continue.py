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


# -- train --add: labelled images from elsewhere ---------------------------------------------------------------------
def _table(path: Path, rows, header=("path", "label")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(",".join(map(str, r)) for r in [header, *rows]) + "\n")
    return path


def test_added_images_join_the_training_split_and_a_new_class_is_split(tmp_path):
    from helpers import make_image
    from transferkit.data.added import add_images
    from transferkit.data.discover import discover

    data = make_dataset(tmp_path / "data", classes=("blue", "red"), n_train=6, n_val=3)
    split = discover(data)
    photos = tmp_path / "elsewhere"
    blues = [make_image(photos / f"b{i}.png", (20, 30, 220), seed=40 + i) for i in range(3)]
    greens = [make_image(photos / "sub" / f"g{i}.png", (20, 220, 30), seed=60 + i) for i in range(5)]
    table = _table(tmp_path / "answers.csv", [*[(p, "blue") for p in blues],
                                              *[(f"elsewhere/sub/{p.name}", "green") for p in greens],  # relative
                                              ("elsewhere/gone.png", "blue"),  # listed, not there
                                              (split.val[0].path, "red")])  # DATA's own image: its label kept
    added = add_images(split, table, val_fraction=0.2, seed=0)
    assert added.classes == ["blue", "green", "red"]
    record = added.added
    assert (record["images"], record["train"], record["val"], record["already"], record["not_found"]) == (8, 7, 1, 1, 1)
    assert record["new_classes"] == ["green"] and record["unmeasured"] == []
    old_val = {(s.path, split.classes[s.label]) for s in split.val}
    new_val = {(s.path, added.classes[s.label]) for s in added.val}
    assert old_val < new_val and len(new_val - old_val) == 1  # DATA's val unchanged, one green image added
    assert {added.classes[s.label] for s in added.val if s.path not in dict(old_val)} == {"green"}
    train = {s.path: added.classes[s.label] for s in added.train}
    assert all(train[str(p)] == "blue" for p in blues) and sum(v == "green" for v in train.values()) == 4
    assert [s.label for s in added.train] == sorted(s.label for s in added.train)  # by class, as discovery gives
    assert any(d["path"].endswith("gone.png") for d in added.skipped)
    assert split.fingerprint(data) != added.fingerprint(data)


@pytest.mark.parametrize("rows, words", [
    ([("a.png", "blue;red")], r"line 2: \S*a.png has 2 labels"),
    ([("a.png", "")], r"line 2: \S*a.png has no label"),
    ([("a.png", "blue"), ("a.png", "red")], "labelled on line 2 and again, differently, on line 3"),
])
def test_added_rows_a_single_label_dataset_cannot_take_are_one_line(tmp_path, rows, words):
    from helpers import make_image
    from transferkit.data.added import add_images
    from transferkit.data.discover import discover

    make_image(tmp_path / "a.png", (20, 30, 220))
    split = discover(make_dataset(tmp_path / "data", classes=("blue", "red"), n_train=4, n_val=2))
    with pytest.raises(UserError, match=words):
        add_images(split, _table(tmp_path / "t.csv", rows), 0.2, 0, label_delim=";")


def test_added_images_in_multilabel_data_keep_every_label(tmp_path):
    from helpers import make_image, make_multilabel
    from transferkit.data.added import add_images
    from transferkit.data.discover import discover
    from transferkit.data.table import LabelTable

    table = make_multilabel(tmp_path / "data")
    split = discover(tmp_path / "data", labels=LabelTable(str(table), label_delim=" "))
    a = make_image(tmp_path / "new" / "a.png", (20, 30, 220))
    b = make_image(tmp_path / "new" / "b.png", (20, 220, 30))
    added = add_images(split, _table(tmp_path / "t.csv", [(a, "blue red"), (b, "")]), 0.2, 0, label_delim=" ")
    rows = {s.path: {added.classes[c] for c in s.labels} for s in added.train}
    assert rows[str(a)] == {"blue", "red"} and rows[str(b)] == set() and len(added.val) == len(split.val)


def test_train_from_a_run_with_added_images(tmp_path):
    from helpers import make_image

    data = make_dataset(tmp_path / "data", classes=("blue", "red"), n_train=8, n_val=4)
    parent = transferkit.train(data, out=str(tmp_path / "parent"), seed=3, **TINY)
    greens = [make_image(tmp_path / "photos" / f"g{i}.png", (20, 220, 30), seed=80 + i) for i in range(6)]
    table = _table(tmp_path / "labels" / "answers.csv", [(p, "green") for p in greens])
    child = transferkit.train(data, from_run=str(parent.path), add=str(table), out=str(tmp_path / "child"), quiet=True,
                              no_report=True)
    r = child.results
    assert r["classes"] == ["blue", "green", "red"] and r["added"]["images"] == 6 and r["added"]["val"] == 1
    assert r["parent"]["classes_added"] == ["green"] and r["num_val"] == parent.results["num_val"] + 1
    assert r["strategy_info"]["features_computed"] == 6  # only the added images: the rest from the cache
    saved = yaml.safe_load((tmp_path / "child" / "config.yaml").read_text())
    assert saved["add"] == str(table.absolute())
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == sorted(p.name for p in greens)  # only read
    bad = cli("train", data, "--from", parent.path, "--add", tmp_path / "nope.csv", "--out", tmp_path / "x")
    assert bad.returncode != 0 and "--add" in bad.stderr and "nope.csv" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "x").exists()
