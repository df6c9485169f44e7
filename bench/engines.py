"""Engine benchmark: one frozen backbone's forward on every inference engine this CPU has, side by
side in one run (what `engines.choose` decides from).

    python bench/engines.py [--model efficientnet_lite0] [--batch 32] [--threads 2] [--repeat 5]

Model-only throughput on a fixed uint8 batch (decoding excluded), best of `--repeat` timed
batches after a warm-up, with CPU seconds (user + sys of this process) per batch beside wall:
ONNX Runtime fp32 (the conversion transferkit caches, normalization inside the graph),
OpenVINO on that same conversion in fp32 (`--engine openvino`) and, on a CPU with native bf16,
with its bf16 hint (its default there; not fp32's answers), PyTorch fp32 eager (NCHW, as tutorials run it), PyTorch fp32 and bf16 the way transferkit runs
them (BatchNorm folded, channels_last) eager and TorchScript-frozen. Prints the CPU's facts
(bf16, AMX) and the ratios to ONNX Runtime fp32. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn, repeat: int) -> tuple[float, float]:
    """(best wall s, its CPU s) of `repeat` calls after one warm-up call."""
    fn()
    best = None
    for _ in range(repeat):
        c, t = cpu_seconds(), time.perf_counter()
        fn()
        sample = (time.perf_counter() - t, cpu_seconds() - c)
        best = sample if best is None or sample[0] < best[0] else best
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    import numpy as np
    import torch

    from transferkit import engines
    from transferkit.cache import Cache
    from transferkit import machine as cpu
    from transferkit.engines import convert
    from transferkit.engines.convert import features_network
    from transferkit.models import backbones
    from transferkit.models.classifier import build_classifier
    from transferkit.runtime import Extractor, Runtime

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    spec = backbones.get(args.model)
    pre = spec.preprocess
    model, _ = build_classifier(spec, 2)
    backbone = model.backbone.eval()
    x = torch.randint(0, 256, (args.batch, 3, pre.input_size, pre.input_size), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(0))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Cache(tmp).prepare()
        network = features_network({"bench": args.model}, lambda: backbone, pre, spec.name)
        found = convert.convert(network, x.numpy(), cache)  # converted and checked outside the timing
        session = convert.session(found.model, args.threads)
        xn = x.numpy()
        rows.append(("onnxruntime fp32", *timed(lambda: session.run(None, {"input": xn}), args.repeat)))
        if importlib.util.find_spec("openvino") is not None:  # (the openvino extra)
            reference = session.run(None, {"input": xn})[0]
            ov = convert.session(found.model, args.threads, "openvino")
            diff = float(np.abs(ov.run(None, {"input": xn})[0] - reference).max() / np.abs(reference).max())
            rows.append((f"openvino fp32 (max |diff| {diff:.1e} of the scale)",
                         *timed(lambda: ov.run(None, {"input": xn}), args.repeat)))
            if cpu.has_bf16():  # OpenVINO's own default on such a CPU: not fp32's answers
                from transferkit.sessions.openvino import shared_core

                core = shared_core()
                compiled = core.compile_model(core.read_model(found.model), "CPU", {
                    "INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": args.threads})
                got = compiled(xn)[0]
                diff = float(np.abs(got - reference).max() / np.abs(reference).max())
                rows.append((f"openvino bf16 hint (max |diff| {diff:.1e} of the scale)",
                             *timed(lambda: compiled(xn), args.repeat)))
    norm = torch.tensor(pre.mean).view(1, 3, 1, 1), torch.tensor(pre.std).view(1, 3, 1, 1)

    def plain():
        with torch.no_grad():
            backbone((x.float() / 255 - norm[0]) / norm[1])

    rows.append(("torch fp32 eager NCHW (plain)", *timed(plain, args.repeat)))
    for precision in ("fp32", "bf16"):
        ex = Extractor(backbone, pre, Runtime.create("cpu", precision))
        rows.append((f"torch {precision} folded channels_last", *timed(lambda: ex.forward(x), args.repeat)))
        ex.freeze = True
        ex.forward(x)
        rows.append((f"torch {precision} folded channels_last frozen", *timed(lambda: ex.forward(x), args.repeat)))

    facts = cpu.describe()
    print(f"\n{args.model}, batch {args.batch}, {pre.input_size} px, {args.threads} threads; CPU: {facts['cpu']}, "
          f"native bf16: {'yes' if facts['bf16'] else 'no'}, AMX: {'yes' if facts['amx'] else 'no'}\n")
    print("| engine | img/s | wall ms/batch | CPU s/batch | vs onnxruntime fp32 |\n|---|---:|---:|---:|---:|")
    base = rows[0][1]
    for name, wall, cpu_s in rows:
        print(f"| {name} | {args.batch / wall:.0f} | {1000 * wall:.0f} | {cpu_s:.2f} | {base / wall:.2f}x |")
    auto = engines.choose("auto", "cpu", "auto", images=10_000)
    print(f"\nengines.choose for 10,000 images on this CPU: {auto.line()}")
    print(f"engines.choose for 100 images: {engines.choose('auto', 'cpu', 'auto', images=100).line()}")


if __name__ == "__main__":
    main()
