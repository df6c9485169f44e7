"""The studio on a big dataset: how long the data view takes to paint, cold and warm (#30).

    python bench/studio.py [--images 16000] [--classes 10] [--repeat 3]

Makes a dataset of N small JPEGs (N / classes per class, a fifth of them in val/), starts
`transferkit studio` on it, and loads the page in headless Chromium (Playwright): the time from
navigation until the class table and the first page of thumbnails (60) have painted, first on a
studio that has not read the dataset yet (cold: it lists the files; thumbnails are made), then
again (warm: the dataset read, the thumbnails cached), repeated. Also the API calls the page makes
first, timed from Python. Not a test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image


def make_dataset(root: Path, images: int, classes: int) -> Path:
    rng = np.random.default_rng(0)
    per_class = images // classes
    for c in range(classes):
        colour = rng.integers(0, 255, 3)
        for i in range(per_class):
            split = "val" if i % 5 == 0 else "train"
            folder = root / split / f"class{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = np.clip(colour + rng.normal(0, 30, (48, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"img{i:05d}.jpg", quality=80)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=16000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="tk-studio-bench-"))
    start = time.perf_counter()
    data = make_dataset(work / "data", args.images, args.classes)
    print(f"{args.images} images in {args.classes} classes made in {time.perf_counter() - start:.1f} s")
    env = {**os.environ, "TRANSFERKIT_CACHE": str(work / "cache"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "transferkit", "studio", str(data), "--runs", str(work / "runs"),
                             "--port", "0"], stderr=subprocess.PIPE, text=True, env=env)
    url = None
    while url is None:
        line = proc.stderr.readline()
        if not line:
            sys.exit("the studio did not start")
        found = re.search(r"studio at (http://\S+/)", line)
        url = found.group(1) if found else None
    painted = ("() => document.querySelectorAll('#classes tr').length > 1 && "
               "document.querySelectorAll('#images .thumb').length === 60 && "
               "/images in/.test(document.getElementById('status').textContent)")
    # the thumbnails are lazy: those of the first page once it is scrolled into view
    thumbs = "() => [...document.querySelectorAll('#images img')].every(i => i.complete && i.naturalWidth > 0)"
    times, thumb_times = [], []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium") or shutil.which("chromium-browser"),
                                        args=["--no-sandbox", "--disable-gpu"])
            for i in range(1 + args.repeat):
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                t = time.perf_counter()
                page.goto(url)
                page.wait_for_function(painted, timeout=120_000, polling=20)
                times.append(time.perf_counter() - t)
                t = time.perf_counter()
                page.evaluate("document.getElementById('images').scrollIntoView()")
                page.set_viewport_size({"width": 1280, "height": 4000})  # every card of the page in view
                page.wait_for_function(thumbs, timeout=120_000, polling=20)
                thumb_times.append(time.perf_counter() - t)
                page.close()
            browser.close()
        api = {}
        for path in ("api/datasets/data", "api/datasets/data/images?limit=60",
                     "api/datasets/data/images?cls=class03&split=val&limit=60&offset=120"):
            samples = []
            for _ in range(5):
                t = time.perf_counter()
                urllib.request.urlopen(url + path, timeout=60).read()
                samples.append(time.perf_counter() - t)
            api[path] = statistics.median(samples)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    print(f"first paint of the data view (class table, 60 image cards), cold (the files listed): {times[0]:.2f} s; "
          f"its 60 thumbnails made and shown: {thumb_times[0]:.2f} s more")
    print(f"first paint, warm: median {statistics.median(times[1:]):.2f} s of {args.repeat} "
          f"({', '.join(f'{x:.2f}' for x in times[1:])}); 60 thumbnails (cached): median "
          f"{statistics.median(thumb_times[1:]):.2f} s")
    for path, seconds in api.items():
        print(f"GET /{path}: {seconds * 1000:.0f} ms (median of 5)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
