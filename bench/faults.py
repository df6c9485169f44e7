"""Bad input and fault corpus: every case runs the real command in its own process.

    python bench/faults.py [--keep]

Each case is a bad input or a fault a user meets (a corrupt image, a link loop, a wrong option, a
damaged bundle, a file where a folder should be, ...), built here at run time. For every case it
records the exit status, whether stderr holds a Python traceback, whether the error is one line,
and whether the user's data (hashed before and after) changed. Prints a table and the totals;
exits 1 when any case printed a traceback or changed the user's files. Not a test: it takes a few
minutes (each case starts Python and imports torch).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

TINY = ["--model", "squeezenet1_1", "--weights", "none", "--image-size", "64", "--quiet"]


def image(path: Path, color, size=(64, 48), seed=0, fmt=None) -> Path:
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(color) + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def dataset(root: Path, classes=("blue", "red"), n=4, val=True) -> Path:
    colors = {"blue": (30, 60, 200), "red": (200, 40, 30), "green": (40, 180, 60)}
    for k, c in enumerate(classes):
        for i in range(n):
            image(root / "train" / c / f"{i}.png", colors.get(c, (120, 120, 120)), seed=10 * k + i)
            if val and i < 2:
                image(root / "val" / c / f"v{i}.png", colors.get(c, (120, 120, 120)), seed=100 + 10 * k + i)
    return root


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink():
            h.update(os.fsencode(str(p.relative_to(folder))) + p.read_bytes())
    return h.hexdigest()


def cases(w: Path) -> list[tuple]:
    """(name, CLI arguments, the user's data folder to check or None[, the folder to run in])."""
    out: list[tuple[str, list[str], Path | None]] = []

    def data(name: str, **kw) -> Path:
        return dataset(w / name, **kw)

    good = data("good")
    run = w / "run"
    subprocess.run([sys.executable, "-m", "transferkit", "train", str(good), "--out", str(run), *TINY], check=True)

    bad = data("bad-images")
    (bad / "train" / "red" / "empty.jpg").write_bytes(b"")
    (bad / "train" / "red" / "text.jpg").write_text("not an image")
    buf = io.BytesIO()
    Image.new("RGB", (80, 80), (1, 2, 3)).save(buf, "JPEG")
    (bad / "train" / "red" / "cut.jpg").write_bytes(buf.getvalue()[:200])
    Image.new("L", (40, 40), 90).save(bad / "train" / "blue" / "gray.png")
    Image.new("P", (40, 40)).save(bad / "train" / "blue" / "palette.gif")
    Image.new("RGBA", (40, 40), (0, 0, 0, 0)).save(bad / "train" / "blue" / "alpha.png")
    Image.new("I;16", (40, 40)).save(bad / "train" / "blue" / "deep.png")
    out.append(("corrupt, empty, odd-mode images", ["train", str(bad), "--out", str(w / "r1"), *TINY], bad))

    links = data("links")
    os.symlink(w / "nowhere.jpg", links / "train" / "red" / "broken.jpg")
    os.symlink(links / "train" / "red", links / "train" / "red" / "loop")
    out.append(("broken link and link loop", ["train", str(links), "--out", str(w / "r2"), *TINY], links))
    out.append(("predict on a folder with a link loop", ["predict", str(run), str(links / "train")], links))

    splits = w / "splits"
    for split, n in (("training", 4), ("validation", 2)):
        for c in ("blue", "red"):
            for i in range(n):
                image(splits / split / c / f"{i}.png", (30, 60, 200) if c == "blue" else (200, 40, 30), seed=i)
    out.append(("training/ + validation/ split names", ["train", str(splits), "--out", str(w / "r3"), *TINY], splits))
    like = data("split-like", val=False)
    shutil.move(str(like / "train" / "red"), str(like / "test"))
    shutil.move(str(like / "train" / "blue"), str(like / "blue"))
    (like / "train").rmdir()
    out.append(("class folder named like a split", ["train", str(like), *TINY], like))

    inside = data("inside")
    out.append(("run folder inside the data", ["train", str(inside), "--out", str(inside / "runs" / "x"), *TINY], inside))

    photos = w / "photos"
    image(photos / "holiday.png", (1, 2, 3))
    (photos / "thesis.tex").write_text("precious")
    out.append(("cache clear on a folder of photos", ["cache", "clear", "--cache-dir", str(photos)], photos))
    out.append(("train with a folder of photos as cache", ["train", str(good), "--cache-dir", str(photos), *TINY], photos))

    mine = w / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    out.append(("--out a folder of the user's", ["train", str(good), "--out", str(mine), *TINY], mine))
    (w / "afile").write_text("x")
    out.append(("--out under a file", ["train", str(good), "--out", str(w / "afile" / "run"), *TINY], good))
    out.append(("--output in a missing folder", ["predict", str(run), str(good / "val"), "--output",
                                                str(w / "no" / "such" / "p.csv")], good))
    for name, args in (("--lr inf", ["--strategy", "finetune", "--lr", "inf"]),
                       ("--lr nan", ["--strategy", "finetune", "--lr", "nan"]),
                       ("--dropout nan", ["--strategy", "finetune", "--dropout", "nan"]),
                       ("--epochs ten", ["--epochs", "ten"]),
                       ("--unfreeze with finetune", ["--strategy", "finetune", "--unfreeze", "3"]),
                       ("--teacher with linear", ["--teacher", str(run)]),
                       ("--seed -1", ["--seed", "-1"]),
                       ("--image-size 100000", ["--image-size", "100000"]),
                       ("--strategy magic", ["--strategy", "magic"]),
                       ("huge lr: the loss diverges", ["--strategy", "finetune", "--lr", "1e30", "--epochs", "2"])):
        out.append((name, ["train", str(good), "--out", str(w / f"opt-{len(out)}"), *TINY, *args], good))
    out.append(("export --max-drop nan", ["export", str(run), "--max-drop", "nan"], good))
    out.append(("export --runs 0", ["export", str(run), "--runs", "0"], good))
    yaml = w / "cfg.yaml"
    yaml.write_text("lr: 1e-3\nstrategy: finetune\nepochs: 1\n")
    out.append(("YAML lr: 1e-3", ["train", str(good), "--config", str(yaml), "--out", str(w / "r-yaml"), *TINY], good))

    flipped = Path(shutil.copytree(run, w / "flipped"))
    raw = bytearray((flipped / "model.safetensors").read_bytes())
    raw[-8] ^= 0x10
    (flipped / "model.safetensors").write_bytes(bytes(raw))
    out.append(("bundle with flipped bits", ["predict", str(flipped), str(good / "val")], good))
    crafted = Path(shutil.copytree(run, w / "crafted"))
    meta = json.loads((crafted / "model.json").read_text())
    meta["preprocess"]["input_size"] = 100000
    (crafted / "model.json").write_text(json.dumps(meta))
    out.append(("model.json with input_size 100000", ["predict", str(crafted), str(good / "val")], good))
    damaged = Path(shutil.copytree(run, w / "damaged"))
    (damaged / "metrics.json").write_text("{ not json")
    (damaged / "predictions.csv").write_text("garbage\n\x00\x01")
    out.append(("report of a damaged metrics.json", ["report", str(damaged)], good))
    garbage = w / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    out.append(("--weights a garbage .safetensors", ["train", str(good), "--model", "squeezenet1_1", "--weights",
                                                     str(garbage), "--quiet"], good))
    out.append(("predict a garbage .onnx", ["predict", str(garbage.with_suffix(".onnx")), str(good / "val")], good))
    garbage.with_suffix(".onnx").write_bytes(b"\x00" * 64)
    out.append(("eval with val-only data", ["eval", str(run), str(data("val-only", val=True) / "val"),
                                            "--out", str(w / "e1")], None))
    sub = data("subset", classes=("red",), n=2)
    out.append(("eval with a subset of the classes", ["eval", str(run), str(sub), "--out", str(w / "e2")], sub))
    formula = dataset(w / "formula", classes=("=HYPERLINK(1)", "@cmd"))
    out.append(("class names that are formulas", ["train", str(formula), "--out", str(w / "r-formula"), *TINY], formula))
    cjk = dataset(w / "cjk", classes=("猫", "狗"))
    out.append(("class names in Chinese", ["train", str(cjk), "--out", str(w / "r-cjk"), *TINY], cjk))
    out.append(("resume a finished run", ["train", "--resume", str(run)], None))
    out.append(("missing dataset folder", ["train", str(w / "nope")], None))
    out.append(("dataset is a file", ["train", str(w / "afile")], None))
    out += round_three(w, good, run)
    out += round_four(w, good, run)
    return out


def damaged_exif_jpeg(path: Path, entries) -> Path:
    """A JPEG whose EXIF block is `entries` (tag, type, count, 4 value bytes), written raw."""
    import struct

    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI", t, k, n) + v.ljust(4, b"\0")
                                                       for t, k, n, v in entries) + struct.pack("<I", 0)
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 60, 200)).save(buf, "JPEG", exif=b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + ifd)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


def round_three(w: Path, good: Path, run: Path) -> list:
    """The third round's classes (issue 26): writes into the data or over the user's files through
    any door, inputs no test had, bytes from users in terminal lines, processes beyond the cores."""
    out = []
    photo = good / "train" / "blue" / "0.png"
    out.append(("doctor --write-exclude onto a photo", ["doctor", str(good), "--write-exclude", str(photo),
                                                        "--out", str(w / "d1"), "--quiet"], good))
    out.append(("cd DATA && doctor .", ["doctor", ".", "--quiet"], good, good))
    out.append(("cd DATA && train .", ["train", ".", *TINY], good, good))
    out.append(("eval --out inside the DATA given", ["eval", str(run), str(good), "--out", str(good / "ev")], good))
    out.append(("eval --out inside the run's data", ["eval", str(run), "--out", str(good / "val" / "ev")], good))
    out.append(("export --out inside the run's data", ["export", str(run), "--format", "onnx", "--out",
                                                       str(good / "exp")], good))
    out.append(("train --cache-dir inside DATA", ["train", str(good), "--cache-dir", str(good / "cache"), *TINY],
                good))
    out.append(("doctor --out inside DATA", ["doctor", str(good), "--out", str(good / "doc"), "--quiet"], good))
    out.append(("predict --output onto a photo", ["predict", str(run), str(w / "good" / "val"), "--output",
                                                  str(photo)], good))
    out.append(("predict --output inside the input folder", ["predict", str(run), str(good / "val"), "--output",
                                                             str(good / "val" / "p.csv")], good))
    notes = w / "notes"
    notes.mkdir()
    (notes / "notes.csv").write_text("my,own\n")
    os.symlink(notes / "notes.csv", notes / "link.csv")
    out.append(("predict --output onto the user's file", ["predict", str(run), str(good / "val"), "--output",
                                                          str(notes / "notes.csv")], notes))
    out.append(("predict --output onto a link to the user's file", ["predict", str(run), str(good / "val"),
                                                                    "--output", str(notes / "link.csv")], notes))
    out.append(("doctor --write-exclude onto the user's file", ["doctor", str(good), "--write-exclude",
                                                                 str(notes / "notes.csv"), "--out", str(w / "d2"),
                                                                 "--quiet"], notes))
    out.append(("predict --output a folder", ["predict", str(run), str(good / "val"), "--output", str(notes)], notes))
    out.append(("predict --output /dev/null", ["predict", str(run), str(good / "val"), "--output", "/dev/null"], good))
    if Path("/dev/full").exists():
        out.append(("predict --output /dev/full (no space)", ["predict", str(run), str(good / "val"), "--output",
                                                               "/dev/full"], good))

    exif = dataset(w / "exif")
    damaged_exif_jpeg(exif / "train" / "blue" / "text-in-rational.jpg", [(0x0112, 3, 1, b"\x06\x00"),
                                                                         (0x011A, 2, 4, b"xyz\x00")])
    damaged_exif_jpeg(exif / "train" / "red" / "count-past-end.jpg", [(0x0112, 3, 1000, b"\x06\x00")])
    damaged_exif_jpeg(exif / "train" / "red" / "text-orientation.jpg", [(0x0112, 2, 4, b"abc\x00")])
    out.append(("predict: JPEGs with damaged EXIF", ["predict", str(run), str(exif / "train")], exif))
    out.append(("train: JPEGs with damaged EXIF", ["train", str(exif), "--out", str(w / "r-exif"), *TINY], exif))
    out.append(("doctor: JPEGs with damaged EXIF", ["doctor", str(exif), "--out", str(w / "d-exif"), "--quiet"], exif))

    raw = dataset(w / "raw-names")
    os.rename(raw / "train" / "blue" / "0.png", os.path.join(os.fsencode(raw / "train" / "blue"), b"b\xfflue.png"))
    os.rename(raw / "val" / "red" / "v0.png", os.path.join(os.fsencode(raw / "val" / "red"), b"r\xfeed.png"))
    out.append(("predict: a file name that is not UTF-8", ["predict", str(run), str(raw / "train"), "--output",
                                                           str(w / "raw.csv")], raw))
    out.append(("train: a file name that is not UTF-8", ["train", str(raw), "--out", str(w / "r-raw"), *TINY], raw))
    out.append(("doctor --write-exclude: names not UTF-8", ["doctor", str(raw), "--out", str(w / "d-raw"),
                                                            "--write-exclude", str(w / "raw-ex.txt"), "--quiet"], raw))
    escapes = w / "escapes"
    escapes.mkdir()
    (escapes / "bad\x1b[2J\r\nerror: forged.jpg").write_bytes(b"not an image")
    out.append(("terminal escapes and CR/LF in a file name", ["predict", str(run), str(escapes)], escapes))
    out.append(("a path with escapes that does not exist", ["predict", str(run), str(w / "no\x1b]0;t\x07.jpg")], None))
    out.append(("train --nproc 99", ["train", str(good), "--nproc", "99", *TINY], good))
    out.append(("train --nproc 0", ["train", str(good), "--nproc", "0", *TINY], good))

    import onnx
    from onnx import TensorProto, helper

    meta = json.loads((run / "model.json").read_text())
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["output"])],
        "two", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 4, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor("w", TensorProto.FLOAT, [48, 2], [0.0] * 96)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    helper.set_model_props(model, {"transferkit": json.dumps({"classes": ["a", "b", "c"],
                                                              "preprocess": meta["preprocess"]})})
    onnx.save(model, w / "three.onnx")
    out.append(("ONNX metadata: 3 classes, 2 outputs", ["predict", str(w / "three.onnx"), str(good / "val")], good))
    return out


def round_four(w: Path, good: Path, run: Path) -> list:
    """The fourth round's classes (issue 38) through the CLI: writes over the user's files by the
    newest doors (--out-dir, the fixes file), files read back that cannot be trusted (nested,
    wrong types, a FIFO, a BOM, a stray quote, an oversized cell, YAML aliases), state left by
    killed or edited commands, options that were silently ignored. (The HTTP surfaces: `http_cases`.)"""
    out = []
    photos = dataset(w / "r4-photos", val=False) / "train"
    (photos / "predictions.csv").write_text("my own predictions\n")
    out.append(("predict --out-dir the input folder --merge", ["predict", str(run), str(photos), "--out-dir",
                                                               str(photos), "--merge"], photos))
    out.append(("predict --out-dir inside the input folder", ["predict", str(run), str(photos), "--out-dir",
                                                               str(photos / "blue" / "p")], photos))
    out.append(("predict --out-dir inside the run's data", ["predict", str(run), str(photos), "--out-dir",
                                                            str(good / "p")], good))
    mine = w / "r4-mine"
    mine.mkdir()
    (mine / "manifest.json").write_text('{"mine": true}')
    out.append(("predict --out-dir a folder of the user's", ["predict", str(run), str(photos), "--out-dir", str(mine)],
                mine))
    listing = w / "r4-list.txt"
    files = sorted(str(p) for p in photos.rglob("*.png"))
    listing.write_text("\n".join(files[:3]) + "\n")
    od = w / "r4-od"
    subprocess.run([sys.executable, "-m", "transferkit", "predict", str(run), "--files-from", str(listing), "--out-dir",
                    str(od)], check=True, capture_output=True)
    listing.write_text("\n".join(files[3:]) + "\n")
    out.append(("--out-dir resumed with an edited --files-from", ["predict", str(run), "--files-from", str(listing),
                                                                  "--out-dir", str(od)], photos))
    stray = w / "r4-stray"
    subprocess.run([sys.executable, "-m", "transferkit", "predict", str(run), str(photos), "--out-dir", str(stray)],
                   check=True, capture_output=True)
    shutil.copy(stray / "chunks" / "chunk-000000.csv", stray / "chunks" / "chunk-000000 (copy).csv")
    out.append(("--out-dir with a stray 'chunk (copy).csv'", ["predict", str(run), str(photos), "--out-dir", str(stray),
                                                              "--merge"], photos))
    for size in ("1e300GB", "-5GB", "nanGB", "12 parsecs"):
        out.append((f"--cache-limit {size}", ["train", str(good), "--cache-limit", size, *TINY], good))
    for name in ("../escaped", "/tmp/abs", ".", "a/b"):
        out.append((f"--name {name}", ["train", str(good), "--name", name, "--runs-dir", str(w / "r4-runs"), *TINY],
                    good))
    runs = w / "r4-runs-of"
    for n in ("a", "b"):
        shutil.copytree(run, runs / n)
    out.append(("train --out a folder of runs", ["train", str(good), "--out", str(runs), *TINY], runs))
    out.append(("train on a folder of runs", ["train", str(runs), *TINY], runs))
    out.append(("doctor on the cache folder", ["doctor", str(w / "cache"), "--quiet"], None))
    onnx = w / "r4.onnx"
    onnx.write_bytes(b"")
    out.append(("predict model.onnx --engine torch", ["predict", str(onnx), str(photos), "--engine", "torch"], photos))
    out.append(("predict model.onnx --precision bf16", ["predict", str(onnx), str(photos), "--precision", "bf16"],
                photos))
    damaged = w / "r4-damaged"
    for name, files_ in (("nested", {"results.json": "[" * 100_000 + "]" * 100_000,
                                     "config.yaml": "a: " + "[" * 5000 + "]" * 5000}),
                         ("typed", {"results.json": json.dumps({"val_acc": "high", "data": 3, "wall_s": [1]}),
                                    "metrics.json": json.dumps({"classes": "x", "per_class": [1], "macro_avg": 2}),
                                    "config.yaml": "- not\n- a mapping\n"}),
                         ("bom", {"results.json": "\ufeff" + (run / "results.json").read_text()})):
        folder = Path(shutil.copytree(run, damaged / name))
        for file, text in files_.items():
            (folder / file).write_text(text)
    fifo = Path(shutil.copytree(run, damaged / "fifo"))
    (fifo / "config.yaml").unlink()
    os.mkfifo(fifo / "config.yaml")
    out.append(("runs: nested, wrong types, BOM, a FIFO", ["runs", str(damaged)], None))
    out.append(("runs compare: wrong types", ["runs", "compare", str(run), str(damaged / "typed")], None))
    out.append(("report: a nested results.json", ["report", str(damaged / "nested")], None))
    out.append(("eval: a run with a nested results.json", ["eval", str(damaged / "nested"), "--out",
                                                           str(w / "r4-eval")], None))
    for name, text in (("nested", "a: " + "[" * 5000 + "]" * 5000 + "\n"),
                       ("aliases", "a: &a [1,1,1,1,1,1,1,1]\n" + "".join(
                           f"{c}: &{c} [{','.join(['*' + p] * 8)}]\n" for p, c in zip("abcdefg", "bcdefgh"))),
                       ("a list", "- lr\n- 0.1\n")):
        cfg = w / f"r4-{name.replace(' ', '-')}.yaml"
        cfg.write_text(text)
        out.append((f"--config: {name}", ["train", str(good), "--config", str(cfg), *TINY], good))
    os.mkfifo(w / "r4-fifo.yaml")
    out.append(("--config a FIFO", ["train", str(good), "--config", str(w / "r4-fifo.yaml"), *TINY], good))
    header = "path,action,label,reason,time\n"
    for name, body in (("a BOM and CRLF", "\ufeff" + header.replace("\n", "\r\n") + "train/red/0.png,exclude,,ok,t\r\n"),
                       ("a stray quote", header + 'train/red/0.png,exclude,,"never closed,t\ntrain/red/1.png,exclude,,,\n'),
                       ("a 200 KB cell", header + "train/red/0.png,exclude,," + "x" * 200_000 + ",t\n"),
                       ("a reason over lines and a formula", header + 'train/red/0.png,exclude,,"=HYPERLINK(1)\n# no '
                        'comment",t\ntrain/red/1.png,exclude,,,\n'),
                       ("an unknown action", header + "train/red/0.png,delete,,,\n")):
        fixes = w / f"r4-fixes-{len(out)}.csv"
        fixes.write_bytes(body.encode())
        out.append((f"--fixes: {name}", ["train", str(good), "--fixes", str(fixes), "--out", str(w / f"r4-f{len(out)}"),
                                         *TINY], good))
    piped = dataset(w / "r4-fifo-data")
    os.mkfifo(piped / "train" / "red" / "pipe.jpg")
    out.append(("train: a FIFO named like an image in DATA", ["train", str(piped), "--out", str(w / "r4-fifo-run"),
                                                               *TINY], piped))
    out.append(("doctor: a FIFO named like an image in DATA", ["doctor", str(piped), "--out", str(w / "r4-fifo-doc"),
                                                                "--quiet"], piped))
    out.append(("predict: a FIFO given as an image", ["predict", str(run), str(piped / "train" / "red" / "pipe.jpg")],
                piped))
    cache = w / "cache"
    shard = cache / "features" / "x" / "shards"
    shard.mkdir(parents=True, exist_ok=True)
    (shard / ".00000001.dat.999999999-0123456789ab.tmp").write_bytes(b"\0" * 4096)
    os.utime(shard / ".00000001.dat.999999999-0123456789ab.tmp", (1, 1))
    out.append(("cache compact with a killed compaction's temp file", ["cache", "compact", "--cache-dir", str(cache)],
                None))
    return out


def http_cases(w: Path, good: Path, run: Path) -> list[tuple[str, int, str]]:
    """The HTTP surfaces: `transferkit serve RUN` (/v2 and /predict) and `transferkit studio`
    (its API, with a dataset holding a link to a secret and a decompression bomb, and runs folders
    holding damaged runs), each sent requests no client should send. (name, status, body)."""
    import base64
    import re
    import urllib.error
    import urllib.request

    def start(argv):
        proc = subprocess.Popen([sys.executable, "-m", "transferkit", *argv, "--port", "0"], stderr=subprocess.PIPE,
                                text=True, errors="replace")
        for line in proc.stderr:
            found = re.search(r"at (http://\S+/)", line)
            if found:
                import threading

                threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
                return proc, found.group(1)
        raise RuntimeError(f"{argv[0]} did not start")

    def send(url, path, body=None, headers=None, method=None):
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        req = urllib.request.Request(url + path.lstrip("/"), data, {"Content-Type": "application/json",
                                                                  **(headers or {})}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    rows = []
    proc, url = start(["serve", str(run)])
    try:
        deadline = time.monotonic() + 120
        while send(url, "ready")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.3)
        name = json.loads(send(url, "model")[1])["name"]
        size = json.loads(send(url, "model")[1])["preprocess"]["input_size"]
        infer = f"v2/models/{name}/infer"
        good_in = {"name": "input", "shape": [1, 3, size, size], "datatype": "FP32", "data": [0.0] * (3 * size * size)}
        text = json.dumps({"inputs": [{"name": "input", "shape": [1, 3, size, size], "datatype": "FP32",
                                       "parameters": {"binary_data_size": 12 * size * size}}]}).encode()
        photo = (good / "val" / "red" / "v0.png").read_bytes()
        for case, body, headers in (
                ("/v2 shape [2^32, 2^32]", {"inputs": [{**good_in, "shape": [2**32, 2**32]}]}, None),
                ("/v2 shape [2^62, 2^62, 0]", {"inputs": [{**good_in, "shape": [2**62, 2**62, 0]}]}, None),
                ("/v2 header nested 100,000 deep", b'{"inputs":' + b"[" * 100_000 + b"]" * 100_000 + b"}", None),
                ("/v2 data nested 10,000 deep", b'{"inputs":[{"name":"input","shape":[1],"datatype":"FP32","data":'
                 + b"[" * 10_000 + b"0" + b"]" * 10_000 + b"}]}", None),
                ("/v2 input parameters a list", {"inputs": [{**good_in, "parameters": [1]}]}, None),
                ("/v2 request parameters a string", {"inputs": [good_in], "parameters": "x"}, None),
                ("/v2 outputs parameters a number", {"inputs": [good_in], "outputs": [{"name": "label",
                                                                                      "parameters": 7}]}, None),
                ("/v2 classification true", {"inputs": [good_in], "outputs": [
                    {"name": "probabilities", "parameters": {"classification": True}}]}, None),
                ("/v2 classification 2.5", {"inputs": [good_in], "outputs": [
                    {"name": "probabilities", "parameters": {"classification": 2.5}}]}, None),
                ("/v2 binary_data_output 'yes'", {"inputs": [good_in], "parameters": {"binary_data_output": "yes"}},
                 None),
                ("/v2 all-NaN binary FP32", text + np.full(3 * size * size, np.nan, "<f4").tobytes(),
                 {"Inference-Header-Content-Length": str(len(text))}),
                ("/v2 inf in JSON FP32", b'{"inputs":[{"name":"input","shape":[1],"datatype":"FP32","data":[1e999]}]}',
                 None),
                ("/v2 shape of booleans", {"inputs": [{**good_in, "shape": [True, 3, size, size]}]}, None),
                ("/v2 BYTES of a number", {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                                      "data": [5]}]}, None),
                ("/v2 image base64 of text", {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                                         "data": [base64.b64encode(b"text").decode()]}]}, None),
                ("/v2 inputs an object", {"inputs": {"name": "input"}}, None),
                ("/v2 header length past the body", json.dumps({"inputs": [good_in]}).encode(),
                 {"Inference-Header-Content-Length": "99999999"}),
                ("/predict a JSON body nested deep", b"[" * 100_000 + b"]" * 100_000, None),
                ("/predict an image with a JSON type", photo, None)):
            path = "predict" if case.startswith("/predict") else infer
            status, raw = send(url, path, body, headers)
            rows.append((case, status, raw[:110].decode("utf-8", "replace")))
    finally:
        proc.terminate()
        proc.wait(30)

    data = dataset(w / "h-studio")
    os.rename(data / "train" / "blue" / "1.png", os.path.join(os.fsencode(data / "train" / "blue"), b"b\xfflue.png"))
    os.mkfifo(data / "train" / "red" / "pipe.jpg")
    secret = w / "h-secret.txt"
    secret.write_text("password=hunter2")
    os.symlink(secret, data / "train" / "red" / "secret.png")
    Image.new("1", (13000, 13000)).save(data / "train" / "red" / "bomb.png")
    runs = w / "h-runs"
    shutil.copytree(run, runs / "ok")
    for name, files_ in (("nested", {"results.json": "[" * 100_000 + "]" * 100_000}),
                         ("typed", {"metrics.json": json.dumps({"classes": 3, "confusion_matrix": "x",
                                                                "per_class": {"a": 1}, "macro_avg": [1]}),
                                    "config.yaml": "data: [1, 2]\n"})):
        folder = Path(shutil.copytree(run, runs / name))
        for file, text in files_.items():
            (folder / file).write_text(text)
    os.mkdir(runs / "stopped")
    (runs / "stopped" / "config.yaml").write_text((run / "config.yaml").read_text())
    proc, url = start(["studio", str(data), "--runs", str(runs), "--cache-dir", str(w / "h-cache")])
    page = {"X-Studio": "1"}
    try:
        ident = json.loads(send(url, "api/state")[1])["datasets"][0]["id"]
        for case, path, body in (
                ("studio: image of a link to a secret", f"api/datasets/{ident}/image?path=train/red/secret.png", None),
                ("studio: thumbnail of a link to a secret", f"api/datasets/{ident}/thumb?path=train/red/secret.png",
                 None),
                ("studio: thumbnail of a decompression bomb", f"api/datasets/{ident}/thumb?path=train/red/bomb.png",
                 None),
                ("studio: a page of images, one named in bytes that are not UTF-8", f"api/datasets/{ident}/images",
                 None),
                ("studio: thumbnail of a FIFO named like an image", f"api/datasets/{ident}/thumb?path=train/red/pipe.jpg",
                 None),
                ("studio: runs with damaged ones", "api/runs", None),
                ("studio: a run with a nested results.json", "api/runs/nested", None),
                ("studio: a run with wrong types", "api/runs/typed", None),
                ("studio: a stopped run", "api/runs/stopped", None),
                ("studio: compare with wrong types", "api/compare?a=ok&b=typed", None),
                ("studio: open the cache folder", "api/datasets", {"path": str(w / "h-cache")}),
                ("studio: open the runs folder", "api/datasets", {"path": str(runs)}),
                ("studio: train with lr 'abc'", "api/train", {"dataset": ident, "options": {"lr": "abc"}}),
                ("studio: train with epochs 0", "api/train", {"dataset": ident, "strategy": "finetune",
                                                             "options": {"epochs": "0"}}),
                ("studio: train with batch 0", "api/train", {"dataset": ident, "strategy": "finetune",
                                                            "options": {"batch_size": 0}}),
                ("studio: a backbone with no offline weights", "api/train", {"dataset": ident, "model": "resnet50"}),
                ("studio: fix reason a formula over lines", f"api/datasets/{ident}/fixes",
                 {"path": "train/red/0.png", "action": "exclude", "reason": "=HYPERLINK(1)\n# x"}),
                ("studio: a JSON body nested deep", f"api/datasets/{ident}/fixes", b"[" * 100_000 + b"]" * 100_000),
                ("studio: undo with a client that is a list", f"api/datasets/{ident}/undo", {"client": [1]}),
                ("studio: remove a stopped run", "api/runs/stopped/remove", {})):
            status, raw = send(url, path, body, page if body is not None else None,
                               "POST" if body is not None else None)
            rows.append((case, status, raw[:110].decode("utf-8", "replace")))
        fixes = json.loads(send(url, f"api/datasets/{ident}/fixes")[1])["file"]
        text = Path(fixes).read_text() if Path(fixes).is_file() else ""
        rows.append(("studio: the fixes file holds no live formula", 200 if ",=" not in text else 500, text[-110:]))
        urls = []
        for _ in range(2):
            status, raw = send(url, "api/runs/ok/serve", {}, page, "POST")
            urls.append(json.loads(raw).get("url") if status == 200 else None)
        time.sleep(60)  # a minute: past the web server's idle worker threads (10 s), with which the model died
        alive = urls[0] and send(urls[0], "health")[0] == 200
        rows.append(("studio: two Serve clicks, alive a minute later", 200 if alive and urls[0] == urls[1] else 500,
                     f"{urls}"))
    finally:
        proc.send_signal(2)
        proc.wait(60)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tk-faults-"))
    env = {**os.environ, "TRANSFERKIT_CACHE": str(work / "cache")}
    os.environ["TRANSFERKIT_CACHE"] = env["TRANSFERKIT_CACHE"]
    rows, bad = [], 0
    for name, cli, data, *cwd in cases(work):  # (cwd: where the command runs, when not the work folder)
        before = digest(data) if data else None
        try:
            proc = subprocess.run([sys.executable, "-m", "transferkit", *cli], capture_output=True, text=True,
                                  env=env, cwd=cwd[0] if cwd else work, timeout=300, errors="replace")
        except subprocess.TimeoutExpired:  # a hang (a FIFO read, a lock never released) is a fault too
            proc = subprocess.CompletedProcess(cli, "HANG", "", "Traceback: no answer in 300 s")
        traceback = "Traceback" in proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        changed = data is not None and digest(data) != before
        bad += traceback or changed
        first = (errors[0] if errors else proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "")[:110]
        rows.append((name, proc.returncode, "yes" if traceback else "no", len(errors) <= 1,
                     "CHANGED" if changed else "unchanged" if data else "-", first))
        print(f"done: {name}", file=sys.stderr, flush=True)
    print("| case | exit | traceback | one error line | user's data | what it said |\n|---|---:|---|---|---|---|")
    for name, rc, tb, one, data, said in rows:
        print(f"| {name} | {rc} | {tb} | {'yes' if one else 'NO'} | {data} | {said.replace('|', '/')} |")
    print(f"\n{len(rows)} cases: {sum(r[2] == 'yes' for r in rows)} tracebacks, "
          f"{sum(r[4] == 'CHANGED' for r in rows)} with the user's data changed")
    good, run = work / "good", work / "run"
    http = http_cases(work, good, run)
    print("\n| HTTP case | status | what it said |\n|---|---:|---|")
    for name, status, said in http:
        print(f"| {name} | {status} | {said.replace('|', '/').replace(chr(10), ' ')} |")
    errors = [name for name, status, _ in http if status >= 500]
    print(f"\n{len(http)} HTTP cases: {len(errors)} server errors (5xx){': ' + ', '.join(errors) if errors else ''}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if bad or errors else 0


if __name__ == "__main__":
    sys.exit(main())
