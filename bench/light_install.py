"""The light install against the full one (#41 goal 5): the size of each environment, and a run
folder's cold serve start and predict with each, side by side in one run.

    python bench/light_install.py RUN IMAGES --light-python /tmp/light/bin/python [--repeat 3]
    python bench/light_install.py RUN IMAGES --make-light /tmp/light   # builds it first (pip, network)

RUN: a run folder trained with the full install (it carries its converted network); IMAGES: a
folder of images to predict. Each command starts with an empty cache (a fresh temporary
TRANSFERKIT_CACHE), as on a machine the run was copied to. "serve": from the command's start to
the first /predict answered; CPU seconds are the server process's (user + system, /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_light(prefix: Path) -> Path:
    """A new venv at `prefix` with `pip install <this checkout>` (no extras): the light install."""
    subprocess.run([sys.executable, "-m", "venv", str(prefix)], check=True)
    python = prefix / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(ROOT)], check=True)
    return python


def size_mb(python: Path) -> tuple[float, float]:
    """(the whole environment, its site-packages) in MB, as `du` counts them."""
    code = "import sys, site; print(sys.prefix); print(site.getsitepackages()[0])"
    prefix, packages = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                                      check=True).stdout.split()
    def du(path: str) -> float:
        return int(subprocess.run(["du", "-sk", path], capture_output=True, text=True).stdout.split()[0]) / 1024
    return du(prefix), du(packages)


def has_torch(python: Path) -> bool:
    code = "import importlib.util; print(importlib.util.find_spec('torch') is not None)"
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True).stdout.strip() == "True"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serve_start(python: Path, run: Path, image: bytes) -> tuple[float, float]:
    """(wall seconds from the command to the first /predict answered, the server's CPU seconds)."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TRANSFERKIT_CACHE": cache, "PYTHONUNBUFFERED": "1"}
        started = time.perf_counter()
        proc = subprocess.Popen([str(python), "-m", "transferkit", "serve", str(run), "--port", "0"],
                                stderr=subprocess.PIPE, text=True, env=env)
        try:
            text = ""
            while "serving " not in text:
                line = proc.stderr.readline()
                if not line and proc.poll() is not None:
                    raise RuntimeError(f"serve did not start:\n{text}")
                text += line
            url = re.search(r"at (http://\S+/)", text).group(1)
            request = urllib.request.Request(url + "predict", data=image, headers={"content-type": "image/jpeg"})
            json.loads(urllib.request.urlopen(request, timeout=120).read())
            wall = time.perf_counter() - started
            return wall, cpu_seconds(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def predict(python: Path, run: Path, images: Path) -> tuple[float, float]:
    """(wall, CPU seconds) of `predict RUN IMAGES` into a temporary CSV, with an empty cache."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "TRANSFERKIT_CACHE": str(Path(tmp) / "cache")}
        before = os.times()
        started = time.perf_counter()
        subprocess.run([str(python), "-m", "transferkit", "predict", str(run), str(images), "--output",
                        str(Path(tmp) / "p.csv")], check=True, env=env, capture_output=True)
        wall = time.perf_counter() - started
        after = os.times()
        return wall, (after.children_user - before.children_user) + (after.children_system - before.children_system)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("images", type=Path)
    parser.add_argument("--light-python", type=Path, help="the python of a light install")
    parser.add_argument("--make-light", type=Path, metavar="DIR", help="build the light install at DIR first")
    parser.add_argument("--full-python", type=Path, default=Path(sys.executable))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    light = make_light(args.make_light) if args.make_light else args.light_python
    if light is None:
        parser.error("give --light-python or --make-light")
    installs = {"light": light, "full": args.full_python}
    if has_torch(light) or not has_torch(args.full_python):
        sys.exit("the light python must lack torch, the full one have it")
    image = next(p for p in sorted(args.images.rglob("*")) if p.suffix.lower() in (".jpg", ".jpeg", ".png")).read_bytes()
    rows = {name: {"size": size_mb(python), "serve": [], "predict": []} for name, python in installs.items()}
    for _ in range(args.repeat):  # alternating, so that a noisy neighbour hits both
        for name, python in installs.items():
            rows[name]["serve"].append(serve_start(python, args.run, image))
            rows[name]["predict"].append(predict(python, args.run, args.images))
    print(f"{'install':8} {'venv MB':>8} {'site-packages MB':>17} {'serve cold start s (CPU s)':>28} "
          f"{'predict s (CPU s)':>20}")
    for name, row in rows.items():
        serve = min(row["serve"])
        pred = min(row["predict"])
        print(f"{name:8} {row['size'][0]:8.0f} {row['size'][1]:17.0f} {serve[0]:20.2f} ({serve[1]:.2f}) "
              f"{pred[0]:12.2f} ({pred[1]:.2f})")
    light_row, full_row = rows["light"], rows["full"]
    print(f"light / full: venv {light_row['size'][0] / full_row['size'][0]:.3f}x ({light_row['size'][0]:.0f} MB / "
          f"{full_row['size'][0]:.0f} MB), serve cold start "
          f"{min(light_row['serve'])[0] / min(full_row['serve'])[0]:.2f}x, predict "
          f"{min(light_row['predict'])[0] / min(full_row['predict'])[0]:.2f}x (best of {args.repeat} each)")


if __name__ == "__main__":
    main()
