"""The self-contained report page (report.html): every image embedded, no network. No torch."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from ..files import Record, read_json_object, read_yaml_object

from .plots import thumbnail

REPORT_THUMBS = 60  # misclassified images shown in report.html


def _data_uri(raw: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


def _img_tag(path: Path, alt: str) -> str:
    if not path.is_file():
        return ""
    return (f'<figure><img src="{_data_uri(path.read_bytes(), "image/png")}" alt="{html.escape(alt)}">'
            f"<figcaption>{html.escape(alt)}</figcaption></figure>")


def thumb_uri(path: str) -> str | None:
    img = thumbnail(path, 160)
    if img is None:
        return None
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return _data_uri(buf.getvalue(), "image/jpeg")


def _table(header: list[str], rows: list[list], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _results(run_dir: Path) -> dict | None:
    """The run's results.json, if it has one."""
    return read_json_object(run_dir / "results.json")


def _settings(run_dir: Path, r: dict | None) -> list[list]:
    """The run's settings: from its results `r` (results.json) and its config.yaml."""
    rows: list[list] = []
    if r is not None:
        for key in ("backbone", "strategy", "strategy_reason", "features", "num_train", "num_val", "val_source",
                    "device", "precision", "wall_s"):
            if r.get(key) is not None:
                rows.append([key, r[key]])
        head = r.record("head")
        if None not in (head.number("cv_accuracy"), head.number("weight_decay")):
            rows.append(["head (chosen by cross-validation)",
                         f"{head.get('features')} features, {head.get('scaling')} scaling, weight decay "
                         f"{head.number('weight_decay'):g}: {head.number('cv_accuracy'):.1%} in {head.get('folds')} "
                         "folds"])
    for key, value in (read_yaml_object(run_dir / "config.yaml") or {}).items():
        if value is not None and key not in {k for k, _ in rows}:
            rows.append([key, value])
    return rows


def _candidates(results: dict | None) -> str:
    """auto's "Candidates" section: every candidate it measured, with its cost."""
    info = Record(results or {}).record("strategy_info")

    def number(c: Record, key: str, fmt: str) -> str:
        return "" if c.number(key) is None else f"{c.number(key):{fmt}}"

    rows = [[str(c.get("candidate", "")) + (" (kept)" if c.get("kept") else ""), str(c.get("what", "")),
             number(c, "cv_accuracy", ".1%"), number(c, "val_acc", ".1%"), number(c, "seconds", ".1f"),
             number(c, "estimated_seconds", ".0f")] for c in info.items_of("candidates", dict)]
    if not rows:
        return ""
    budget = f" within a budget of {info.number('budget_s'):g} s" if info.number("budget_s") else ""
    return (f"<h2>Candidates (auto)</h2><p class=\"note\">What auto measured{budget}, with the seconds each "
            f"took.</p>" + _table(["candidate", "what", "CV accuracy", "val accuracy", "seconds", "estimated s"],
                                  rows, "candidates"))


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
td:first-child,th:first-child{text-align:left}thead{background:#f3f3f3}
figure{margin:1em 0}figure img{max-width:100%}figcaption{color:#666;font-size:.9em}
.thumbs{display:flex;flex-wrap:wrap;gap:.6em}.thumbs figure{margin:0;width:170px}
.thumbs img{width:160px;height:160px;object-fit:contain;background:#eee}
.thumbs figcaption{overflow-wrap:anywhere}
.wrong{color:#c62828}.note{color:#666}
"""


def _health(health: dict | None) -> str:
    """The "Data health" section: what train's own checks found (doctor.health)."""
    if not health:
        return ""
    e = html.escape
    found = (f"{health['leakage']} val image(s) are copies or near copies of training images (leakage: the val accuracy "
             f"overstates the model); {health['two_labels']} image(s) are in two classes.")
    rows = [[p["kind"], f"{p['similarity']:.3f}", p["a"], p["b"]] for p in health["pairs"]]
    table = _table(["kind", "similarity", "image", "copy"], rows) if rows else ""
    return (f"<h2>Data health</h2><p>{e(found)} For duplicates within a class, likely label errors, outliers and bad "
            f"images: <code>{e(health['command'])}</code></p>{table}")


def _measures(summary: dict, multi: bool) -> tuple[list, list, list]:
    """(the summary's rows, the per-class rows, their header): accuracy, calibration, the OOD
    threshold; per class precision, recall, F1 (multi-label: AP and threshold too)."""
    def row(name: str, m: dict) -> list:
        return [name, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", m["support"]]

    per_class = [row(c, m) for c, m in summary["per_class"].items()]
    per_class += [row(n.replace("_", " "), summary[n]) for n in ("macro_avg", "weighted_avg", "micro_avg")
                  if summary.get(n)]
    overall = [["accuracy", f"{summary['accuracy']:.4f}"], ["balanced accuracy", f"{summary['balanced_accuracy']:.4f}"]]
    if multi:
        def number(key: str, digits: int = 4) -> str:
            return "-" if summary.get(key) is None else f"{summary[key]:.{digits}f}"

        overall = [["mAP (macro)", number("map_macro")], ["mAP (micro)", number("map_micro")],
                   ["subset accuracy", number("subset_accuracy")], ["Hamming loss", number("hamming_loss")],
                   ["mean per-class balanced accuracy", number("balanced_accuracy")],
                   ["images with no label", summary.get("images_without_labels", 0)]]
        per_class = [[c, "-" if m.get("ap") is None else f"{m['ap']:.3f}", f"{m.get('threshold', 0.5):.3f}", *row(c, m)[1:]]
                     for c, m in summary["per_class"].items()]
        per_class += [[n.replace("_", " "), "", "", *row(n, summary[n])[1:]] for n in ("macro_avg", "micro_avg")
                      if summary.get(n)]
    if summary.get("top5_accuracy") is not None:
        overall.append(["top-5 accuracy", f"{summary['top5_accuracy']:.4f}"])
    cal = summary.get("calibration") or {}
    if (cal.get("before") or {}).get("ece") is not None:
        overall.append(["calibration temperature", f"{cal['temperature']:.3f}"])
        for key, name in (("ece", "ECE (15 bins)"), ("nll", "NLL"), ("brier", "Brier")):
            overall.append([f"{name}, before -> after", f"{cal['before'][key]:.4f} -> {cal['after'][key]:.4f}"])
    ood = summary.get("ood") or {}
    if ood.get("threshold") is not None:
        overall.append(["out-of-distribution threshold (--reject auto)", f"{ood['threshold']:.4f}"])
        overall.append(["images above it (unknown)", f"{ood['rejected_share']:.1%}"])
    overall.append(["images", summary.get("num_images", sum(m["support"] for m in summary["per_class"].values()))])
    header = ["class", "AP", "threshold", "precision", "recall", "f1", "support"] if multi else \
        ["class", "precision", "recall", "f1", "support"]
    return overall, per_class, header


def _thumbs(run_dir: Path, wrong: list[dict], multi: bool) -> tuple[list[str], str]:
    """The misclassified images' figures (REPORT_THUMBS of them, each with its heatmap where the
    run made one), and the note on how many more misclassified.csv lists."""
    e = html.escape
    thumbs = []
    from .explained import heatmap_files

    explained = heatmap_files(run_dir)  # where the model looked (the most confidently wrong, `explained`)
    for r in wrong[:REPORT_THUMBS]:
        uri = thumb_uri(r["path"])
        img = f'<img src="{uri}" alt="{e(Path(r["path"]).name)}">' if uri else "<div>image not found</div>"
        if r["path"] in explained:
            img += (f'<img class="heatmap" src="{_data_uri(explained[r["path"]].read_bytes(), "image/jpeg")}" '
                    f'alt="where the model looked: {e(Path(r["path"]).name)}">')
        how = f'loss {r["loss"]:.2f}' if multi else f'{r["probability"]:.0%}'
        thumbs.append(f'<figure>{img}<figcaption title="{e(r["path"])}">{e(Path(r["path"]).name)}<br>'
                      f'actual {e(r["actual"]) or "(none)"}<br><span class="wrong">predicted '
                      f'{e(r["predicted"]) or "(none)"} ({how})</span></figcaption></figure>')
    more = (f'<p class="note">{len(wrong) - REPORT_THUMBS} more in misclassified.csv</p>'
            if len(wrong) > REPORT_THUMBS else "")
    return thumbs, more


def _plots(run_dir: Path, multi: bool, confusion_note: str) -> str:
    """The run's plots, embedded, each with its caption."""
    return "".join(_img_tag(run_dir / name, caption) for name, caption in ([
        ("curves.png", "training curves"),
        ("pr_curves.png", "precision-recall curve of each class"),
        ("cooccurrence.png", f"labels together, true: {confusion_note}"),
        ("cooccurrence_predicted.png", "labels together, predicted at the thresholds"),
        ("predictions.png", "validation predictions: blue right (every label), red wrong"),
        ("top_losses.png", "top losses: the images whose labels the model gets most wrong"),
    ] if multi else [
        ("curves.png", "training curves"),
        ("confusion_matrix.png", f"confusion matrix, counts: {confusion_note}"),
        ("confusion_matrix_normalized.png", "confusion matrix, row-normalized (recall on the diagonal)"),
        ("reliability.png", "reliability: accuracy per confidence bin, before and after the temperature"),
        ("predictions.png", "validation predictions: blue right, red wrong"),
        ("top_losses.png", "top losses: the most confidently wrong predictions"),
    ]))


def report_html(run_dir: Path, summary: dict, wrong: list[dict], confusion_note: str) -> str:
    """One self-contained page: settings, metrics, plots, misclassified images (all embedded)."""
    e = html.escape
    classes = summary["classes"]
    multi = summary.get("task") == "multilabel"
    overall, per_class, header = _measures(summary, multi)
    measure = "exact-set accuracy" if multi else "accuracy"
    selective = [[f"{r['coverage']:.0%}", r["images"], *("-" if r[k] is None else f"{r[k]:.4f}"
                                                           for k in ("accuracy_by_confidence", "accuracy_by_ood"))]
                 for r in summary.get("selective") or []]
    selective_table = ("<h2>Selective prediction</h2><p class=\"note\">the " + measure + " on the images answered, "
                       "the rest set aside: the most confident kept, or the most like the training images (lowest "
                       "out-of-distribution score)</p>" + _table(["coverage", "images", "by confidence",
                                                                 "by OOD score"], selective, "selective")
                       if selective else "")
    confused = [[p["actual"], p["predicted"], p["count"]] for p in summary.get("most_confused", [])]
    thumbs, more = _thumbs(run_dir, wrong, multi)
    skipped = summary.get("skipped_files") or []
    health = _health(summary.get("data_health"))
    plots = _plots(run_dir, multi, confusion_note)
    title = f"transferkit report: {run_dir.name}"
    # an eval folder: what was evaluated on what, then the settings of the run it evaluated
    evaluated = [[k, summary[k]] for k in ("run", "data") if summary.get(k)]
    source = Path(summary["run"]) if summary.get("run") else run_dir  # the run whose settings these are
    results = _results(source)
    settings = evaluated + _settings(source, results)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>
<body>
<h1>{e(title)}</h1>
<p class="note">{len(classes)} classes; validation images: {summary.get('num_images', '')}.</p>
<h2>Summary</h2>{_table(["metric", "value"], overall, "overall")}
<h2>Per class</h2>{_table(header, per_class, "per-class")}
{"" if multi else "<h2>Most confused</h2>" + (_table(["actual", "predicted", "images"], confused, "confused")
                                                if confused else "<p>none</p>")}
{selective_table}
<h2>Plots</h2>{plots}
<h2>Misclassified images ({len(wrong)})</h2><div class="thumbs">{"".join(thumbs) or "<p>none</p>"}</div>{more}
{health}
{"<h2>Skipped files</h2>" + _table(["path", "reason"], [[s["path"], s["reason"]] for s in skipped]) if skipped else ""}
{_candidates(results)}
<h2>Settings</h2>{_table(["setting", "value"], settings, "settings")}
</body></html>
"""
