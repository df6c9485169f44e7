"""Same answers on every CPU: the default bundle's val accuracy when the features come from ONNX
Runtime fp32 (what `auto` runs on CPUs without AMX, with or without native bf16) and from
PyTorch bf16 (what it runs on CPUs with AMX for passes of 2,000 images or more; what every CPU
with bf16 ran before the engine layer), side by side in one run, on each dataset given; and the
largest feature difference between the engines, on the same images.

    python bench/same_answers.py DATASET [DATASET ...] [--sample 64]

Each train runs in its own process with its own cache. Prints a table: val accuracy per engine,
the number of val images whose predicted label differs, and the largest |feature difference|
relative to the features' largest magnitude (ONNX Runtime fp32 against PyTorch fp32 and bf16).
Not a test: numbers depend on the machine (this one's CPU is printed).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = {"onnxruntime fp32": ["--engine", "onnxruntime"], "torch bf16": ["--engine", "torch", "--precision", "bf16"]}


def train(data: str, out: Path, options: list[str]) -> dict:
    env = {**os.environ, "TRANSFERKIT_CACHE": str(out.parent / f"cache-{out.name}")}
    cmd = [sys.executable, "-m", "transferkit", "train", data, "--out", str(out), "--quiet", "--no-report", *options]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return json.loads((out / "results.json").read_text())


def labels(run: Path) -> dict[str, str]:
    with open(run / "predictions.csv", newline="", encoding="utf-8") as f:
        return {row["path"]: row["predicted"] for row in csv.DictReader(f)}


def feature_differences(data: str, sample: int) -> dict[str, float]:
    import numpy as np
    import torch

    from transferkit import engines
    from transferkit.cache import Cache
    from transferkit.data.decode import eval_array
    from transferkit.engines.convert import features_network
    from transferkit.models import backbones
    from transferkit.models.classifier import build_classifier
    from transferkit.runtime import Extractor, Runtime

    spec = backbones.get("efficientnet_lite0")
    pre = spec.preprocess
    model, _ = build_classifier(spec, 2, features="multi")
    paths = sorted(p for p in Path(data).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    paths = paths[:: max(1, len(paths) // sample)][:sample]
    batch = np.stack([eval_array(str(p), pre.resize_size, pre.input_size, pre.interpolation) for p in paths])
    batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
    with tempfile.TemporaryDirectory() as tmp:
        ort = engines.ENGINES.get("onnxruntime").features(
            features_network({"bench": 1}, lambda: model.backbone, pre, spec.name),
            engines.choose("onnxruntime", "cpu"), Cache(tmp).prepare(), lambda m: None)
        reference = np.concatenate([ort.forward(batch[i:i + 32]) for i in range(0, len(batch), 32)])
    scale = float(np.abs(reference).max())
    out = {}
    for precision in ("fp32", "bf16"):
        ex = Extractor(model.backbone, pre, Runtime.create("cpu", precision))
        got = np.concatenate([ex.forward(torch.from_numpy(batch[i:i + 32])).numpy() for i in range(0, len(batch), 32)])
        out[precision] = float(np.abs(got - reference).max()) / scale
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="+")
    ap.add_argument("--sample", type=int, default=64, help="images the feature difference is measured on")
    args = ap.parse_args()
    from transferkit import machine as cpu

    facts = cpu.describe()
    print(f"CPU: {facts['cpu']}, native bf16: {'yes' if facts['bf16'] else 'no'}, AMX: "
          f"{'yes' if facts['amx'] else 'no'}\n")
    print("| dataset | val images | onnxruntime fp32 | torch bf16 | labels that differ | "
          "max feature diff vs torch fp32 | vs torch bf16 |\n|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for data in args.datasets:
            name = Path(data).name
            results, predicted = {}, {}
            for variant, options in VARIANTS.items():
                out = Path(tmp) / f"{name}-{variant.replace(' ', '-')}"
                results[variant] = train(data, out, options)
                predicted[variant] = labels(out)
            a, b = predicted.values()
            differ = sum(a[p] != b.get(p) for p in a)
            diff = feature_differences(data, args.sample)
            r = list(results.values())
            print(f"| {name} | {r[0]['num_val']} | {r[0]['val_acc']:.4f} | {r[1]['val_acc']:.4f} | {differ} | "
                  f"{diff['fp32']:.1e} | {diff['bf16']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
