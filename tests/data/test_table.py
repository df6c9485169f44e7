"""Labels from a table (issue 39, single-label): `train DATA --labels FILE` (CSV/TSV, its columns),
DATA as the table itself, a Hugging Face metadata.csv, a pandas DataFrame in Python; the same
images and labels as folders or as a table train the same model; bad rows are one line naming
the file and line; eval and doctor read the same tables."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import pytest

import transferkit
from helpers import make_dataset
from transferkit.cli import main

TINY = dict(model="squeezenet1_1", weights="none", image_size=64, quiet=True)
FLAGS = ["--model", "squeezenet1_1", "--weights", "none", "--image-size", "64", "--quiet"]


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("tables")
    data = make_dataset(root / "data", classes=("blue", "red", "green"), n_train=4, n_val=2)
    rows = [(str(p.relative_to(data)), p.parent.name, "valid" if split == "val" else "train")
            for split in ("train", "val") for p in sorted((data / split).rglob("*.*"))]
    with open(root / "labels.csv", "w", newline="") as f:  # (shuffled: the order of the rows does not matter)
        csv.writer(f).writerows([("image", "label", "split"), *rows[::-1]])
    return {"root": root, "data": data, "rows": rows}


def _weights(run) -> str:
    return hashlib.sha256((Path(run.path) / "model.safetensors").read_bytes()).hexdigest()


def test_the_same_images_as_folders_or_as_a_table_train_the_same_model(tables, tmp_path):
    data = tables["data"]
    folders = transferkit.train(data, out=str(tmp_path / "folders"), **TINY)
    table = transferkit.train(data, out=str(tmp_path / "table"), labels=str(tables["root"] / "labels.csv"),
                              split_col="split", **TINY)
    assert _weights(folders) == _weights(table)
    assert (Path(folders.path) / "model.json").read_bytes() == (Path(table.path) / "model.json").read_bytes()
    assert folders.results["data"]["fingerprint"] == table.results["data"]["fingerprint"]
    # no split column: the seeded stratified split, the same as for DATA/<class>/ folders
    flat = tmp_path / "flat"
    for p in sorted((data / "train").rglob("*.png")):
        (flat / p.parent.name).mkdir(parents=True, exist_ok=True)
        os.link(p, flat / p.parent.name / p.name)
    (tmp_path / "flat.tsv").write_text("path\ty\n" + "".join(f"{p.relative_to(flat)}\t{p.parent.name}\n"
                                                            for p in sorted(flat.rglob("*.png"))))
    a = transferkit.train(flat, out=str(tmp_path / "flat-folders"), **TINY)
    b = transferkit.train(flat, out=str(tmp_path / "flat-table"), labels=str(tmp_path / "flat.tsv"), **TINY)
    assert _weights(a) == _weights(b) and a.results["num_val"] == b.results["num_val"]


def test_metadata_csv_a_dataframe_and_the_table_as_data(tables, tmp_path, capsys):
    import pandas as pd

    photos = tmp_path / "set" / "photos"
    photos.mkdir(parents=True)
    rows = []
    for i, (rel, label, split) in enumerate(tables["rows"]):
        os.link(tables["data"] / rel, photos / f"{i:03d}{Path(rel).suffix}")
        rows.append((f"{i:03d}{Path(rel).suffix}", label, split == "valid"))
    # Hugging Face's imagefolder: file_name and label, read with no option (BOM and CRLF too)
    (photos / "metadata.csv").write_bytes(b"\xef\xbb\xbf" + "file_name,label\r\n".encode()
                                          + "".join(f"{n},{c}\r\n" for n, c, _ in rows).encode())
    hf = transferkit.train(photos, out=str(tmp_path / "hf"), **TINY)
    assert hf.results["classes"] == ["blue", "green", "red"] and hf.results["num_train"] + hf.results["num_val"] == 18
    # fastai's from_df: a DataFrame with an is_valid column; paths absolute, or relative to the current folder
    frame = pd.DataFrame({"fname": [str(photos / n) for n, _, _ in rows], "label": [c for _, c, _ in rows],
                          "is_valid": [v for _, _, v in rows]})
    from_df = transferkit.train(frame, out=str(tmp_path / "df"), split_col="is_valid", **TINY)
    assert from_df.results["num_val"] == 6 and from_df.results["num_train"] == 12
    assert not [p for p in photos.iterdir() if p.suffix == ".csv" and p.name != "metadata.csv"]  # nothing written there
    # the table as DATA: its folder holds the images
    (photos / "metadata.csv").unlink()
    table = photos / ".." / "t.csv"
    table.write_text("file,class\n" + "".join(f"photos/{n},{c}\n" for n, c, _ in rows))
    capsys.readouterr()
    assert main(["train", str(table), "--out", str(tmp_path / "as-data"), *FLAGS]) == 0
    results = json.loads((tmp_path / "as-data" / "results.json").read_text())
    assert results["num_train"] + results["num_val"] == 18
    # eval and doctor read the same tables
    assert main(["eval", str(tmp_path / "as-data"), str(table), "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["num_images"] == 18
    assert main(["doctor", str(tmp_path / "set"), "--labels", str(table), "--out", str(tmp_path / "doc"),
                 "--quiet"]) == 0
    assert json.loads((tmp_path / "doc" / "doctor.json").read_text())["images"] == 18


@pytest.mark.parametrize("body, extra, words", [
    ("image,label\ntrain/blue/blue0.png,blue\n../elsewhere.png,red\n", [], "line 3: ../elsewhere.png is not inside"),
    ("image,label\n/etc/hostname,red\n", [], "line 2: /etc/hostname is not inside the dataset folder"),
    ("image,label\ntrain/blue/blue0.png,blue\ntrain/blue/blue0.png,red\n", ["--task", "single"],
     "train/blue/blue0.png is labelled on line 2 and again, differently, on line 3"),
    ("image,label\ntrain/blue/blue0.png,blue\ntrain/red/red0.png,\n", [], "line 3: the label cell is empty"),
    ("image,label,split\ntrain/blue/blue0.png,blue,train\ntrain/blue/blue0.png,blue,valid\n", ["--split-col", "split"],
     "is in the train split on line 2 and in the val split on line 3"),
    ("image,label\ntrain/blue/blue0.png,blue\n", ["--label-delim", ""], "--label-delim '': one to eight characters"),
    ("image,label,split\ntrain/blue/blue0.png,blue,holdout\n", ["--split-col", "split"],
     "line 2: the split value 'holdout' is not a split"),
    ("image,label\ntrain/blue/blue0.png,blue\n", ["--label-col", "klass"],
     "--label-col klass: --labels {file} has no such column; it has image, label"),
    ('image,label\ntrain/blue/blue0.png,"blue\ntrain/red/red0.png,red\n', [], "line 2: unexpected end of data"),
    ("image\ntrain/blue/blue0.png\n", [], "needs at least two columns"),
    ("image,label\nnope/a.png,blue\nnope/b.png,red\n", [], "none of the 2 image(s) it lists is there"),
])
def test_bad_rows_are_one_line_naming_the_file_and_line(tables, tmp_path, capsys, body, extra, words):
    file = tmp_path / "bad.csv"
    file.write_text(body)
    capsys.readouterr()
    assert main(["train", str(tables["data"]), "--labels", str(file), *extra, *FLAGS]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words.format(file=file) in err, err


def test_a_listed_file_that_is_gone_is_skipped_and_named(tables, tmp_path, capsys):
    rows = [r for r in tables["rows"] if r[2] == "train"]
    file = tmp_path / "gone.csv"
    file.write_text("image,label\n" + "".join(f"{p},{c}\n" for p, c, _ in rows) + "train/blue/gone.png,blue\n")
    run = transferkit.train(tables["data"], out=str(tmp_path / "r"), labels=str(file), **TINY)
    assert [s["path"] for s in run.results["skipped_files"]] == [str(tables["data"] / "train" / "blue" / "gone.png")]
    assert "line 14" in run.results["skipped_files"][0]["reason"]
    assert main(["train", str(tables["data"]), "--path-col", "image", *FLAGS]) == 2
    assert "name the columns of a --labels table" in capsys.readouterr().err


def test_metadata_csv_in_each_split_folder(tables, tmp_path):
    """Hugging Face imagefolder's other layout: a metadata.csv in train/ and in validation/, paths
    relative to each folder, each one's rows in its split."""
    import shutil

    data = tmp_path / "hf"
    for split, target in (("train", "train"), ("val", "validation")):
        shutil.copytree(tables["data"] / split, data / target)
        rows = [f"{p.relative_to(data / target).as_posix()},{p.parent.name}"
                for p in sorted((data / target).rglob("*.*"))]
        (data / target / "metadata.csv").write_text("file_name,label\n" + "\n".join(rows) + "\n")
    run = transferkit.train(data, out=str(tmp_path / "run"), **TINY)
    assert run.results["val_source"] == "table" and run.results["num_val"] == 6 and run.results["num_train"] == 12
