"""The fixes sidecar (data.fixes) and train --fixes: images left out or relabelled without
touching DATA; the file's format, its errors, and seeding it from doctor --write-exclude."""

from __future__ import annotations

import json

import pytest

import transferkit
from transferkit.data import fixes
from transferkit.errors import UserError

from helpers import file_tree, make_dataset

TINY = dict(model="squeezenet1_1", weights="none", image_size=64, quiet=True)


def test_file_round_trips_sorted_with_comments(tmp_path):
    data = make_dataset(tmp_path / "d")
    file = tmp_path / "d.fixes.csv"
    rows = [fixes.Fix("val/red/1.jpg", "relabel", "blue", "a blue one, really", "2026-12-04T00:00:00Z"),
            fixes.Fix("train/blue/0.jpg", "exclude", "", "near copy", "2026-12-04T00:00:01Z")]
    fixes.write_fixes(file, rows, data)
    text = file.read_text().splitlines()
    assert text[0].startswith("# transferkit fixes for") and text[1] == "path,action,label,reason,time"
    assert text[2].startswith("train/blue/0.jpg,exclude") and text[3].startswith('val/red/1.jpg,relabel,blue,"a blue')
    read = fixes.read_fixes(file, data)
    assert read == {f.path: f for f in rows}
    absolute = fixes.read_fixes(file, str(data))  # the same, whatever form the root is given in
    assert list(absolute) == ["train/blue/0.jpg", "val/red/1.jpg"]


@pytest.mark.parametrize("body, words", [
    ("# made by hand\npath,action,label,reason,time\ntrain/blue/0.jpg,delete\n",
     "line 3: action must be exclude, relabel, keep, add-label or remove-label"),
    ("path,action,label,reason,time\ntrain/blue/0.jpg,relabel\n", "line 2: relabel needs the new label"),
    ("path,action,label,reason,time\n../elsewhere/x.jpg,exclude\n", "is not inside the dataset"),
    ("file,what\nx,y\n", "must be the header path,action,label,reason,time"),
])
def test_bad_rows_are_one_line_errors(tmp_path, body, words):
    data = make_dataset(tmp_path / "d")
    (tmp_path / "f.csv").write_text(body)
    with pytest.raises(UserError, match=words.replace("(", r"\(")):
        fixes.read_fixes(tmp_path / "f.csv", data)


def test_train_honours_fixes_and_leaves_data_alone(tmp_path):
    data = make_dataset(tmp_path / "d", n_train=4, n_val=2)
    before = file_tree(data)
    val_red = sorted((data / "val" / "red").iterdir())[0]
    file = tmp_path / "fixes.csv"
    train_blue = sorted((data / "train" / "blue").iterdir())[0]
    fixes.write_fixes(file, [fixes.Fix(fixes.relative(train_blue, data), "exclude"),
                             fixes.Fix(fixes.relative(val_red, data), "relabel", "blue"),
                             fixes.Fix("train/red/gone.jpg", "exclude")], data)
    run = transferkit.train(data, out=str(tmp_path / "r"), fixes=str(file), **TINY)
    assert run.results["fixes"] == {"file": str(file), "excluded": 1, "relabelled": 1, "not_found": 1}
    split = json.loads((run.path / "split.json").read_text())
    assert run.results["num_train"] == 7 and run.results["num_val"] == 4
    labels = {p: split["classes"][label] for p, label in split["val"]}
    assert labels[str(val_red)] == "blue"
    assert file_tree(data) == before  # nothing in DATA moved, renamed or changed
    plain = transferkit.train(data, out=str(tmp_path / "p"), **TINY)
    assert plain.results["data"]["fingerprint"] != run.results["data"]["fingerprint"]


def test_relabel_to_an_unknown_class_and_emptied_class_are_refused(tmp_path):
    data = make_dataset(tmp_path / "d", n_train=2, n_val=1)
    file = tmp_path / "fixes.csv"
    some = fixes.relative(sorted((data / "train" / "red").iterdir())[0], data)
    fixes.write_fixes(file, [fixes.Fix(some, "relabel", "purple")])
    with pytest.raises(UserError, match="relabelled to 'purple', which is not a class of this dataset"):
        transferkit.train(data, out=str(tmp_path / "r"), fixes=str(file), **TINY)
    fixes.write_fixes(file, [fixes.Fix(fixes.relative(p, data), "exclude") for p in (data / "train" / "red").iterdir()])
    with pytest.raises(UserError, match="red"):
        transferkit.train(data, out=str(tmp_path / "r2"), fixes=str(file), **TINY)


def test_seeded_from_doctor_exclude_list(tmp_path):
    data = make_dataset(tmp_path / "d")
    inside = sorted((data / "train" / "red").iterdir())[0]
    (tmp_path / "exclude.txt").write_text(f"# from doctor\n{inside}\n/somewhere/else.jpg\n")
    (seeded,) = fixes.from_exclude(tmp_path / "exclude.txt", data)
    assert seeded.path == fixes.relative(inside, data) and seeded.action == "exclude"
    assert seeded.reason == "doctor --write-exclude"
