"""predict --out-dir at 16,000 images: 1 and 2 processes, memory against the number of files, and a
SIGKILL mid-run then resumed (#31).

    python bench/predict_scale.py [--images 16000] [--chunk-size 1024]

The images are the shared datasets' real photos and CIFAR-10 PNGs, listed in a --files-from list
(repeated to reach --images lines). The model: the default linear run trained here on
hymenoptera_data. Prints wall and CPU seconds and the peak RSS of each run (its processes'
largest), whether 2 processes wrote the same text as 1, and after a SIGKILL once some chunks were
written: how many chunks the second run skipped and whether every listed file appears once.
Not a test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "assets" / "datasets"


# a fresh process runs the command and reports its children's peak RSS (the largest of the command's
# processes: what RUSAGE_CHILDREN keeps is a maximum over every child ever waited for)
MEASURED = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
            "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
            "print(f'@@ {u.ru_maxrss} {u.ru_utime + u.ru_stime}', file=sys.stderr); sys.exit(code)")


def run(cmd: list[str], env: dict) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", MEASURED, *cmd], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    rss, cpu = next(line for line in proc.stderr.splitlines() if line.startswith("@@ ")).split()[1:]
    lines = proc.stdout.strip().splitlines()
    return {"wall_s": time.perf_counter() - start, "cpu_s": float(cpu), "peak_rss_mb": int(rss) / 1024,
            "out": lines[-1] if lines else ""}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=16000)
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--chunk-size", type=int, default=1024)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tk-predict-scale-"))
    env = {**os.environ, "TRANSFERKIT_CACHE": str(work / "cache")}
    tk = [sys.executable, "-m", "transferkit"]
    run([*tk, "train", str(SHARED / "hymenoptera_data"), "--out", str(work / "run"), "--quiet"], env)
    photos = sorted(str(p) for p in SHARED.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    lines = [photos[i % len(photos)] for i in range(args.images)]
    big, small = work / "big.txt", work / "small.txt"
    big.write_text("".join(f"{p}\n" for p in lines))
    small.write_text("".join(f"{p}\n" for p in lines[:args.small]))
    base = [*tk, "predict", str(work / "run"), "--chunk-size", str(args.chunk_size), "--merge"]
    print(f"{len(set(lines))} distinct images listed {args.images} times over; chunks of {args.chunk_size}")
    rows = {}
    for name, listing, procs in (("small, 1 process", small, 1), ("big, 1 process", big, 1), ("big, 2 processes", big, 2)):
        cmd = [*base, "--files-from", str(listing), "--out-dir", str(work / name.replace(", ", "-").replace(" ", ""))]
        rows[name] = run(cmd + (["--nproc", str(procs)] if procs > 1 else []), env)
        r = rows[name]
        print(f"{name:<18} {r['wall_s']:7.1f} s wall {r['cpu_s']:7.1f} CPU s  peak RSS {r['peak_rss_mb']:6.0f} MB   {r['out']}")
    one = (work / "big-1process" / "predictions.csv").read_text()
    two = (work / "big-2processes" / "predictions.csv").read_text()
    print(f"2 processes wrote the same text as 1: {one == two}")
    print(f"peak RSS, {args.images} vs {args.small} files (1 process): "
          f"{rows['big, 1 process']['peak_rss_mb'] / rows['small, 1 process']['peak_rss_mb']:.2f}x")
    # killed mid-run, then the same command again
    out = work / "killed"
    cmd = [*base, "--files-from", str(big), "--out-dir", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while len(list((out / "chunks").glob("chunk-*.csv"))) < 3 and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    written = len(list((out / "chunks").glob("chunk-*.csv")))
    resumed = run(cmd, env)
    merged = (out / "predictions.csv").read_text().splitlines()[1:]
    listed = big.read_text().splitlines()
    paths = [line.split(",", 1)[0].strip('"') for line in merged]
    print(f"SIGKILL after {written} chunk(s); resumed: {resumed['out']}")
    print(f"every listed file once, in order: {paths == listed} ({len(paths)} rows for {len(listed)} lines); "
          f"the same text as the uninterrupted run: {(out / 'predictions.csv').read_text() == one}")


if __name__ == "__main__":
    main()
