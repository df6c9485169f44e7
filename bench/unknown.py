"""An honest "unknown" (#40): how well each candidate out-of-distribution score tells images
like the training images from others, on the shared sets, and the score the product keeps.

    python bench/unknown.py [--json FILE] [--max-unknown 500]

Settings (each trained by `transferkit train DATA`, the default, in its own process):
- far: trained on one set, its val images known, the other sets' val images unknown
  (hymenoptera vs flowers + CIFAR-10, flowers vs hymenoptera + CIFAR-10, CIFAR-10 vs the photos);
- near: trained on half the classes of a set, the other half's val images unknown (flowers:
  daisy, dandelion, roses vs sunflowers, tulips; CIFAR-10: airplane, automobile, bird, cat, deer
  vs dog, frog, horse, ship, truck).
Candidates (`transferkit.ood.candidate_scores`): max softmax probability, energy, Mahalanobis on
unit features, k-th nearest neighbour on unit features (Sun et al. 2022; the product's), all from
the same features and logits; "product" is what `predict` writes (ood_score), to check it is the
k-NN one. AUROC (goal: far >= 0.97, near >= 0.85) and FPR at 95% TPR (the unknown images kept
when 95% of the known are). The known images' own numbers also give --reject auto's effect: the
share of unknown images it flags.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import SHARED, print_table, train_cli  # noqa: E402

HYM, FLO, CIF = "hymenoptera_data", "flower_photos_small", "cifar10-png"
NEAR = {FLO: ["daisy", "dandelion", "roses"], CIF: ["airplane", "automobile", "bird", "cat", "deer"]}


def subset(data: Path, classes: list[str], into: Path) -> Path:
    """A dataset of `data`'s `classes` only (links to its class folders; nothing copied)."""
    for split in ("train", "val"):
        (into / split).mkdir(parents=True, exist_ok=True)
        for c in classes:
            (into / split / c).symlink_to(data / split / c)
    return into


def val_images(data: Path, classes: list[str] | None = None) -> list[str]:
    return sorted(str(p) for p in (data / "val").rglob("*") if p.is_file() and p.suffix.lower() in
                  (".jpg", ".jpeg", ".png") and (classes is None or p.parent.name in classes))


def sample(paths: list[str], n: int) -> list[str]:
    if len(paths) <= n:
        return paths
    return [paths[i] for i in sorted(np.random.default_rng(0).choice(len(paths), n, replace=False))]


def features(predictor, paths: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, logits, the product's OOD scores) of `paths`, on the run's PyTorch predictor (its
    precision: the same on the product's side and the candidates')."""
    import torch

    feats, logits = [], []
    for start in range(0, len(paths), 64):
        u8 = np.stack([predictor.prepare(p) for p in paths[start:start + 64]])
        with torch.inference_mode():
            f = predictor.extractor.forward(torch.from_numpy(u8).permute(0, 3, 1, 2)).float()
            logits.append(predictor.model.head(f).numpy())
            feats.append(f.numpy())
    _, product, _ = predictor.scored(paths)
    return np.concatenate(feats), np.concatenate(logits), product


def measure(run: Path, known: list[str], unknown: list[str]) -> dict:
    import transferkit
    from transferkit.ood import auroc, candidate_scores, fpr_at_tpr

    split = json.loads((run / "split.json").read_text())
    train = [p for p, _ in split["train"]]
    classes = split["classes"]
    labels = np.array([label if isinstance(label, int) else classes.index(label) for _, label in split["train"]])
    with transferkit.load(run, engine="torch") as predictor:
        width = predictor.ood.width
        train_x, _, _ = features(predictor, train)
        kx, kl, kp = features(predictor, known)
        ux, ul, up = features(predictor, unknown)
        threshold, reference = predictor.ood.threshold, predictor.ood.reference
    np.savez(run / "ood_features.npz", train_x=train_x, labels=labels, kx=kx, kl=kl, ux=ux, ul=ul, width=width)
    t = predictor.task.temperature
    known_s = candidate_scores(train_x[:, :width], labels, kx[:, :width], kl, t, reference)
    unknown_s = candidate_scores(train_x[:, :width], labels, ux[:, :width], ul, t, reference)
    known_s["product"], unknown_s["product"] = kp, up
    out = {"known": len(known), "unknown": len(unknown), "flagged_by_auto": float((up > threshold).mean()),
           "known_flagged_by_auto": float((kp > threshold).mean()),
           "product_equals_knn": bool(np.allclose(kp, known_s["knn"], atol=1e-4))}
    for name in known_s:
        out[f"auroc_{name}"] = auroc(known_s[name], unknown_s[name])
        out[f"fpr95_{name}"] = fpr_at_tpr(known_s[name], unknown_s[name])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write every row here")
    ap.add_argument("--max-unknown", type=int, default=500, help="unknown images per other set (a seeded sample)")
    ap.add_argument("--only", help="run only the settings whose name contains this (e.g. near)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tk-unknown-"))
    env = {**os.environ, "TRANSFERKIT_CACHE": str(work / "cache")}
    settings = []
    for name in (HYM, FLO, CIF):
        others = [o for o in (HYM, FLO, CIF) if o != name]
        unknown = [p for o in others for p in sample(val_images(SHARED / o), args.max_unknown)]
        settings.append((f"far: {name}", SHARED / name, val_images(SHARED / name), unknown))
    for name, kept in NEAR.items():
        rest = [c for c in sorted(os.listdir(SHARED / name / "train")) if c not in kept]
        data = subset(SHARED / name, kept, work / "data" / f"near-{name}")
        settings.append((f"near: {name}", data, val_images(SHARED / name, kept), val_images(SHARED / name, rest)))
    rows = []
    settings = [s for s in settings if not args.only or args.only in s[0]]
    for label, data, known, unknown in settings:
        got = train_cli(data, work / label.replace(": ", "-"), env, [])
        if "results" not in got:
            rows.append({"setting": label, **got})
            continue
        row = {"setting": label, "val_acc": got["val_acc"], **measure(work / label.replace(": ", "-"), known, unknown)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    names = ("msp", "energy", "mahalanobis", "knn", "product")
    print_table(rows, "setting", [("known", 6, lambda r: str(r["known"])), ("unknown", 7, lambda r: str(r["unknown"])),
                                  *[(f"AUROC {n}", 12, lambda r, n=n: f"{r[f'auroc_{n}']:.4f}") for n in names]],
                "auroc_knn")
    print()
    print_table(rows, "setting", [*[(f"FPR95 {n}", 12, lambda r, n=n: f"{r[f'fpr95_{n}']:.4f}") for n in names],
                                  ("auto flags unknown", 18, lambda r: f"{r['flagged_by_auto']:.1%}"),
                                  ("auto flags known", 16, lambda r: f"{r['known_flagged_by_auto']:.1%}")],
                "auroc_knn")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"\nwork folder: {work}")


if __name__ == "__main__":
    main()
