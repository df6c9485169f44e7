"""Doctor benchmark: known problems injected into a copy of each shared dataset, then
`transferkit doctor` on it, cold (empty cache) and warm; precision and recall per kind.

    python bench/doctor.py [--datasets hymenoptera_data,flower_photos_small] [--copies 20] [--flips 20]

Injected into the copy (nothing of ../shared is changed): --flips training images moved to
another class (flipped labels); 20 exact copies of training images placed in val (same class);
--copies near copies in val, made by each transformation in turn (NEAR_COPIES: a crop keeping 80%
of the area at a random place, a 0.5x resize, JPEG quality 30, a mirror, a 5 degree turn,
brightness and contrast +-20%, PNG <-> JPEG, and two combinations of them all); 5 blank or very
dark images among the training images. The clean dataset is checked first: what doctor finds
there is listed (not counted as false) and the pairs it already holds are not held against the
injected ones. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

SHARED = Path(__file__).resolve().parents[2] / "shared" / "assets" / "datasets"


NEAR_COPIES = ("crop80", "scale0.5", "jpeg30", "flip", "rot5", "brightness", "contrast", "format", "combined",
               "combined-strong")


def near_copy(im: Image.Image, how: str, rng: random.Random) -> tuple[Image.Image, str, int]:
    """(the copy, its format, JPEG quality) of `im` made by `how` (one of NEAR_COPIES)."""
    def crop(im, area):
        side = area ** 0.5
        w, h = int(im.width * side), int(im.height * side)
        x, y = rng.randint(0, im.width - w), rng.randint(0, im.height - h)
        return im.crop((x, y, x + w, y + h))

    def resize(im, f):
        return im.resize((max(1, int(im.width * f)), max(1, int(im.height * f))), Image.BICUBIC)

    if how == "crop80":
        return crop(im, 0.8), "jpg", 90
    if how == "scale0.5":
        return resize(im, 0.5), "jpg", 90
    if how == "jpeg30":
        return im, "jpg", 30
    if how == "flip":
        return ImageOps.mirror(im), "jpg", 90
    if how == "rot5":
        return im.rotate(rng.choice((-5, 5)), Image.BICUBIC), "jpg", 90
    if how == "brightness":
        return ImageEnhance.Brightness(im).enhance(rng.choice((0.8, 1.2))), "jpg", 90
    if how == "contrast":
        return ImageEnhance.Contrast(im).enhance(rng.choice((0.8, 1.2))), "jpg", 90
    if how == "format":  # the originals are JPEG: a PNG of the decoded pixels
        return im, "png", 0
    strong = how == "combined-strong"
    im = resize(crop(im, 0.8 if strong else 0.9), 0.5 if strong else 0.7)
    im = ImageOps.mirror(im).rotate(5 if strong else 3, Image.BICUBIC)
    im = ImageEnhance.Contrast(ImageEnhance.Brightness(im).enhance(1.2 if strong else 1.1)).enhance(0.8 if strong else 0.9)
    return im, "jpg", 30 if strong else 50


def inject(src: Path, dst: Path, copies: int = 20, flips: int = 20, seed: int = 0) -> dict:
    """Copy `src` to `dst` with the problems injected; returns what was injected (paths in dst)."""
    rng = random.Random(seed)
    shutil.copytree(src, dst)
    classes = sorted(p.name for p in (dst / "train").iterdir() if p.is_dir())
    train = sorted(p for p in (dst / "train").rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    picked = rng.sample(train, flips + 20 + copies)
    flipped, moved = [], {}  # moved: a flipped image's path -> where it was
    for path in picked[:flips]:
        other = rng.choice([c for c in classes if c != path.parent.name])
        target = dst / "train" / other / f"flipped_{path.name}"
        path.rename(target)
        flipped.append(str(target))
        moved[str(target)] = str(path)
    pairs = []
    for n, path in enumerate(picked[flips:flips + 20]):
        copy = dst / "val" / path.parent.name / f"exact_{n}_{path.name}"
        shutil.copyfile(path, copy)
        pairs.append((str(path), str(copy), "exact"))
    for n, path in enumerate(picked[flips + 20:]):
        how = NEAR_COPIES[n % len(NEAR_COPIES)]
        with Image.open(path) as im:
            im, fmt, quality = near_copy(ImageOps.exif_transpose(im).convert("RGB"), how, rng)
        copy = dst / "val" / path.parent.name / f"near_{how}_{n}_{path.stem}.{fmt}"
        im.save(copy, quality=quality) if fmt == "jpg" else im.save(copy)
        pairs.append((str(path), str(copy), how))
    bad = []
    for n in range(5):
        level = (0, 8, 128, 250, 3)[n]
        arr = Image.new("RGB", (320, 240), (level,) * 3)
        target = dst / "train" / classes[n % len(classes)] / f"blank_{n}.png"
        arr.save(target)
        bad.append(str(target))
    return {"flipped": flipped, "pairs": pairs, "bad": bad, "moved": moved}


def doctor(data: Path, out: Path, cache: Path) -> tuple[dict, float, float]:
    started, cpu = time.perf_counter(), os.times()
    proc = subprocess.run([sys.executable, "-m", "transferkit", "doctor", str(data), "--out", str(out),
                           "--cache-dir", str(cache), "--quiet"], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    after = os.times()
    return (json.loads((out / "doctor.json").read_text()), time.perf_counter() - started,
            after.children_user + after.children_system - cpu.children_user - cpu.children_system)


def pairs_of(report: dict) -> set[frozenset]:
    return {frozenset((p["a"]["path"], p["b"]["path"])) for k in ("exact_duplicates", "near_duplicates") for p in report[k]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="hymenoptera_data,flower_photos_small")
    parser.add_argument("--copies", type=int, default=20, help="near copies injected per set")
    parser.add_argument("--flips", type=int, default=20, help="flipped labels injected per set")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tk-doctor-bench-"))
    for name in args.datasets.split(","):
        src = SHARED / name
        cache = work / f"cache-{name}"
        clean, t_clean, _ = doctor(src, work / f"clean-{name}", cache)
        print(f"\n== {name}: {clean['images']} images, clean: {len(clean['exact_duplicates'])} exact and "
              f"{len(clean['near_duplicates'])} near duplicate pairs, {len(clean.get('same_scene', []))} same-scene pairs, "
              f"{len(clean['label_issues'])} label suspects, "
              f"{len(clean['outliers'])} outliers, "
              + ", ".join(f"{len(v)} {k}" for k, v in clean["image_issues"].items() if v))
        for kind in ("exact_duplicates", "near_duplicates", "same_scene"):
            for p in clean.get(kind, []):
                print(f"   clean {kind}: {p['kind']} features {p['similarity']:.3f} match {p.get('match')} "
                      f"{p['a']['path']} | {p['b']['path']}")
        for x in clean["label_issues"]:
            print(f"   clean label suspect: {x['path']} ({x['label']} -> {x['suggested']}, score {x['score']})")
        for x in clean["outliers"]:
            print(f"   clean outlier: {x['path']} (z {x['z']})")
        for kind, items in clean["image_issues"].items():
            for x in items:
                print(f"   clean {kind}: {x['path']} ({x['detail']})")
        data = work / f"injected-{name}"
        truth = inject(src, data, args.copies, args.flips)
        cache2 = work / f"cache2-{name}"
        report, cold, cold_cpu = doctor(data, work / f"out-{name}", cache2)
        _, warm, warm_cpu = doctor(data, work / f"out2-{name}", cache2)
        found = pairs_of(report)
        injected = {frozenset(p[:2]) for p in truth["pairs"]}
        hit = injected & found
        # pairs of the clean data found again (under their paths in the copy) are not false, nor is
        # a copy paired with an image that the clean data pairs with its original
        relocated = {frozenset(str(data / Path(x).relative_to(src)) for x in pair) for pair in pairs_of(clean)}
        original = {copy: orig for orig, copy, _ in truth["pairs"]}
        # (a flipped image keeps its pairs: they are counted under the path it had)
        unmoved = lambda x: truth["moved"].get(original.get(x, x), original.get(x, x))  # noqa: E731
        false = {pair for pair in found - injected - relocated
                 if frozenset(unmoved(x) for x in pair) not in relocated | injected and len({unmoved(x) for x in pair}) == 2}
        missed = [p for p in truth["pairs"] if frozenset(p[:2]) not in found]
        suspects = {x["path"] for x in report["label_issues"]}
        flipped = set(truth["flipped"])
        bad_found = {x["path"] for k in ("blank", "dark") for x in report["image_issues"].get(k, [])}
        sims = {frozenset((p["a"]["path"], p["b"]["path"])): p["similarity"] for k in ("exact_duplicates", "near_duplicates")
                for p in report[k]}
        scene = {frozenset((p["a"]["path"], p["b"]["path"])) for p in report.get("same_scene", [])}
        print(f"duplicates (20 exact + {args.copies} near, across train/val): recall {len(hit) / len(injected):.3f} "
              f"({len(hit)}/{len(injected)}), false pairs {len(false)}")
        for p in missed:
            print(f"   missed {p[2]}: {p[1]}" + (" (reported as same scene)" if frozenset(p[:2]) in scene else ""))
        for pair in sorted(false, key=lambda q: sorted(q)):
            print(f"   false pair {sims[pair]:.3f}: {' | '.join(sorted(pair))}")
        for how in ("exact", *NEAR_COPIES):
            got = [sims.get(frozenset(p[:2])) for p in truth["pairs"] if p[2] == how]
            print(f"   {how:<9} similarities: {', '.join('missed' if s is None else f'{s:.3f}' for s in got)}")
        before = {str(data / Path(x["path"]).relative_to(src)) for x in clean["label_issues"]}
        fresh = suspects - before
        print(f"flipped labels ({len(flipped)}): recall {len(flipped & suspects) / len(flipped):.3f}, precision "
              f"{len(flipped & suspects) / max(len(suspects), 1):.3f} ({len(suspects)} flagged; "
              f"{len(flipped & fresh) / max(len(fresh), 1):.3f} of the {len(fresh)} not already flagged on the clean data)")
        print(f"blank/dark images: {len(set(truth['bad']) & bad_found)}/{len(truth['bad'])} found")
        print(f"doctor wall time: cold {cold:.1f} s (CPU {cold_cpu:.1f} s), warm {warm:.1f} s (CPU {warm_cpu:.1f} s)")
    print(f"\nfiles: {work}")


if __name__ == "__main__":
    main()
