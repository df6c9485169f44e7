"""Scale benchmark: the default `transferkit train` on 1,000, 4,000 and 16,000 images, cold (empty
cache) and warm (the same command again), in fresh processes.

    python bench/scale.py [--sizes 1000,4000,16000] [--work /tmp/transferkit-scale]

The datasets are distinct JPEGs made from the shared photos (hymenoptera_data and
flower_photos_small: 7 classes, about 800 photos): each image is a different random crop of a
photo (40-100% of its area), resized to a short side of 224-320 px, maybe mirrored, saved at JPEG
quality 85-95; variants of the shared val photos make the val split. They are made once under
--work and reused. Reported per size and run: wall
seconds, CPU seconds of the train process and its children, time per image, peak RSS (the
largest process), and the cache's files and bytes. Goals (#19): per-image time at 16,000 within
1.2x of that at 1,000; warm run at 16,000 <= 10 s; peak RSS at 16,000 <= 2 GB.
Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageOps

SHARED = Path(__file__).resolve().parents[2] / "shared" / "assets" / "datasets"
SOURCES = ("hymenoptera_data", "flower_photos_small")


def photos() -> list[tuple[str, Path]]:
    """(split/class, path) of every shared photo, in a fixed order."""
    out = []
    for name in SOURCES:
        root = SHARED / name
        for path in sorted(root.rglob("*")):
            if path.suffix.lower() in (".jpg", ".jpeg", ".png") and path.parent.parent.name in ("train", "val"):
                out.append((f"{path.parent.parent.name}/{path.parent.name}", path))
    if not out:
        sys.exit(f"no shared photos under {SHARED}")
    return out


def _variant(job: tuple[int, str, str, str]) -> None:
    i, cls, src, dst = job
    rng = random.Random(i)
    with Image.open(src) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
    w, h = im.size
    area = rng.uniform(0.4, 1.0)
    cw, ch = max(16, int(w * area ** 0.5)), max(16, int(h * area ** 0.5))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    im = im.crop((x, y, x + cw, y + ch))
    short = rng.randint(224, 320)
    scale = short / min(im.size)
    im = im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))), Image.BILINEAR)
    if rng.random() < 0.5:
        im = ImageOps.mirror(im)
    im.save(dst, quality=rng.randint(85, 95))


def make_dataset(root: Path, n: int) -> Path:
    """`n` distinct JPEGs in DATA/train/<class>/ and DATA/val/<class>/, the variants of a photo
    where the photo is in the shared dataset (no crop of a val photo among the training images),
    made once."""
    done = root / ".complete"
    if done.exists():
        return root
    source = photos()
    jobs = []
    for i in range(n):
        cls, src = source[i % len(source)]
        (root / cls).mkdir(parents=True, exist_ok=True)
        jobs.append((i, cls, str(src), str(root / cls / f"{i:06d}.jpg")))
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(_variant, jobs, chunksize=64))
    done.touch()
    return root


def usage(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def train(data: Path, cache: Path, out: Path) -> dict:
    """One default `transferkit train` in a fresh process: wall and CPU seconds, peak RSS."""
    cmd = [sys.executable, "-m", "transferkit", "train", str(data), "--out", str(out), "--cache-dir", str(cache),
           "--quiet"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, rusage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stderr = proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"train failed: {stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the train and its own children (workers)
    results = json.loads((out / "results.json").read_text())
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"wall_s": wall, "rss_mb": rusage.ru_maxrss / 1024, "cpu_s": cpu, "val_acc": results["val_acc"],
            "computed": results["strategy_info"].get("features_computed"),
            "cached": results["strategy_info"].get("features_cached")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,4000,16000")
    parser.add_argument("--work", default="/tmp/transferkit-scale")
    args = parser.parse_args()
    work = Path(args.work)
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        data = make_dataset(work / f"data-{n}", n)
        cache = work / f"cache-{n}"
        if cache.exists():
            import shutil

            shutil.rmtree(cache)
        for kind in ("cold", "warm"):
            r = train(data, cache, work / f"run-{n}-{kind}")
            files, size = usage(cache)
            rows.append({"images": n, "run": kind, **r, "cache_files": files, "cache_mb": size / 1e6})
            print(f"{n:>6} {kind}: {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU, "
                  f"{1000 * r['wall_s'] / n:.2f} ms/img, peak RSS {r['rss_mb']:.0f} MB, cache {files} files "
                  f"{size / 1e6:.0f} MB, val acc {r['val_acc']:.3f} (features computed {r['computed']}, "
                  f"cached {r['cached']})", flush=True)
    print("\n| images | run | wall s | CPU s | ms/image | peak RSS MB | cache files | cache MB | val acc |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['images']} | {r['run']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {1000 * r['wall_s'] / r['images']:.2f} "
              f"| {r['rss_mb']:.0f} | {r['cache_files']} | {r['cache_mb']:.0f} | {r['val_acc']:.3f} |")
    by = {(r["images"], r["run"]): r for r in rows}
    sizes = sorted({r["images"] for r in rows})
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        for kind in ("cold", "warm"):
            ratio = (by[(large, kind)]["wall_s"] / large) / (by[(small, kind)]["wall_s"] / small)
            print(f"{kind}: time per image at {large} / at {small}: {ratio:.2f}x (goal <= 1.2x)")
    largest = sizes[-1]
    print(f"warm run at {largest}: {by[(largest, 'warm')]['wall_s']:.1f} s (goal <= 10 s at 16000); "
          f"peak RSS {max(by[(largest, k)]['rss_mb'] for k in ('cold', 'warm')):.0f} MB (goal <= 2048)")


if __name__ == "__main__":
    main()
