"""Which images to label next (#42, part 2): `suggest.rank`'s worth (uncertainty, novelty) and
its diversity, and `transferkit suggest` on a run: the images it ranks, those it leaves out, its
outputs and its refusals."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import transferkit
from helpers import file_tree, make_dataset, make_image
from transferkit import suggest
from transferkit.task import MULTI, Task

TINY = dict(model="squeezenet1_1", weights="none", image_size=64, quiet=True)
CLASSES = ["a", "b", "c"]


def cli(*args, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "transferkit", *map(str, args)], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_uncertainty_is_one_minus_the_margin():
    probs = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.98, 0.01, 0.01]])
    s = suggest.scores(probs, Task(), ood=np.array([0.1, 0.1, 0.9]), threshold=0.5)
    np.testing.assert_allclose(s.margin, [0.85, 0.05, 0.97])
    np.testing.assert_allclose(s.uncertainty, [0.15, 0.95, 0.03])
    assert s.novel.tolist() == [False, False, True]
    assert suggest.scores(probs, Task()).novel.sum() == 0  # no score, no threshold: nothing is novel


def test_multilabel_uncertainty_is_the_closest_class_to_its_threshold():
    task = Task(MULTI, thresholds=(0.5, 0.2))
    probs = np.array([[0.95, 0.0], [0.5, 0.0], [0.9, 0.25]])
    s = suggest.scores(probs, task)
    assert s.uncertainty[1] == pytest.approx(1.0)  # on its threshold
    assert s.uncertainty[2] > s.uncertainty[0]  # 0.25 is near b's threshold 0.2
    np.testing.assert_allclose(s.margin, [0.2, 0.0, 0.05], atol=1e-9)


def test_near_copies_of_one_hard_image_are_suggested_once():
    rng = np.random.default_rng(0)
    hard = rng.normal(size=16)
    copies = hard + rng.normal(scale=1e-3, size=(20, 16))  # 20 near copies of the most uncertain image
    others = rng.normal(size=(20, 16))
    emb = np.vstack([copies, others])
    probs = np.vstack([np.tile([0.5, 0.5, 0.0], (20, 1)), np.tile([0.7, 0.3, 0.0], (20, 1))])
    picked = suggest.rank(probs, Task(), CLASSES, 10, embeddings=emb)
    rows = [p["index"] for p in picked]
    assert rows[0] < 20  # the most uncertain first
    assert sum(i < 20 for i in rows) == 1  # and none of its copies after it
    assert len(set(rows)) == 10
    assert [p["rank"] for p in picked] == list(range(1, 11))
    assert picked[0]["reason"].startswith("least sure: a 50% vs b 50%")


def test_novel_images_get_the_share_of_suggestions_beyond_what_familiar_ones_reach():
    rng = np.random.default_rng(1)
    familiar = rng.normal(size=(70, 8))
    new_class = rng.normal(size=8) + rng.normal(scale=0.3, size=(30, 8))  # 30% of the pool: something new
    emb = np.vstack([familiar, new_class])
    ood = np.concatenate([np.full(70, 0.2), np.full(30, 0.8)])
    probs = np.vstack([np.tile([0.55, 0.45, 0.0], (70, 1)), np.tile([0.95, 0.05, 0.0], (30, 1))])  # confident
    picked = suggest.rank(probs, Task(), CLASSES, 20, embeddings=emb, ood=ood, threshold=0.5)
    novel = [p for p in picked if "perhaps a class the model does not have" in p["reason"]]
    assert len(novel) == round(20 * (0.30 - 0.05))  # the excess over the 5% the threshold lets through
    assert [p["rank"] for p in novel] == list(range(1, len(novel) + 1))  # first
    assert all(p["novel"] and p["index"] >= 70 for p in novel)
    assert len({tuple(np.round(emb[p["index"]], 6)) for p in novel}) == len(novel)
    # the familiar share only: as many novel images as images like the training ones reach anyway
    few = np.concatenate([np.full(95, 0.2), np.full(5, 0.8)])
    picked = suggest.rank(np.tile([0.55, 0.45, 0.0], (100, 1)), Task(), CLASSES, 20, embeddings=rng.normal(size=(100, 8)),
                          ood=few, threshold=0.5)
    assert not any("perhaps a class" in p["reason"] for p in picked)


def test_fewer_distinct_images_than_suggestions_fill_up_quietly():
    import warnings

    probs = np.vstack([np.tile([0.5, 0.5, 0.0], (30, 1)), [[0.9, 0.1, 0.0]]])
    emb = np.vstack([np.tile(np.arange(8.0), (30, 1)), np.ones((1, 8))])  # 30 copies of one image, and one other
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        picked = suggest.rank(probs, Task(), CLASSES, 10, embeddings=emb)
    rows = [p["index"] for p in picked]
    assert len(set(rows)) == 10 and 30 in rows  # the other image is among them, not only copies


def test_without_features_the_probabilities_give_the_diversity():
    probs = np.array([[0.5, 0.5, 0.0]] * 3 + [[0.45, 0.0, 0.55]])
    picked = suggest.rank(probs, Task(), CLASSES, 2)
    assert [p["index"] for p in picked][:2] in ([0, 3], [3, 0])  # not two of the identical rows
    assert picked[0]["ood_score"] is None and picked[0]["novel"] is False


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A default (linear) run on three colours, and a folder of unlabelled images: some like
    each class, one between two of them, a copy of a training image, an unreadable file."""
    root = tmp_path_factory.mktemp("suggest")
    data = make_dataset(root / "data", classes=("blue", "red", "green"), n_train=8, n_val=4)
    run = Path(transferkit.train(data, out=str(root / "run"), **TINY).path)
    pool = root / "pool"
    for i, colour in enumerate([(30, 60, 200), (200, 40, 30), (40, 180, 60)] * 3):
        make_image(pool / f"img{i}.png", colour, seed=500 + i)
    make_image(pool / "purple.png", (115, 50, 115), seed=900)
    (pool / "broken.jpg").write_bytes(b"not an image")
    return run, data, pool


def test_suggest_ranks_the_unlabelled_images_and_leaves_out_the_trained_ones(trained):
    run, data, pool = trained
    before = file_tree(pool)
    training_image = str(data / "train" / "blue" / "blue0.png")
    found = transferkit.api.suggest(run, [str(pool), training_image], n=4)
    assert found["already_labelled"] == 1 and found["images"] == 10
    assert [s["path"] for s in found["skipped"]] == [str(pool / "broken.jpg")]
    assert found["features"] is True  # a head on frozen features: diversity on the backbone's
    rows = found["suggestions"]
    assert len(rows) == 4 and len({r["path"] for r in rows}) == 4
    assert all(Path(r["path"]).parent == pool and r["guess"] in ("blue", "red", "green") for r in rows)
    assert all(r["reason"] for r in rows)
    every = transferkit.api.suggest(run, [str(pool)], n=100)["suggestions"]
    assert len(every) == 10  # at most the images there are
    assert [r["uncertainty"] for r in every] == sorted((r["uncertainty"] for r in every), reverse=True)
    assert file_tree(pool) == before  # nothing of the user's changed


def test_suggest_command_writes_csv_and_json_and_refuses_what_it_should(trained, tmp_path):
    run, data, pool = trained
    proc = cli("suggest", run, pool, "--n", "3")
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [r["rank"] for r in rows] == ["1", "2", "3"]
    assert {"path", "guess", "probability", "uncertainty", "ood_score", "novel", "reason"} <= set(rows[0])
    assert "broken.jpg" in proc.stderr and "3 of 10 images suggested" in proc.stderr

    out = tmp_path / "next.json"
    cli("suggest", run, pool, "--n", "2", "--output", out)
    assert [r["rank"] for r in json.loads(out.read_text())] == [1, 2]
    cli("suggest", run, pool, "--n", "2", "--output", out)  # its own file: replaced
    mine = tmp_path / "mine.csv"
    mine.write_text("my notes\n")
    for args, says in [(["--output", mine], "was not written by transferkit"),
                       (["--output", pool / "x.csv"], "--output"),
                       (["--n", "0"], "--n must be 1 or more"),
                       ([], None)]:
        if says is None:  # every image given is one the run was trained on
            proc = cli("suggest", run, data / "train", check=False)
            says = "nothing unlabelled to rank"
        else:
            proc = cli("suggest", run, pool, *args, check=False)
        assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert mine.read_text() == "my notes\n"
    proc = cli("suggest", run, tmp_path / "missing", check=False)
    assert proc.returncode == 2 and "not found" in proc.stderr


def test_suggest_on_an_exported_model_clusters_its_probabilities(trained, tmp_path):
    run, data, pool = trained
    transferkit.export(run, "onnx", runs=1, out=str(tmp_path / "export"))
    found = transferkit.api.suggest(tmp_path / "export" / "model.onnx", [str(pool)], n=3)
    assert found["features"] is False and found["engine"] == {"engine": "onnxruntime"}
    assert len(found["suggestions"]) == 3 and found["images"] == 10
    with transferkit.load(run) as model:  # the same model's guesses as the run folder's
        want = {p.path: p.label for p in model.predict([r["path"] for r in found["suggestions"]])}
    assert {r["path"]: r["guess"] for r in found["suggestions"]} == want
