"""INT8 features (`--engine onnxruntime-int8`) against fp32 ONNX Runtime (`auto`), side by side
in one run (#41 goal 6): the feature pass's seconds, the engine alone (img/s at batch 32), the
default head's val accuracy, the two runs' agreement, and the INT8 network's gate (the mean cosine
of its last-layer features with fp32's on its calibration images).

    python bench/int8_engine.py DATA [DATA ...] [--repeat 2]

Per dataset, in a fresh cache: one INT8 run first (it converts the backbone and quantizes it:
"first INT8 run"), then `--repeat` rounds of an fp32 run and an INT8 run, each with the features
removed from the cache (the conversions kept), so every feature pass is cold. In one process,
with the gate open (`int8.MIN_COSINE = 0`) so that every dataset is measured; --no-report.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def timed(fn):
    """(fn(), wall s, CPU s of this process and its ended children)."""
    before, started = os.times(), time.perf_counter()
    out = fn()
    after = os.times()
    cpu = sum(getattr(after, k) - getattr(before, k) for k in ("user", "system", "children_user", "children_system"))
    return out, time.perf_counter() - started, cpu


def predicted(run: Path) -> dict[str, str]:
    with open(run / "predictions.csv", newline="", encoding="utf-8") as f:
        return {row["path"]: row["predicted"] for row in csv.DictReader(f)}


def engine_speed(fp32_run: Path, int8_run: Path, images: list[str]) -> tuple[float, float]:
    """img/s of each run's features network alone at batch 32 (best of 3)."""
    from transferkit.data.decode import eval_array
    from transferkit.engines.convert import read_converted, session
    from transferkit.models.bundle import read_meta

    pre = read_meta(fp32_run)[0].preprocess
    x = np.stack([eval_array(p, pre.resize_size, pre.input_size, pre.interpolation, p) for p in images[:32]])
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    speeds = []
    for run in (fp32_run, int8_run):
        s = session(read_converted(run / "converted" / "features.tkx").model)
        s.run(None, {"input": x})
        best = min(timed(lambda: s.run(None, {"input": x}))[1] for _ in range(3))
        speeds.append(len(x) / best)
    return speeds[0], speeds[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="+", type=Path)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    import transferkit
    from transferkit.engines import int8
    from transferkit.engines.convert import read_converted

    int8.MIN_COSINE = 0.0  # measure every dataset; the gate's threshold is chosen from these numbers
    rows = []
    for data in args.data:
        with tempfile.TemporaryDirectory() as tmp:
            cache = Path(tmp) / "cache"
            os.environ["TRANSFERKIT_CACHE"] = str(cache)

            def train(engine: str, name: str):
                shutil.rmtree(cache / "features", ignore_errors=True)
                return transferkit.train(data, out=str(Path(tmp) / name), engine=engine, quiet=True, no_report=True)

            first, first_wall, first_cpu = timed(lambda: train("onnxruntime-int8", "first"))
            cosine = read_converted(first.path / "converted" / "features.tkx").facts["cosine_to_fp32"]
            runs = {"onnxruntime": [], "onnxruntime-int8": []}
            for r in range(args.repeat):
                for engine in runs:
                    run, wall, cpu = timed(lambda: train(engine, f"{engine}-{r}"))
                    runs[engine].append((run, wall, cpu))
            fp32_run, int8_run = runs["onnxruntime"][0][0], runs["onnxruntime-int8"][0][0]
            a, b = predicted(fp32_run.path), predicted(int8_run.path)
            agree = np.mean([a[k] == b[k] for k in a])
            fp32_speed, int8_speed = engine_speed(fp32_run.path, int8_run.path, sorted(a))
            best = {e: min(runs[e], key=lambda x: x[0].results["strategy_info"]["features_s"]) for e in runs}
            rows.append({
                "data": data.name, "images": fp32_run.results["num_train"] + fp32_run.results["num_val"],
                "first_int8": (first_wall, first_cpu), "cosine": cosine,
                "features_s": {e: best[e][0].results["strategy_info"]["features_s"] for e in runs},
                "wall": {e: (best[e][1], best[e][2]) for e in runs},
                "acc": {e: best[e][0].results["val_acc"] for e in runs}, "agree": agree,
                "speed": (fp32_speed, int8_speed),
            })
    print(f"{'data':22} {'images':>6} {'gate cos':>8} {'pass fp32 s':>11} {'pass int8 s':>11} {'ratio':>6} "
          f"{'run fp32 s (CPU)':>17} {'run int8 s (CPU)':>17} {'img/s fp32':>10} {'img/s int8':>10} "
          f"{'acc fp32':>8} {'acc int8':>8} {'agree':>6} {'first int8 s':>12}")
    for row in rows:
        f, i = row["features_s"]["onnxruntime"], row["features_s"]["onnxruntime-int8"]
        wf, wi = row["wall"]["onnxruntime"], row["wall"]["onnxruntime-int8"]
        print(f"{row['data']:22} {row['images']:6d} {row['cosine']:8.4f} {f:11.2f} {i:11.2f} {i / f:6.2f} "
              f"{wf[0]:9.2f} ({wf[1]:5.1f}) {wi[0]:9.2f} ({wi[1]:5.1f}) {row['speed'][0]:10.1f} {row['speed'][1]:10.1f} "
              f"{row['acc']['onnxruntime']:8.4f} {row['acc']['onnxruntime-int8']:8.4f} {row['agree']:6.3f} "
              f"{row['first_int8'][0]:12.1f}")
    print("ratio: the INT8 feature pass / the fp32 one (best of --repeat each); acc: the default head's val accuracy; "
          "agree: share of val images both runs predict alike")
    for row in rows:  # one line per dataset, for bench/speed.py to relay
        f, i = row["features_s"]["onnxruntime"], row["features_s"]["onnxruntime-int8"]
        print(f"int8 / fp32 on {row['data']}: feature pass {i / f:.2f}x, engine img/s "
              f"{row['speed'][1] / row['speed'][0]:.2f}x, val acc {100 * (row['acc']['onnxruntime-int8'] - row['acc']['onnxruntime']):+.1f} pt, "
              f"agreement {row['agree']:.3f}, gate cosine {row['cosine']:.4f}")


if __name__ == "__main__":
    main()
