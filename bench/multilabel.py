"""Multi-label: transferkit against fastai's multi-label recipe on real photos (#39).

    python bench/multilabel.py [--fastai-path DIR] [--epochs 3] [--only transferkit,fastai] [--json FILE]

The data is built from flower_photos_small (../shared), by a fixed seed, in a work folder: every
photo once as itself (one label), plus as many 2x2 composites, each of 2 to 4 photos of different
classes (the other cells grey), labelled with every class shown. Training images come from the
set's train photos, validation images from its val photos only (no photo on both sides), listed in
labels.csv (path, labels joined by spaces, is_valid).

In one run, each in its own process, timed (wall, and CPU seconds of the process and its
children), all from the same ImageNet weights of EfficientNet-Lite0:
- transferkit: the default (`train DATA --labels labels.csv --label-delim ' ' --split-col
  is_valid`: per-class logistic heads on cached features, thresholds out of fold), cold cache
  and then warm; and `--strategy finetune` (each class's sigmoid, its default epochs), with BCE and
  with the asymmetric loss (`--loss asl`);
- fastai: `ImageDataLoaders.from_df(..., label_delim=' ', valid_col='is_valid',
  item_tfms=Resize(460), batch_tfms=aug_transforms(size=224, min_scale=0.75), bs=32)` (a
  MultiCategoryBlock), `vision_learner(dls, "efficientnet_lite0", metrics=accuracy_multi)`,
  `fine_tune(EPOCHS)`; its predictions at fastai's threshold 0.5. fastai is not a dependency of
  transferkit: give a folder holding it (as bench/peers.py says).
All are measured on the same validation images by scikit-learn: mAP (macro), micro and macro F1 at
each one's own decision (transferkit: its thresholds; fastai: 0.5) and subset accuracy. Prints
the table, mAP points against fastai and the CPU ratio. Not a test: the numbers depend on the
machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import SHARED, print_table, train_cli  # noqa: E402
from peers import fastai_script, weights_file  # noqa: E402

CELL = 224  # a composite's cell (the composite is 2 x CELL square)

FASTAI = """
import sys, json
import numpy as np, pandas as pd
from fastai.vision.all import ImageDataLoaders, Resize, aug_transforms, vision_learner, accuracy_multi
data, weights, epochs, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
df = pd.read_csv(f"{data}/labels.csv", keep_default_na=False)
dls = ImageDataLoaders.from_df(df, data, fn_col="path", label_col="labels", label_delim=" ", valid_col="is_valid",
                               item_tfms=Resize(460), batch_tfms=aug_transforms(size=224, min_scale=0.75), bs=32)
learn = vision_learner(dls, "efficientnet_lite0", metrics=accuracy_multi, pretrained=True,
                       pretrained_cfg_overlay=dict(file=weights))
learn.fine_tune(epochs)
probs, targets = learn.get_preds()
names = [str(p) for p in dls.valid_ds.items["path"]]
json.dump({"classes": list(dls.vocab), "paths": names, "probs": probs.numpy().tolist(),
           "targets": targets.numpy().tolist()}, open(out, "w"))
"""


def build(work: Path, seed: int = 0) -> Path:
    """The multi-label set (see the module); returns its folder (labels.csv inside)."""
    from PIL import Image, ImageOps

    source = SHARED / "flower_photos_small"
    if not source.is_dir():
        sys.exit(f"{source} not found (../shared/assets/datasets)")
    rng = np.random.default_rng(seed)
    data = work / "data"
    (data / "images").mkdir(parents=True, exist_ok=True)
    rows = ["path,labels,is_valid"]
    for side, valid in (("train", False), ("val", True)):
        classes = sorted(p.name for p in (source / side).iterdir() if p.is_dir())
        photos = {c: sorted((source / side / c).glob("*.jpg")) for c in classes}
        k = 0
        for c in classes:  # every photo once as itself
            for p in photos[c]:
                name = f"{side}-{k:04d}.jpg"
                with Image.open(p) as im:
                    im.convert("RGB").save(data / "images" / name, quality=90)
                rows.append(f"images/{name},{c},{valid}")
                k += 1
        for _ in range(sum(map(len, photos.values()))):  # as many composites
            shown = sorted(rng.choice(len(classes), size=int(rng.integers(2, 5)), replace=False).tolist())
            cells = rng.permutation(4)[:len(shown)]
            sheet = Image.new("RGB", (2 * CELL, 2 * CELL), (128, 128, 128))
            for c, cell in zip(shown, cells):
                pick = photos[classes[c]][int(rng.integers(len(photos[classes[c]])))]
                with Image.open(pick) as im:
                    tile = ImageOps.fit(im.convert("RGB"), (CELL, CELL))
                sheet.paste(tile, (int(cell % 2) * CELL, int(cell // 2) * CELL))
            name = f"{side}-{k:04d}.jpg"
            sheet.save(data / "images" / name, quality=90)
            rows.append(f"images/{name},{' '.join(classes[c] for c in shown)},{valid}")
            k += 1
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    return data


def measured(y: np.ndarray, probs: np.ndarray, decided: np.ndarray) -> dict:
    from sklearn.metrics import average_precision_score, f1_score

    return {"map": float(average_precision_score(y, probs, average="macro")),
            "f1_micro": float(f1_score(y, decided, average="micro", zero_division=0)),
            "f1_macro": float(f1_score(y, decided, average="macro", zero_division=0)),
            "subset_acc": float((y == decided).all(1).mean())}


def ours(data: Path, out: Path, env: dict, extra: list[str]) -> dict:
    """A transferkit run in its own process, with its own val numbers (results.json: scikit-learn's,
    on the same val images, at the run's thresholds)."""
    got = train_cli(data, out, env, ["--labels", str(data / "labels.csv"), "--label-delim", " ",
                                     "--split-col", "is_valid", *extra])
    results = got.pop("results", None)
    if results is None:
        return got
    m = results["metrics"]
    return {**got, "map": m["map_macro"], "f1_micro": m["micro_avg"]["f1"], "f1_macro": m["macro_avg"]["f1"],
            "subset_acc": m["subset_accuracy"], "strategy": results["strategy"]}


def run_fastai(data: Path, weights: Path, epochs: int, fastai_path: str, work: Path) -> dict:
    ran = fastai_script(FASTAI, data, weights, epochs, fastai_path, work)
    got = ran.pop("got", None)
    if got is None:
        return ran
    probs, y = np.array(got["probs"]), np.array(got["targets"]) > 0.5
    return {**ran, **measured(y, probs, probs >= 0.5), "val_images": len(y)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3, help="fastai fine_tune's epochs")
    ap.add_argument("--fastai-path", help="a folder holding fastai (PYTHONPATH for its process)")
    ap.add_argument("--only", default="transferkit,fastai")
    ap.add_argument("--json", help="write every row here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tk-multilabel-"))
    data = build(work)
    lines = (data / "labels.csv").read_text().splitlines()[1:]
    several = sum(len(line.split(",")[1].split()) > 1 for line in lines)
    print(f"data: {len(lines)} images ({several} composites of 2-4 classes), {work}", flush=True)
    env = {**os.environ, "TRANSFERKIT_CACHE": str(work / "cache")}
    rows = []
    if "transferkit" in args.only:
        for label, extra in (("transferkit default, cold", []), ("transferkit default, warm", []),
                             ("transferkit finetune", ["--strategy", "finetune"]),
                             ("transferkit finetune --loss asl", ["--strategy", "finetune", "--loss", "asl"])):
            rows.append({"candidate": label, **ours(data, work / label.replace(" ", "-").replace(",", ""), env, extra)})
            print(f"{label}: {rows[-1].get('map', rows[-1].get('error'))} {rows[-1]['wall_s']:.0f} s", flush=True)
    if "fastai" in args.only and args.fastai_path:
        weights = weights_file(work)
        rows.append({"candidate": f"fastai fine_tune({args.epochs}), multi-label",
                     **run_fastai(data, weights, args.epochs, args.fastai_path, work)})
        print(f"fastai: {rows[-1]}", flush=True)
    peer = next((r for r in rows if r["candidate"].startswith("fastai") and "map" in r), None)
    print()
    print_table(rows, "candidate", [
        ("mAP", 6, lambda r: f"{r['map']:.4f}"),
        ("vs fastai", 9, lambda r: f"{100 * (r['map'] - peer['map']):+.1f} pt" if peer else ""),
        ("F1 micro", 8, lambda r: f"{r['f1_micro']:.4f}"), ("F1 macro", 8, lambda r: f"{r['f1_macro']:.4f}"),
        ("subset", 6, lambda r: f"{r['subset_acc']:.3f}"), ("wall s", 7, lambda r: f"{r['wall_s']:.1f}"),
        ("CPU s", 7, lambda r: f"{r['cpu_s']:.1f}"),
        ("CPU ratio", 9, lambda r: f"{r['cpu_s'] / peer['cpu_s']:.3f}x" if peer else "")], "map")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"\nwork folder: {work}")


if __name__ == "__main__":
    main()
