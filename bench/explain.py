"""Where the answer comes from (#40): a pointing test of the heatmaps, and what explaining costs.

    python bench/explain.py [--images 100] [--repeat 3] [--json FILE]

Pointing test: a photo of the trained classes (the shared val images) scaled down to a third of a
448 px canvas and pasted at a random place away from the centre (its centre at least 90 px off)
but inside what the model sees (its centre crop), on an unrelated background (a CIFAR-10 image,
upscaled: vehicles and animals, blurry). Counted: the share of composites whose heatmap maximum
falls on the pasted photo. A fixed point at the centre scores 0 by construction (the baseline);
a random point scores the pasted area's share of the crop (printed). Models: the default run
(linear head on frozen features: exact class activation maps, on ONNX Runtime) and a fine-tuned
one (2 epochs), each trained on hymenoptera and on flowers.

Cost: on the default run, `predict` of the composites vs `predict --explain` (the heatmaps and
overlays written too), each in its own process, wall and CPU seconds, best of --repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import SHARED, cpu_seconds, print_table, train_cli  # noqa: E402

CANVAS, OBJECT, OFF_CENTRE = 448, 150, 90


def composites(data: Path, backgrounds: list[Path], out: Path, n: int, seed: int = 0) -> list[dict]:
    """`n` composites of `data`'s val photos on `backgrounds`, written to `out`; each with its box."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = sorted(p for p in (data / "val").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    picked = [photos[i] for i in rng.choice(len(photos), min(n, len(photos)), replace=False)]
    # what the model sees of a CANVAS square: its centre crop (224 of 256 for the default backbone)
    seen = CANVAS * 224 / 256
    low, high = (CANVAS - seen) / 2, (CANVAS + seen) / 2
    out.mkdir(parents=True, exist_ok=True)
    items = []
    for i, photo in enumerate(picked):
        background = Image.open(backgrounds[rng.integers(len(backgrounds))]).convert("RGB").resize(
            (CANVAS, CANVAS), Image.Resampling.BICUBIC)
        image = Image.open(photo).convert("RGB")
        image.thumbnail((OBJECT, OBJECT))
        w, h = image.size
        while True:
            x, y = rng.uniform(low, high - w), rng.uniform(low, high - h)
            if np.hypot(x + w / 2 - CANVAS / 2, y + h / 2 - CANVAS / 2) >= OFF_CENTRE:
                break
        x, y = int(x), int(y)
        background.paste(image, (x, y))
        path = out / f"{i:04d}_{photo.parent.name}.jpg"
        background.save(path, quality=92)
        items.append({"path": str(path), "box": [x, y, x + w, y + h], "label": photo.parent.name})
    return items


def pointing(run: Path, items: list[dict]) -> dict:
    from transferkit.data.decode import load_rgb
    from transferkit.prediction.heatmaps import on_image, peak

    from transferkit.evaluation.explained import explainer

    with explainer(run) as predictor:  # (a fine-tuned run: on PyTorch, which gives its maps)
        _, _, maps, errors = predictor.explain([i["path"] for i in items])
        sizes = predictor.sizes()
        used = type(predictor).__name__
    hits, area = [], []
    for item, cam in zip(items, maps):
        heat = on_image(cam, load_rgb(item["path"]).size, *sizes)
        x, y = peak(heat)
        x0, y0, x1, y1 = item["box"]
        hits.append(x0 <= x < x1 and y0 <= y < y1)
        seen = CANVAS * 224 / 256
        area.append((x1 - x0) * (y1 - y0) / seen ** 2)
    return {"pointing": float(np.mean(hits)), "random_point": float(np.mean(area)), "centre_point": 0.0,
            "images": len(hits), "predictor": used}


def timed(cmd: list[str], repeat: int, env: dict) -> dict:
    best = None
    for _ in range(repeat):
        start, cpu = time.perf_counter(), cpu_seconds()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
        if proc.returncode != 0:
            return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
        if best is None or wall < best["wall_s"]:
            best = {"wall_s": wall, "cpu_s": cpu}
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100, help="composites per dataset")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", help="write every row here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tk-explain-"))
    env = {**os.environ, "TRANSFERKIT_CACHE": str(work / "cache")}
    os.environ["TRANSFERKIT_CACHE"] = env["TRANSFERKIT_CACHE"]  # (this process explains through the same cache)
    backgrounds = sorted((SHARED / "cifar10-png" / "val").rglob("*.png"))
    rows = []
    for name in ("hymenoptera_data", "flower_photos_small"):
        items = composites(SHARED / name, backgrounds, work / "composites" / name, args.images)
        for strategy, extra in (("linear (default)", []), ("finetune, 2 epochs", ["--strategy", "finetune",
                                                                                  "--epochs", "2"])):
            run = work / f"{name}-{strategy.split()[0].strip(',')}"
            got = train_cli(SHARED / name, run, env, extra)
            if "results" not in got:
                rows.append({"setting": f"{name}: {strategy}", **got})
                continue
            row = {"setting": f"{name}: {strategy}", "val_acc": got["val_acc"], **pointing(run, items)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print_table(rows, "setting", [("val acc", 8, lambda r: f"{r['val_acc']:.4f}"),
                                  ("images", 6, lambda r: str(r["images"])),
                                  ("pointing", 8, lambda r: f"{r['pointing']:.3f}"),
                                  ("random point", 12, lambda r: f"{r['random_point']:.3f}"),
                                  ("centre point", 12, lambda r: f"{r['centre_point']:.3f}"),
                                  ("explained by", 20, lambda r: r["predictor"])], "pointing")
    # the cost: predict vs predict --explain on the default run, each in its own process
    run = work / "hymenoptera_data-linear"
    folder = str(work / "composites" / "hymenoptera_data")
    base = [sys.executable, "-m", "transferkit", "predict", str(run), folder, "--output", str(work / "p.csv")]
    # (a first explain converts the maps network once: not what is timed)
    subprocess.run(base + ["--explain", str(work / "warm")], capture_output=True, env=env)
    plain = timed(base, args.repeat, env)
    explained = timed(base + ["--explain", str(work / "heatmaps")], args.repeat, env)
    n = args.images
    print(f"\ncost on {n} composites (default run, default engine, best of {args.repeat}, the child's CPU):")
    for label, t in (("predict", plain), ("predict --explain", explained)):
        print(f"  {label:<18} {t.get('wall_s', float('nan')):6.2f} s wall, {t.get('cpu_s', float('nan')):6.2f} s CPU "
              f"({1000 * t.get('wall_s', float('nan')) / n:.1f} ms/image)")
    if "wall_s" in plain and "wall_s" in explained:
        print(f"  ratio explain/plain: {explained['wall_s'] / plain['wall_s']:.2f}x wall, "
              f"{explained['cpu_s'] / plain['cpu_s']:.2f}x CPU")
    rows.append({"setting": "cost", "plain": plain, "explain": explained, "images": n})
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"\nwork folder: {work}")


if __name__ == "__main__":
    main()
