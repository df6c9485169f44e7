"""Predicting a 720p video on this CPU (#42, part 3): frames per second, decode and predict.

    python bench/video.py [--run RUN] [--seconds 10] [--fps 30] [--repeat 3]

Makes a 1280x720 H.264 clip (libx264, PyAV) of `--seconds` from the shared flower photos (each
shown for a second, panning), trains the default run on the repo's sample if no --run is given,
then times, best of --repeat, each in one run:
- decode only: every frame decoded and converted to RGB by PyAV (the floor of any predictor);
- `transferkit predict RUN clip.mp4 --every 1/fps`: every frame decoded and predicted;
- `transferkit predict RUN clip.mp4` (--every 1, the default): one frame a second.
Prints frames per second (predicted frames / wall s) and how much faster than real time,
with CPU seconds (user + sys of the command).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "assets" / "datasets"


def make_clip(path: Path, seconds: int, fps: int) -> Path:
    import av
    from PIL import Image

    photos = sorted((SHARED / "flower_photos_small").rglob("*.jpg"))[:seconds] or sorted(ROOT.glob("samples/**/*.jpg"))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": "23"})
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        for s in range(seconds):
            photo = Image.open(photos[s % len(photos)]).convert("RGB").resize((1440, 810))
            for f in range(fps):  # a slow pan across the photo
                x, y = int(160 * f / fps), int(90 * f / fps)
                frame = av.VideoFrame.from_ndarray(np.asarray(photo.crop((x, y, x + 1280, y + 720))), format="rgb24")
                for packet in stream.encode(frame):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def decode_only(path: Path) -> tuple[int, float, float]:
    import av

    start, cpu = time.perf_counter(), time.process_time()
    n = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            frame.to_image()
            n += 1
    return n, time.perf_counter() - start, time.process_time() - cpu


def command(args: list[str]) -> tuple[float, float, int]:
    """(wall s, CPU s of the command, frames predicted) of `transferkit predict ...`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "transferkit", *args], capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        sys.exit(proc.stderr)
    frames = len(proc.stdout.splitlines()) - 1
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="a run folder (default: train the default run on samples/hymenoptera_small)")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tk-video-"))
    run = args.run
    if run is None:
        run = str(work / "run")
        subprocess.run([sys.executable, "-m", "transferkit", "train", str(ROOT / "samples" / "hymenoptera_small"),
                        "--out", run, "--quiet", "--no-report"], check=True)
    clip = make_clip(work / "clip-720p.mp4", args.seconds, args.fps)
    print(f"{clip.name}: {args.seconds} s, {args.fps} fps, 1280x720 H.264, {clip.stat().st_size / 1e6:.1f} MB; "
          f"{os.cpu_count()} cores")
    best = {}
    for _ in range(args.repeat):
        n, wall, cpu = decode_only(clip)
        best["decode"] = min(best.get("decode", (1e9,)), (wall, cpu, n))
        for name, extra in (("every frame", ["--every", f"{1 / args.fps:.6f}"]), ("1 frame/s", [])):
            result = command(["predict", run, str(clip), *extra])
            best[name] = min(best.get(name, (1e9,)), result)
    print(f"{'':<34} {'frames':>7} {'wall s':>7} {'CPU s':>7} {'frames/s':>9} {'x real time':>12}")
    for name, label in (("decode", "decode only (PyAV, to RGB)"), ("every frame", "predict --every 1/fps"),
                        ("1 frame/s", "predict (--every 1)")):
        wall, cpu, n = best[name]
        print(f"{label:<34} {n:>7} {wall:>7.2f} {cpu:>7.2f} {n / wall:>9.1f} {args.seconds / wall:>11.2f}x")


if __name__ == "__main__":
    main()
