"""transferkit runs [DIR] and runs compare A B: the table, sorting, JSON, damaged and unfinished
folders listed as such, and the comparison's settings diff, per-class deltas and per-image lists."""

from __future__ import annotations

import json
import shutil

import pytest

import transferkit
from transferkit import runs
from transferkit.cli import main
from transferkit.errors import UserError

from helpers import make_dataset

TINY = dict(model="squeezenet1_1", weights="none", image_size=64, quiet=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two finished runs (different head penalties), one interrupted before it finished, one
    damaged, and folders that are not runs."""
    root = tmp_path_factory.mktemp("runs")
    data = make_dataset(root / "data", classes=("blue", "red", "green"), n_train=4, n_val=2)
    base = root / "runs"
    a = transferkit.train(data, out=str(base / "a"), weight_decay=3.0, **TINY)
    b = transferkit.train(data, out=str(base / "b"), weight_decay=1e-4, **TINY)
    unfinished = shutil.copytree(a.path, base / "unfinished")
    (unfinished / "results.json").unlink()
    (unfinished / "checkpoint.pt").write_bytes(b"")
    damaged = shutil.copytree(a.path, base / "damaged")
    (damaged / "results.json").write_text("{ not json")
    (base / "mlartifacts").mkdir()
    (base / "notes").mkdir()
    (base / "notes" / "todo.txt").write_text("x")
    return base, a, b


def test_table_lists_every_run_and_names_the_broken_ones(folder, capsys):
    base, a, b = folder
    assert main(["runs", str(base)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["run", "when", "data", "backbone", "strategy"]
    table = {line.split()[0]: line for line in lines[1:5]}
    assert set(table) == {"a", "b", "unfinished", "damaged"}  # mlartifacts/, notes/: not runs
    assert f"{a.val_acc:.4f}" in table["a"] and "squeezenet1_1" in table["a"] and table["a"].endswith("finished")
    assert table["unfinished"].endswith("unfinished") and table["damaged"].endswith("damaged")
    assert f"transferkit train --resume {base / 'unfinished'}" in out and "damaged: results.json cannot be read" in out


def test_sort_and_json(folder, capsys):
    base, a, b = folder
    rows = runs.list_runs(base, "val_acc")
    finished = [r for r in rows if r.val_acc is not None]
    assert [r.val_acc for r in finished] == sorted((r.val_acc for r in finished), reverse=True)
    assert rows[-1].val_acc is None  # unknown values last
    assert [r.name for r in runs.list_runs(base, "when") if r.status == "finished"] == ["a", "b"]  # as they finished
    assert main(["runs", str(base), "--json", "--sort", "name"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in listed] == ["a", "b", "damaged", "unfinished"]
    by_name = {r["name"]: r for r in listed}
    assert by_name["a"]["balanced_accuracy"] == pytest.approx(a.results["balanced_accuracy"])
    assert by_name["a"]["data_fingerprint"] == b.results["data"]["fingerprint"]  # the same images
    assert by_name["a"]["size_mb"] > 0.5
    with pytest.raises(UserError, match="--sort must be one of"):
        runs.list_runs(base, "accuracy")


def test_compare_settings_per_class_and_images(folder, capsys):
    base, a, b = folder
    c = runs.compare(a.path, b.path)
    assert c.settings == {"weight_decay": (3.0, 1e-4)}
    assert c.metrics["val accuracy"] == (pytest.approx(a.val_acc), pytest.approx(b.val_acc))
    metrics_a = json.loads((a.path / "metrics.json").read_text())["per_class"]
    metrics_b = json.loads((b.path / "metrics.json").read_text())["per_class"]
    assert set(c.per_class) == {"blue", "green", "red"}
    for cls in c.per_class:
        assert c.per_class[cls]["f1"] == (pytest.approx(metrics_a[cls]["f1"]), pytest.approx(metrics_b[cls]["f1"]))
    assert c.same_val
    right = {}
    for run in (a, b):
        rows = [line.split(",") for line in (run.path / "predictions.csv").read_text().splitlines()[1:]]
        right[run.path.name] = {r[0] for r in rows if r[1] == r[2]}
    assert set(c.only_a_right) == right["a"] - right["b"] and set(c.only_b_right) == right["b"] - right["a"]
    assert main(["runs", "compare", str(a.path), str(b.path)]) == 0
    out = capsys.readouterr().out
    assert "weight_decay  3.0 -> 0.0001" in out
    delta = b.val_acc - a.val_acc
    assert f"{delta:+.4f}" in out.split("val accuracy")[1].splitlines()[0]
    assert main(["runs", "compare", str(a.path), str(b.path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["weight_decay"] == [3.0, 1e-4]


def test_bad_input_is_one_line(folder, tmp_path, capsys):
    base, a, _ = folder
    for argv, words in [(["runs", str(tmp_path / "nowhere")], "no such folder"),
                        (["runs", "compare", str(a.path), str(base / "damaged")], "results.json cannot be read"),
                        (["runs", "compare", str(a.path), str(base / "notes")], "is not a run folder"),
                        (["runs", "compare", str(a.path)], "usage: transferkit runs compare"),
                        (["runs", str(base), str(base)], "usage: transferkit runs [DIR]")]:
        assert main(argv) != 0
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert main(["runs", str(tmp_path)]) == 0 and capsys.readouterr().out.strip() == "no runs"
