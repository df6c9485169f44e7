"""Bad input and faults: the user's files are never deleted or written into, every fault is one
clear line, nothing untrustworthy is loaded. Every bad file is made here, at test time."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

import transferkit
from helpers import make_dataset, make_image
from transferkit.cli import main

TINY = dict(model="squeezenet1_1", weights="none", image_size=64, quiet=True)


def _digest(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    data = make_dataset(root / "d", n_train=4, n_val=2)
    return data, transferkit.train(data, out=str(root / "run"), **TINY).path


# -- A. the user's files --------------------------------------------------------------------------


def test_cache_clear_deletes_only_what_the_cache_wrote(tmp_path, capsys):
    photos = tmp_path / "photos"
    make_image(photos / "cat.png", (10, 20, 30))
    (photos / "thesis.tex").write_text("precious")
    before = _digest(photos)
    assert main(["cache", "clear", "--cache-dir", str(photos)]) == 2
    assert "is not a transferkit cache" in capsys.readouterr().err and _digest(photos) == before
    with pytest.raises(transferkit.UserError, match="not transferkit's"):  # and never written into
        transferkit.train(make_dataset(tmp_path / "d", n_train=2, n_val=1), cache_dir=str(photos), **TINY)
    assert _digest(photos) == before

    cache = tmp_path / "cache"
    transferkit.train(make_dataset(tmp_path / "d2", n_train=2, n_val=1), cache_dir=str(cache),
                      out=str(tmp_path / "r"), model="efficientnet_lite0", quiet=True)
    (cache / "notes.txt").write_text("mine")  # a file of the user's that landed in the cache folder
    assert main(["cache", "clear", "--cache-dir", str(cache), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would remove" in out and "features/" in out and (cache / "features").is_dir()
    assert main(["cache", "clear", "--cache-dir", str(cache)]) == 0
    assert sorted(p.name for p in cache.iterdir()) == ["notes.txt"]


def test_a_run_never_lands_inside_the_data_and_own_folders_are_no_class(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "d", n_train=2, n_val=1, with_val=False)
    monkeypatch.chdir(data)
    with pytest.raises(transferkit.UserError, match="would be inside the dataset"):
        transferkit.train(".", **TINY)
    assert not (data / "runs").exists()
    # a transferkit folder that is inside anyway (copied there) is not taken as a class or as images
    run = transferkit.train(data, out=str(tmp_path / "r"), **TINY)
    import shutil

    shutil.copytree(run.path, data / "old-run")
    shutil.copytree(run.path, data / "train" / "red" / "nested-run")
    again = transferkit.train(data, out=str(tmp_path / "r2"), **TINY)
    assert again.results["classes"] == ["blue", "red"]
    assert not any("run" in s["path"] for s in again.results["skipped_files"])


def test_no_command_writes_into_its_data_or_over_a_file_it_did_not_write(run, tmp_path, monkeypatch, capsys):
    """One rule for every path a command writes: never inside a dataset or input folder it was
    given (named, or the default under the current folder); never over a file transferkit did not
    write unless --force; FIFOs and devices written through, symbolic links followed, neither
    replaced. The data is byte-identical afterwards."""
    data, folder = run
    before = _digest(data)
    photo = data / "train" / "blue" / "blue0.png"
    refused = [
        ["doctor", str(data), "--write-exclude", str(photo), "--out", str(tmp_path / "doc")],
        ["doctor", str(data), "--out", str(data / "report")],
        ["eval", str(folder), str(data), "--out", str(data / "eval")],
        ["eval", str(folder), "--out", str(data / "val" / "eval")],  # the run's own training data
        ["export", str(folder), "--format", "onnx", "--out", str(data / "export")],
        ["predict", str(folder), str(data / "val"), "--output", str(data / "val" / "preds.csv")],
        ["predict", str(folder), str(data / "val"), "--output", str(photo)],
        ["train", str(data), "--cache-dir", str(data / "cache"), "--out", str(tmp_path / "r")],
        ["doctor", str(data), "--cache-dir", str(data / "train" / "cache"), "--out", str(tmp_path / "doc")],
    ]
    capsys.readouterr()
    for args in refused:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "never writes into your data" in err and err.count("\n") == 1, err
    monkeypatch.chdir(data)  # `cd DATA && transferkit doctor .`: the default ./runs would be inside
    assert main(["doctor", ".", "--quiet"]) == 2 and "never writes into your data" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    assert _digest(data) == before and not (data / "runs").exists()

    mine = tmp_path / "notes.csv"  # a file of the user's: replaced only with --force
    mine.write_text("my,own,notes\n")
    for args in (["predict", str(folder), str(data / "val"), "--output", str(mine)],
                 ["doctor", str(data), "--write-exclude", str(mine), "--out", str(tmp_path / "doc"), "--quiet"]):
        assert main(args) == 2 and "was not written by transferkit" in capsys.readouterr().err
        assert mine.read_text() == "my,own,notes\n"
    preds = tmp_path / "preds.csv"
    assert main(["predict", str(folder), str(data / "val"), "--output", str(preds)]) == 0
    assert main(["predict", str(folder), str(data / "val"), "--output", str(preds)]) == 0  # its own: replaced
    assert main(["predict", str(folder), str(data / "val"), "--output", str(mine), "--force"]) == 0
    assert mine.read_text() == preds.read_text()

    link = tmp_path / "link.csv"  # a symbolic link: its target written, the link kept
    link.symlink_to(preds)
    assert main(["predict", str(folder), str(data / "val"), "--top-k", "1", "--output", str(link)]) == 0
    assert link.is_symlink() and "top2_label" not in preds.read_text()
    fifo = tmp_path / "fifo"  # a FIFO: written through, still a FIFO
    os.mkfifo(fifo)
    import threading

    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    assert main(["predict", str(folder), str(data / "val"), "--output", str(fifo)]) == 0
    reader.join(timeout=60)
    assert got and got[0].startswith("path,label,probability,") and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert main(["predict", str(folder), str(data / "val"), "--output", "/dev/null"]) == 0
    capsys.readouterr()
    if Path("/dev/full").exists():  # a device that is full: one line, nothing claimed
        assert main(["predict", str(folder), str(data / "val"), "--output", "/dev/full"]) == 1
        out, err = capsys.readouterr()
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "Traceback" not in err and "written" not in out, err
    assert Path("/dev/null").is_char_device() and _digest(data) == before


def test_retraining_into_a_run_folder_leaves_nothing_of_the_old_model(run, tmp_path):
    data, first = run
    folder = tmp_path / "r"
    transferkit.train(data, out=str(folder), **TINY)
    transferkit.export(folder, "onnx", runs=1)
    transferkit.evaluate(folder)
    (folder / "notes.txt").write_text("the user's")
    assert (folder / "export" / "model.onnx").is_file() and (folder / "eval-val").is_dir()
    transferkit.train(data, out=str(folder), **TINY)
    assert not (folder / "export").exists() and not (folder / "eval-val").exists()
    assert (folder / "notes.txt").read_text() == "the user's" and (folder / "model.json").is_file()


def test_an_unfinished_run_is_continued_not_overwritten(tmp_path):
    data = make_dataset(tmp_path / "d", n_train=2, n_val=1)
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "config.yaml").write_text("x: 1\n")
    (folder / "checkpoint.pt").write_bytes(b"...")
    with pytest.raises(transferkit.UserError, match="unfinished run .*--resume"):
        transferkit.train(data, out=str(folder), strategy="finetune", epochs=1, **TINY)
    assert (folder / "checkpoint.pt").read_bytes() == b"..."


def test_the_report_process_runs_at_the_callers_priority():
    from transferkit.worker import Worker

    with Worker(always=True) as worker:
        assert os.getpriority(os.PRIO_PROCESS, worker.proc.pid) == os.getpriority(os.PRIO_PROCESS, 0)


# -- B. layout ------------------------------------------------------------------------------------


def test_usual_split_names_are_recognised(tmp_path):
    from transferkit.data.discover import discover

    root = tmp_path / "d"
    for split, n in (("training", 3), ("validation", 2)):
        for c in ("blue", "red"):
            for i in range(n):
                make_image(root / split / c / f"{c}{i}.png", (30, 60, 200) if c == "blue" else (200, 40, 30), seed=i)
    split = discover(root)
    assert split.classes == ["blue", "red"] and split.val_source == "folder" and len(split.val) == 4
    make_image(tmp_path / "e" / "cats" / "a.png", (1, 2, 3))
    make_image(tmp_path / "e" / "test" / "a.png", (1, 2, 3))
    with pytest.raises(transferkit.UserError, match="named like a split"):
        discover(tmp_path / "e")


def test_eval_accepts_val_only_data_and_a_subset_of_the_classes(run, tmp_path):
    data, folder = run
    held_out = tmp_path / "h"
    make_image(held_out / "val" / "red" / "r.png", (200, 40, 30), seed=7)
    make_image(held_out / "val" / "red" / "s.png", (200, 40, 30), seed=8)
    summary = transferkit.evaluate(folder, held_out, out=tmp_path / "e")
    assert summary["num_images"] == 2 and summary["per_class"]["red"]["support"] == 2
    make_image(tmp_path / "u" / "green" / "g.png", (40, 180, 60))
    make_image(tmp_path / "u" / "red" / "g.png", (200, 40, 30))
    with pytest.raises(transferkit.UserError, match="not trained on: green"):
        transferkit.evaluate(folder, tmp_path / "u")


# -- E. files, links, permissions -------------------------------------------------------------------


def test_broken_links_and_link_loops(tmp_path, capsys):
    data = make_dataset(tmp_path / "d", n_train=3, n_val=2)
    os.symlink(tmp_path / "nowhere.jpg", data / "train" / "red" / "broken.jpg")
    os.symlink(data / "train" / "red", data / "train" / "red" / "loop")
    run = transferkit.train(data, out=str(tmp_path / "r"), **TINY)
    skipped = {Path(s["path"]).name: s["reason"] for s in run.results["skipped_files"]}
    assert skipped == {"broken.jpg": "broken symbolic link"}
    assert run.results["num_train"] == 6  # each image once, the loop walked once
    assert main(["predict", str(run.path), str(data / "train" / "red")]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[1:]
    assert len(rows) == 4  # 3 images + the broken link (with its reason), not 41 times each


def test_an_unreadable_file_says_so_and_is_not_remembered(tmp_path, monkeypatch):
    """A permission problem lies in the environment, not the file's bytes: it is reported as such
    and never cached, so the file is used once the user fixes it."""
    from transferkit.data import decode

    data = make_dataset(tmp_path / "d", n_train=3, n_val=2)
    locked = data / "train" / "red" / "red0.png"
    real_open = decode.Image.open

    def deny(fp, *a, **kw):
        if str(fp) == str(locked):
            raise PermissionError(errno.EACCES, "Permission denied", str(locked))
        return real_open(fp, *a, **kw)

    monkeypatch.setattr(decode.Image, "open", deny)
    first = transferkit.train(data, out=str(tmp_path / "a"), model="efficientnet_lite0", quiet=True)
    assert {Path(s["path"]).name: s["reason"] for s in first.results["skipped_files"]} == {"red0.png": "permission denied"}
    monkeypatch.setattr(decode.Image, "open", real_open)
    second = transferkit.train(data, out=str(tmp_path / "b"), model="efficientnet_lite0", quiet=True)
    assert not second.results["skipped_files"] and second.results["num_train"] == 6


def test_an_unreadable_folder_is_listed(tmp_path, monkeypatch):
    from transferkit.data.discover import list_files

    data = make_dataset(tmp_path / "d", n_train=2, n_val=1)
    (data / "train" / "red" / "sub").mkdir()
    real = os.scandir

    def deny(path="."):
        if str(path).endswith("sub"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", deny)
    unreadable = []
    assert len(list_files(data / "train" / "red", unreadable)) == 2
    assert unreadable == [{"path": str(data / "train" / "red" / "sub"), "reason": "folder not readable (permission denied)"}]


# -- F. numbers -------------------------------------------------------------------------------------


def test_a_diverging_loss_stops_training_and_saves_nothing(tmp_path):
    data = make_dataset(tmp_path / "d", n_train=3, n_val=2)
    with pytest.raises(transferkit.UserError, match="training loss became (nan|inf).*lower --lr"):
        transferkit.train(data, out=str(tmp_path / "r"), strategy="finetune", epochs=2, lr=1e30, **TINY)
    assert not (tmp_path / "r" / "model.safetensors").exists()


# -- G. the bundle is trusted only when it checks out -----------------------------------------------


def test_a_damaged_or_crafted_bundle_is_refused(run, tmp_path):
    import shutil

    data, folder = run
    copy = Path(shutil.copytree(folder, tmp_path / "copy"))
    weights = copy / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-10] ^= 0x01  # one flipped bit in the weights
    weights.write_bytes(bytes(raw))
    with pytest.raises(transferkit.UserError, match="does not match the checksum"):
        transferkit.load(copy)
    shutil.copy(folder / "model.safetensors", weights)
    meta = json.loads((copy / "model.json").read_text())
    for field, value, message in (("preprocess", {**meta["preprocess"], "input_size": 100000}, "input_size 100000"),
                                  ("classes", ["only"], "classes must be"), ("dropout", 7, "dropout")):
        (copy / "model.json").write_text(json.dumps({**meta, field: value}))
        with pytest.raises(transferkit.UserError, match=message):
            transferkit.load(copy)


# -- H. output a person reads -------------------------------------------------------------------------


def test_csv_cells_are_never_formulas(tmp_path, capsys):
    root = tmp_path / "d"
    for c, color in (("=HYPERLINK(1)", (30, 60, 200)), ("@cmd", (200, 40, 30))):
        for i in range(4):
            make_image(root / "train" / c / f"+{i}.png", color, seed=i)
        make_image(root / "val" / c / "-v.png", color, seed=9)
    run = transferkit.train(root, out=str(tmp_path / "r"), **TINY)
    for name in ("predictions.csv", "misclassified.csv"):
        for line in (run.path / name).read_text().splitlines()[1:]:
            assert not any(cell.startswith(("=", "+", "@")) for cell in line.split(",")), line
    assert transferkit.report(run.path).is_file()  # read back: the class names are the real ones
    assert main(["predict", str(run.path), str(root / "val")]) == 0
    for line in capsys.readouterr().out.splitlines()[1:]:
        cells = line.split(",")
        assert cells[1].startswith("'") and not cells[0].startswith(("=", "+", "-", "@"))


def test_quiet_is_quiet_and_prediction_errors_read_the_same_everywhere(tmp_path, capsys):
    from transferkit.prediction.outputs import to_json

    data = make_dataset(tmp_path / "d", n_train=2, n_val=1)
    run = transferkit.train(data, out=str(tmp_path / "r"), **TINY)
    assert capsys.readouterr().out == ""
    with transferkit.load(run.path) as model:
        good, bad = model.predict([data / "val" / "red" / "red0.jpg", b"nope"])
    assert good.error is None and bad.error
    assert [p["error"] for p in json.loads(to_json([good, bad]))] == [None, bad.error]


def test_run_files_respect_the_umask(tmp_path):
    data = make_dataset(tmp_path / "d", n_train=2, n_val=1)
    old = os.umask(0o022)
    try:
        run = transferkit.train(data, out=str(tmp_path / "r"), **TINY)
    finally:
        os.umask(old)
    for name in ("model.safetensors", "model.json", "results.json", "config.yaml", "predictions.csv"):
        assert stat.S_IMODE((run.path / name).stat().st_mode) == 0o644, name


# -- D. every I/O fault is one line -------------------------------------------------------------------


@pytest.mark.parametrize("case", ["out_under_a_file", "output_dir_missing", "disk_full", "damaged_metrics"])
def test_io_faults_are_one_line(run, tmp_path, capsys, monkeypatch, case):
    data, folder = run
    if case == "out_under_a_file":
        (tmp_path / "file").write_text("x")
        args = ["train", str(data), "--out", str(tmp_path / "file" / "run"), "--quiet"]
    elif case == "output_dir_missing":
        args = ["predict", str(folder), str(data / "val"), "--output", str(tmp_path / "no" / "such" / "p.csv")]
    elif case == "disk_full":
        def full(src, dst):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))

        monkeypatch.setattr(os, "replace", full)  # every file transferkit writes ends in a rename
        args = ["eval", str(folder), "--out", str(tmp_path / "e")]
    else:
        import shutil

        copy = Path(shutil.copytree(folder, tmp_path / "copy"))
        (copy / "metrics.json").write_text("{ not json")
        args = ["report", str(copy)]
    rc = main(args)
    err = capsys.readouterr().err
    assert rc in (1, 2) and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err


# -- C. interrupts ------------------------------------------------------------------------------------

CLI_TINY = ["--model", "squeezenet1_1", "--weights", "none", "--image-size", "64", "--quiet"]


@pytest.mark.parametrize("signal_name, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_an_interrupted_run_keeps_its_best_epoch_and_exits_with_the_signal(tmp_path, capsys, monkeypatch,
                                                                          signal_name, code):
    from transferkit.errors import Terminated
    from transferkit.training import loop

    data = make_dataset(tmp_path / "d", n_train=3, n_val=2)
    real, calls = loop.train_one_epoch, []

    def stop_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt() if signal_name == "SIGINT" else Terminated()
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_one_epoch", stop_in_epoch_2)
    rc = main(["train", str(data), "--out", str(tmp_path / "r"), "--strategy", "finetune", "--epochs", "3",
               *CLI_TINY])
    err = capsys.readouterr().err
    assert rc == code and "Traceback" not in err and "interrupted" in err
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["interrupted"] and results["stopped_by"] == signal_name and results["best_epoch"] == 1
    for name in ("model.safetensors", "report.html", "checkpoint.pt"):
        assert (tmp_path / "r" / name).is_file()


def test_ctrl_c_before_anything_was_trained_is_one_line(tmp_path, capsys, monkeypatch):
    from transferkit.training import context

    def interrupt(self, ctx):
        raise KeyboardInterrupt()

    monkeypatch.setattr(context.CachedFeatures, "get", interrupt)
    data = make_dataset(tmp_path / "d", n_train=2, n_val=1)
    assert main(["train", str(data), "--out", str(tmp_path / "r"), "--quiet"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("interrupted: nothing was trained yet")


def test_the_report_process_outlives_a_ctrl_c(tmp_path):
    import signal
    import time

    from transferkit.worker import WRITE_EVALUATION, Worker

    warnings = []
    with Worker(warnings.append, always=True) as worker:
        time.sleep(0.5)
        os.kill(worker.proc.pid, signal.SIGINT)
        summary = worker.call(WRITE_EVALUATION, tmp_path, ["a.jpg", "b.jpg"], np.array([0, 1]),
                              np.array([[2.0, 0.0], [0.0, 2.0]]), ["x", "y"])
    assert summary["accuracy"] == 1.0 and not warnings


def test_help_and_output_text(run, capsys):
    """Help lists what applies, a bad value is one line, metrics.csv has no repeated L-BFGS row."""
    data, folder = run
    for command, absent in ((["lr-find"], ("--no-report", "--resume", "--epochs", "--patience")),
                            (["eval"], ("--output",))):
        with pytest.raises(SystemExit):
            main(command + ["--help"])
        text = capsys.readouterr().out
        assert not [flag for flag in absent if f"{flag} " in text], text
    with pytest.raises(SystemExit) as exc:
        main(["train", str(data), "--epochs", "ten"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.count("\n") == 1 and err.startswith("error: argument --epochs: invalid int value")
    import csv

    linear = transferkit.train(data, model="efficientnet_lite0", out=str(folder.parent / "lin"), quiet=True)
    steps = [int(r["iteration"]) for r in csv.DictReader(open(linear.path / "metrics.csv"))]
    assert steps == sorted(set(steps)) and steps[-1] == linear.results["head_iterations"]
    page = (linear.path / "report.html").read_text()
    settings = page[page.index("<h2>Settings</h2>"):]
    for unused in ("epochs", "batch_size", "schedule", "patience"):  # the L-BFGS head takes none of them
        assert f"<td>{unused}</td>" not in settings
    assert "overflow-wrap:anywhere" in page  # long file names under thumbnails wrap instead of overlapping


def test_class_names_in_any_script_read_correctly_in_the_plots(tmp_path):
    """Chinese class names: the plots use an installed font that has their characters (make test
    installs one, Debian's fonts-wqy-microhei), and matplotlib reports no missing glyph."""
    import warnings

    from transferkit.evaluation import plots

    names = ["猫", "狗子"]
    font = plots.font_for(names)
    if font is None or not {ord(c) for n in names for c in n} <= plots._glyphs(str(font)):
        pytest.skip("no installed font has CJK characters (`make test` installs fonts-wqy-microhei)")
    root = tmp_path / "d"
    for c, color in zip(names, ((30, 60, 200), (200, 40, 30))):
        for i in range(3):
            make_image(root / "train" / c / f"{i}.png", color, seed=i)
        make_image(root / "val" / c / "v.png", color, seed=9)
    run = transferkit.train(root, out=str(tmp_path / "r"), no_report=True, **TINY)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        transferkit.report(run.path)
    assert not [w for w in caught if "missing from" in str(w.message)], [str(w.message) for w in caught]
    assert (run.path / "confusion_matrix.png").is_file() and (run.path / "predictions.png").is_file()


def test_users_bytes_reach_the_terminal_escaped(run, tmp_path, capsys):
    """A file name with a terminal escape sequence and a CR/LF is quoted escaped in every line
    that names it (a warning, an error): never obeyed by the terminal, never a forged line."""
    data, folder = run
    photos = tmp_path / "in"
    photos.mkdir()
    evil = "bad\x1b[2J\r\nerror: forged.jpg"
    (photos / evil).write_bytes(b"not an image")
    make_image(photos / "ok.png", (30, 60, 200))
    assert main(["predict", str(folder), str(photos), "--output", str(tmp_path / "p.csv")]) == 0
    assert main(["predict", str(folder), str(photos / "missing\x1b]0;title\x07.jpg")]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\r" not in err and "\x07" not in err
    assert not any(line.startswith("error: forged") for line in err.splitlines())
    assert "bad\\x1b[2J\\r\\nerror: forged.jpg" in err, err


def _damaged_exif_jpeg(path: Path) -> None:
    """A JPEG whose EXIF block holds a text value under a numeric tag (XResolution), beside a
    rotation: Pillow's EXIF transpose raises on it."""
    import io
    import struct

    from PIL import Image

    entries = [(0x0112, 3, 1, b"\x06\x00"), (0x011A, 2, 4, b"xyz\x00")]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI", t, k, n) + v.ljust(4, b"\0")
                                                       for t, k, n, v in entries) + struct.pack("<I", 0)
    buf = io.BytesIO()
    Image.new("RGB", (48, 40), (30, 60, 200)).save(buf, "JPEG", exif=b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + ifd)
    path.write_bytes(buf.getvalue())


def test_inputs_no_test_had_are_answered_not_tracebacks(run, tmp_path, capsys):
    """Damaged EXIF, a file name that is not UTF-8, arguments of the wrong type, one image given
    alone, an ONNX file whose metadata does not fit its model: each works or is one clear error."""
    data, folder = run
    photos = tmp_path / "in"
    photos.mkdir()
    _damaged_exif_jpeg(photos / "exif.jpg")
    make_image(photos / "plain.png", (200, 40, 30))
    os.rename(photos / "plain.png", os.path.join(os.fsencode(photos), b"pl\xffain.png"))
    out = tmp_path / "p.csv"
    assert main(["predict", str(folder), str(photos), "--output", str(out)]) == 0
    rows = out.read_bytes().splitlines()[1:]
    assert len(rows) == 2 and all(row.endswith(b",") for row in rows)  # the last column, error, is empty
    assert b"pl\xffain.png" in out.read_bytes()  # the file name's own bytes
    with transferkit.load(folder) as model:
        one = model.predict(str(photos / "exif.jpg"))
        assert len(one) == 1 and one[0].error is None and one[0].label in ("blue", "red")
        assert len(model.predict((photos / "exif.jpg").read_bytes())) == 1
        with pytest.raises(transferkit.UserError, match="list of paths"):
            model.predict(42)
    for call in (lambda: transferkit.train(123), lambda: transferkit.load(["x"]),
                 lambda: transferkit.evaluate(folder, data=3.5), lambda: transferkit.doctor(None),
                 lambda: transferkit.export(123), lambda: transferkit.report(b"")):
        with pytest.raises(transferkit.UserError, match="must be a path"):
            call()
    import onnx
    from onnx import TensorProto, helper

    meta = json.loads((folder / "model.json").read_text())
    pre = meta["preprocess"]
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["output"])],
        "two", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 4, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor("w", TensorProto.FLOAT, [48, 2], [0.0] * 96)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    from transferkit.sessions.metadata import META_KEY

    helper.set_model_props(model, {META_KEY: json.dumps({"classes": ["a", "b", "c"], "preprocess": pre})})
    onnx.save(model, tmp_path / "three.onnx")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "three.onnx"), str(photos)]) == 2
    err = capsys.readouterr().err
    assert "names 3 classes" in err and err.count("\n") == 1, err
