"""predict --out-dir: chunked, resumable, shared out over processes (--nproc / torchrun), with
--files-from; the merged file equals plain predict's output."""

from __future__ import annotations

import json

import pytest

import transferkit
from transferkit.cli import main

from helpers import make_dataset


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    data = make_dataset(root / "data", classes=("blue", "red", "green"), n_train=4, n_val=3)
    run = transferkit.train(data, out=str(root / "run"), model="squeezenet1_1", weights="none", image_size=64,
                            quiet=True).path
    files = sorted(str(p) for p in data.rglob("*.*") if p.suffix in (".png", ".jpg"))
    listing = root / "list.txt"
    # each file three times (66 lines and a missing file): chunks are whole batches of 32 images
    listing.write_text("# the files\n" + "".join(f"{p}\n" for p in files[:10]) + f"file://{files[10]}\n\n"
                       + "".join(f"{p}\n" for p in files[11:] + files + files) + f"{root / 'missing.jpg'}\n")
    return {"run": run, "files": files * 3, "list": listing, "root": root}


def _plain(batch, tmp_path) -> str:
    out = tmp_path / "plain.csv"
    assert main(["predict", str(batch["run"]), "--files-from", str(batch["list"]), "--output", str(out),
                 "--engine", "onnxruntime"]) == 0
    return out.read_text()


def test_chunks_manifest_merge_and_resume(batch, tmp_path, capsys):
    plain = _plain(batch, tmp_path)
    out = tmp_path / "preds"
    argv = ["predict", str(batch["run"]), "--files-from", str(batch["list"]), "--out-dir", str(out),
            "--chunk-size", "7", "--merge", "--engine", "onnxruntime"]
    assert main(argv) == 0
    # a chunk is a whole number of the model's batches (a batch's numbers depend, in the last
    # digits, on what else is in it): 7 is taken as 32, and said
    assert "--chunk-size 7 taken as 32" in capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"] == len(batch["files"]) + 1 and manifest["errors"] == 1  # the missing file
    total = len(batch["files"]) + 1
    assert [c["rows"] for c in manifest["chunks"]] == [32] * (total // 32) + ([total % 32] if total % 32 else [])
    assert len(manifest["chunks"]) >= 2
    assert manifest["resumed_chunks"] == 0
    assert (out / "predictions.csv").read_text() == plain  # the same text as one plain predict
    # killed after some chunks: those written stay, the rest is done, nothing twice
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "chunks").iterdir()}
    for name in ("chunk-000001.csv",):
        (out / "chunks" / name).unlink()
    (out / "chunks" / "chunk-000001 (copy).csv").write_text("a stray copy: not a chunk\n")
    (out / "predictions.csv").unlink()
    (out / "manifest.json").unlink()
    assert main(argv) == 0
    again = json.loads((out / "manifest.json").read_text())
    assert again["resumed_chunks"] == len(kept) - 1 and again["files"] == manifest["files"]
    for name, mtime in kept.items():
        if name != "chunk-000001.csv":
            assert (out / "chunks" / name).stat().st_mtime_ns == mtime  # not redone
    assert (out / "predictions.csv").read_text() == plain
    capsys.readouterr()
    other = [a if a != "7" else "40" for a in argv]  # another chunk size (64): another run's folder
    assert main(other) == 2
    assert "holds the predictions of another run" in capsys.readouterr().err


def test_two_processes_predict_what_one_does(batch, tmp_path):
    plain = _plain(batch, tmp_path)
    out = tmp_path / "two"
    assert main(["predict", str(batch["run"]), "--files-from", str(batch["list"]), "--out-dir", str(out),
                 "--chunk-size", "6", "--merge", "--engine", "onnxruntime", "--nproc", "2"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["processes"] == 2 and {c["rank"] for c in manifest["chunks"]} == {0, 1}
    assert (out / "predictions.csv").read_text() == plain


@pytest.mark.parametrize("extra, words", [
    ([], "give images or folders to predict, or --files-from LIST"),
    (["IMAGES", "--nproc", "2"], "--nproc writes into --out-dir DIR"),
    (["IMAGES", "--out-dir", "OUT", "--output", "x.csv"], "--output and --out-dir: give one"),
    (["IMAGES", "--chunk-size", "0", "--out-dir", "OUT"], "--chunk-size must be 1 or more"),
    (["--files-from", "NOLIST", "--out-dir", "OUT"], "--files-from"),
])
def test_bad_usage_is_one_line(batch, tmp_path, capsys, extra, words):
    argv = [a.replace("IMAGES", batch["files"][0]).replace("OUT", str(tmp_path / "o"))
            .replace("NOLIST", str(tmp_path / "nolist.txt")) for a in extra]
    assert main(["predict", str(batch["run"]), *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1, err
