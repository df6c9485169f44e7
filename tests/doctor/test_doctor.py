"""`transferkit doctor`: injected problems found (duplicates and leakage, two labels, a flipped
label, a blank image), nothing in DATA changed, the exclude list honoured by `train --exclude`,
train's own data-health warnings, and the feature cache shared both ways."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from helpers import shared_dataset
from transferkit.cli import main
from transferkit.doctor import checks, copies


def _snapshot(root: Path) -> dict:
    return {str(p): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dirty(tmp_path_factory):
    """A small real dataset (ants and bees) with known problems."""
    src = shared_dataset("hymenoptera_data")
    root = tmp_path_factory.mktemp("doctor") / "data"
    for split, n in (("train", 14), ("val", 5)):
        for c in ("ants", "bees"):
            (root / split / c).mkdir(parents=True)
            for p in sorted((src / split / c).glob("*.jpg"))[:n]:
                shutil.copyfile(p, root / split / c / p.name)
    ants = sorted((root / "train" / "ants").glob("*.jpg"))
    bees = sorted((root / "train" / "bees").glob("*.jpg"))
    truth = {}
    truth["leak"] = (ants[0], root / "val" / "ants" / "leaked.jpg")
    shutil.copyfile(*truth["leak"])
    truth["two_labels"] = (ants[1], root / "train" / "bees" / "also_a_bee.jpg")
    shutil.copyfile(*truth["two_labels"])
    with Image.open(bees[0]) as im:
        near = root / "val" / "bees" / "near.jpg"
        ImageOps.mirror(im).save(near, quality=90)
    truth["near"] = (bees[0], near)
    flipped = root / "train" / "ants" / "really_a_bee.jpg"
    bees[1].rename(flipped)
    truth["flipped"] = flipped
    truth["blank"] = root / "train" / "bees" / "blank.png"
    Image.new("RGB", (300, 200), (3, 3, 3)).save(truth["blank"])
    return root, truth


def test_doctor_finds_the_injected_problems_and_changes_nothing(dirty, tmp_path, capsys):
    data, truth = dirty
    before = _snapshot(data)
    out, exclude = tmp_path / "out", tmp_path / "exclude.txt"
    assert main(["doctor", str(data), "--out", str(out), "--write-exclude", str(exclude)]) == 0
    printed = capsys.readouterr()
    assert _snapshot(data) == before  # nothing in DATA modified, moved or added
    report = json.loads((out / "doctor.json").read_text())
    assert (out / "doctor.html").stat().st_size > 10_000 and "data:image/jpeg;base64" in (out / "doctor.html").read_text()
    pairs = {frozenset((p["a"]["path"], p["b"]["path"])): p for p in report["exact_duplicates"] + report["near_duplicates"]}
    leak = pairs[frozenset(map(str, truth["leak"]))]
    assert leak["kind"] == "leakage" and leak["similarity"] == 1.0
    assert pairs[frozenset(map(str, truth["two_labels"]))]["kind"] == "two labels"
    near = pairs[frozenset(map(str, truth["near"]))]
    assert near["kind"] == "leakage" and near["similarity"] < 1 and near["match"] >= copies.COPY_MATCH
    assert len(pairs) <= 4, list(pairs)  # at most one pair beyond the three injected
    suspects = {x["path"]: x for x in report["label_issues"]}
    assert suspects[str(truth["flipped"])]["suggested"] == "bees"
    assert {e["label"] for e in suspects[str(truth["flipped"])]["evidence"]} == {"bees"}  # its nearest bees shown
    assert str(truth["blank"]) in {x["path"] for x in report["image_issues"]["blank"]}
    assert report["balance"]["per_class"]["ants"]["train"] == 15 and report["balance"]["max_min_ratio"] >= 1
    assert "across train/val" in printed.err and "likely label errors: " in printed.out
    listed = [line for line in exclude.read_text().splitlines() if not line.startswith("#")]
    assert str(truth["leak"][1]) in listed and str(truth["near"][1]) in listed  # the val copies
    assert str(truth["flipped"]) in listed and str(truth["blank"]) in listed
    assert str(truth["leak"][0]) not in listed  # the training original stays

    # train --exclude leaves them out and says so; train after doctor extracts nothing again
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--exclude", str(exclude), "--quiet"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["excluded"] == {"file": str(exclude), "images": len(listed), "not_found": 0}
    split = json.loads((run / "split.json").read_text())
    used = {p for p, _ in split["train"] + split["val"]}
    assert not used & set(listed) and results["strategy_info"]["features_computed"] == 0
    assert results["data_health"]["leakage"] == 0  # the leaked copies were left out


def test_a_new_check_is_one_registered_kind_shown_everywhere(dirty, tmp_path, capsys):
    """A kind of finding registered in `doctor.kinds` reaches doctor.json, the summary, the page,
    the exclude list and the studio's findings, with no other change; a stored analysis made
    without it is not reused."""
    from transferkit.doctor import kinds
    from transferkit.doctor.html import section, single
    from transferkit.studio.datasets import Dataset

    class Lonely(kinds.Kind):  # images whose nearest neighbour has another label
        name, order = "lonely", 55

        def find(self, evidence):
            labels, nearest = evidence.labels, evidence.idx[:, 0]
            return [{"i": int(i), "other": int(labels[nearest[i]])} for i in np.flatnonzero(labels != labels[nearest])]

        def rows(self, found, who):
            return [{**who(f["i"]), "nearest_label": who.split.classes[f["other"]]} for f in found]

        def summary(self, report):
            return [f"lonely images: {len(report['lonely'])}" + kinds.shown_names(report["lonely"])]

        def sections(self, report):
            return [section("Lonely images", report["lonely"], single("nearest_label"))]

        def excluded(self, report):
            return [(x["path"], f"lonely: its nearest image is a {x['nearest_label']}") for x in report["lonely"]]

        def studio(self, report, image):
            return {"lonely": [{"kind": "lonely", "images": [image(f)]} for f in kinds.studio_singles(report, "lonely")]}

    data, truth = dirty
    out, exclude = tmp_path / "out", tmp_path / "exclude.txt"
    assert main(["doctor", str(data), "--out", str(tmp_path / "before")]) == 0  # stores its analysis
    with kinds.KINDS.temporarily(Lonely()):
        assert main(["doctor", str(data), "--out", str(out), "--write-exclude", str(exclude)]) == 0
        shown = Dataset("data", data, tmp_path / "fixes.csv", tmp_path / "thumbs").findings(out / "doctor.json")
    assert "lonely" not in kinds.KINDS  # registered within the block only
    printed = capsys.readouterr().out
    report = json.loads((out / "doctor.json").read_text())
    lonely = {x["path"]: x for x in report["lonely"]}
    assert str(truth["flipped"]) in lonely and lonely[str(truth["flipped"])]["nearest_label"] == "bees"
    assert f"lonely images: {len(lonely)}" in printed
    assert f"Lonely images ({len(lonely)})" in (out / "doctor.html").read_text()
    assert "# lonely: its nearest image is a " in exclude.read_text()
    assert {x["images"][0]["path"] for x in shown["groups"]["lonely"]} >= {"train/ants/really_a_bee.jpg"}


def test_train_warns_about_leakage_and_two_labels_from_its_own_features(dirty, tmp_path, capsys):
    data, truth = dirty
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run)]) == 0
    err = capsys.readouterr().err
    results = json.loads((run / "results.json").read_text())
    health = results["data_health"]
    assert health["leakage"] >= 2 and health["two_labels"] >= 1
    assert "transferkit doctor" in err and "val" in err
    page = (run / "report.html").read_text()
    assert "Data health" in page and "leakage" in page.lower()
    cv = results["cv"]  # the head's cross-validation beside the val accuracy, with its groups
    assert 0 <= cv["accuracy"] <= 1 and cv["folds"] >= 2 and cv["groups"] <= cv["images"]
    assert cv["estimates"] == "the kept model"


def test_train_warns_when_cross_validation_reads_far_above_val():
    from transferkit.training.outputs import cv_warning

    results = {"val_acc": 0.684, "num_val": 400,
               "cv": {"accuracy": 0.948, "groups": 310, "estimates": "the kept model"}}
    assert "26.4 points lower" in cv_warning(results)
    assert cv_warning({**results, "val_acc": 0.93}) is None  # within 5 points
    assert cv_warning({**results, "cv": {**results["cv"], "estimates": "the head on frozen features"}}) is None


def _smooth_noise(rng, n: int) -> np.ndarray:
    """n thumbnails of smooth random pictures (blurred noise, as photos are: correlated pixels)."""
    from scipy import ndimage

    x = ndimage.gaussian_filter(rng.normal(size=(n, copies.THUMB, copies.THUMB)), (0, 3, 3))
    x = (x - x.min()) / (x.max() - x.min()) * 255
    return x.astype(np.uint8)


def test_checks_scale_and_tell_copies_from_same_scene():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(3000, 64)).astype(np.float32)
    emb[10] = emb[20] * 1.01  # a near copy (its thumbnail mirrored below)
    emb[30] = emb[40] + 0.05 * rng.normal(size=64)  # another shot of one scene: alike features, other pixels
    sims, idx = checks.neighbours(emb, k=5)
    assert sims.shape == (3000, 5) and idx[10, 0] == 20 and sims[10, 0] > 0.999
    thumbs = list(_smooth_noise(rng, 3000))
    thumbs[10] = thumbs[20][:, ::-1]
    labels, splits = np.zeros(3000, int), np.array(["train"] * 2990 + ["val"] * 10)
    near, scene = checks.look_alikes(sims, idx, thumbs, labels, splits, [], set())
    assert [(p["a"], p["b"]) for p in near] == [(10, 20)] and near[0]["match"] > 0.99
    assert [(p["a"], p["b"]) for p in scene] == [(30, 40)] and scene[0]["match"] < copies.COPY_MATCH
    assert checks.look_alikes(sims, idx, thumbs, labels, splits, [], {10})[0] == []  # a blank image is not paired
    hashes = [b"x", b"y", b"x", None]
    exact = checks.exact_duplicates(hashes, [0, 0, 1, 0], ["train", "val", "val", "train"])
    assert exact == [{"a": 0, "b": 2, "kind": "two labels", "similarity": 1.0}]
    b = checks.balance([0] * 40 + [1] * 5, ["train"] * 45, ["big", "small"])
    assert b["max_min_ratio"] == 8.0 and b["small_classes"] == ["small"] and len(b["remedies"]) == 2


def test_a_copy_survives_every_change_together_and_distinct_photos_do_not_match():
    """Cropped to 80% of the area, halved, mirrored, turned 5 degrees, brighter and less contrasty,
    JPEG quality 30: the thumbnails still match; two different photos do not."""
    from PIL import ImageEnhance

    from transferkit.doctor import images

    src = shared_dataset("hymenoptera_data") / "train" / "bees"
    first, other = sorted(src.glob("*.jpg"))[:2]
    with Image.open(first) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
    w, h = im.size
    copy = im.crop((w // 20, h // 20, w // 20 + int(w * 0.894), h // 20 + int(h * 0.894)))
    copy = ImageOps.mirror(copy.resize((copy.width // 2, copy.height // 2))).rotate(5)
    copy = ImageEnhance.Contrast(ImageEnhance.Brightness(copy).enhance(1.2)).enhance(0.8)
    import io

    buf = io.BytesIO()
    copy.save(buf, "JPEG", quality=30)
    tmp = Path(__import__("tempfile").mkdtemp()) / "copy.jpg"
    tmp.write_bytes(buf.getvalue())
    thumbs = [images._pixels(str(p))[1] for p in (first, tmp, other)]
    match = copies.match_scores(thumbs, [(0, 1), (0, 2)])
    assert match[0] >= 0.85 and match[1] < copies.COPY_MATCH, match


def test_group_folds_are_scikit_learns_stratified_group_folds():
    """`folds.group_folds` deals the groups as scikit-learn's StratifiedGroupKFold(shuffle=True)
    does, fold for fold, on random labels and groups (single- and mixed-class, 2 to 5 folds)."""
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    from transferkit.folds import components, group_folds

    rng = np.random.default_rng(0)
    compared = 0
    for seed in range(60):
        n, k, folds = int(rng.integers(20, 300)), int(rng.integers(2, 12)), int(rng.integers(2, 6))
        y = rng.integers(0, k, n)
        a = rng.integers(0, n, int(rng.integers(1, n // 3)))
        same_class = seed % 2 == 0  # near copies of one class, or pairs across classes (mislabels)
        b = np.array([rng.choice(np.flatnonzero(y == y[i])) for i in a]) if same_class else rng.integers(0, n, len(a))
        groups = components(n, list(zip(a, b)))
        expected = np.empty(n, dtype=np.int64)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # (a class with fewer images than folds)
                for f, (_, test) in enumerate(StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(
                        np.zeros(n), y, groups)):
                    expected[test] = f
        except ValueError:  # (more folds than groups)
            continue
        np.testing.assert_array_equal(group_folds(y, groups, folds, seed), expected)
        compared += 1
    assert compared >= 50


def test_group_aware_folds_keep_near_identical_shots_together():
    """Runs of near-identical shots (labels random per run): plain K-fold recognises a run's twin
    across folds and reads far above chance; grouped folds read what the head can really do."""
    from transferkit.folds import group_folds, similar_groups
    from transferkit.training.heads import select_head

    rng = np.random.default_rng(0)
    centres, labels = rng.normal(size=(60, 32)), rng.integers(0, 2, 60)
    x = np.repeat(centres, 4, axis=0) + 0.01 * rng.normal(size=(240, 32))
    y = np.repeat(labels, 4)
    groups = similar_groups(x)
    assert groups.max() + 1 == 60 and (np.bincount(groups) == 4).all()
    folds = group_folds(y, groups, 5, seed=0)
    assert all(len(set(folds[groups == g])) == 1 for g in range(60))  # a run never split
    plain = select_head(x, y, 2, {"last": 32}, seed=0)
    grouped = select_head(x, y, 2, {"last": 32}, seed=0, last_width=32)
    assert plain.cv_accuracy > 0.9 and grouped.cv_accuracy < 0.75, (plain.cv_accuracy, grouped.cv_accuracy)
    assert grouped.groups == 60 and grouped.grouped_images == 240


def test_doctor_on_features_sharded_over_two_processes_finds_the_same(dirty, tmp_path):
    """`doctor --nproc 2` (#31): each process extracts and keeps its share of the features; the
    neighbours are found by passing each process's rows round, the out-of-fold heads are fitted
    by both together, the map's plane comes from the summed covariance. The report equals one
    process's on the same features (warm), finding for finding; the map's plane to its rounding."""
    import os
    import subprocess
    import sys

    data, truth = dirty
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "transferkit", "doctor", str(data), "--out", str(tmp_path / "two"),
                           "--nproc", "2"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("report: ") == 1  # the primary speaks for the group
    assert main(["doctor", str(data), "--out", str(tmp_path / "one")]) == 0
    two, one = (json.loads((tmp_path / name / "doctor.json").read_text()) for name in ("two", "one"))
    assert one["timings"]["features_s"] < two["timings"]["features_s"]  # (warm: the two processes cached them)
    for report in (one, two):
        report.pop("timings")
    assert two == one
    pairs = {frozenset((p["a"]["path"], p["b"]["path"])) for p in two["exact_duplicates"] + two["near_duplicates"]}
    assert frozenset(map(str, truth["near"])) in pairs and str(truth["flipped"]) in {x["path"] for x in two["label_issues"]}
    map_two, map_one = (json.loads((tmp_path / name / "doctor_map.json").read_text()) for name in ("two", "one"))
    assert map_two["predicted"] == map_one["predicted"]
    # the neighbours' cosines are computed in another order (scikit-learn's distances, here dot
    # products of unit rows): images within float32 round-off of each other may swap places
    overlap = [len(set(a) & set(b)) / len(a) for a, b in zip(map_two["neighbours"], map_one["neighbours"])]
    assert np.mean(overlap) >= 0.95 and min(overlap) >= 0.75
    assert np.abs(np.array(map_two["xy"]) - np.array(map_one["xy"])).max() <= 2e-3
