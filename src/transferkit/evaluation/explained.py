"""The report's explanations: heatmaps of the validation images a run gets most confidently wrong
(multi-label: with the largest loss), made with the run's model where it is at hand (at the end of
`train` and `eval`), kept as small overlay JPEGs in RUN/heatmaps/ with heatmaps.json naming each
image's, so `render` (which has no model) shows them beside the images."""

from __future__ import annotations

from pathlib import Path

from ..files import atomic_write, read_json_object, write_json
from .rows import most_wrong, read_predictions, read_summary

REPORT_HEATMAPS = 12  # the most confidently wrong images explained in report.html
THUMB_SIDE = 320  # the overlays' longer side
FOLDER, INDEX = "heatmaps", "heatmaps.json"


def explainer(run: Path, predictor=None, say=None, cache=None):
    """What explains a run's images: `predictor` where it gives spatial maps, else the run's
    model on the default engine (a head on frozen features: ONNX Runtime, `engines.maps`), else
    on PyTorch (`cache`: where conversions are found and kept; None: the default cache). The
    caller closes it (unless it is `predictor`)."""
    from .. import engines

    from ..models.bundle import read_meta

    if predictor is not None and predictor.can_explain:
        return predictor
    if read_meta(run)[0].frozen_features is not None:  # (a whole model converted for ONNX Runtime has no maps)
        found = engines.load_bundle(run, say=say, cache=cache)
        if found.can_explain:
            return found
        found.close()
    from ..errors import require_torch

    require_torch("explaining a fine-tuned model (its maps come from PyTorch)")
    return engines.load_bundle(run, "torch", say=say, cache=cache)


def report_heatmaps(out_dir: Path, run: Path, warn=None, say=None, rows: list[dict] | None = None,
                    multi: bool = False, cache=None) -> None:
    """The report's heatmaps in `out_dir` (a run or eval folder) by the model of `run`, when
    something there is wrong (else no model is loaded); a model that cannot explain: one warning.
    `say`: told of a conversion. `rows` (and `multi`): the rows of predictions.csv
    (`rows.prediction_rows`), when it is not written yet. `cache`: as `explainer`'s."""
    from ..errors import UserError

    wrong = to_explain(out_dir, rows=rows, multi=multi)
    if not wrong:
        return
    try:
        with explainer(run, say=say, cache=cache) as predictor:
            explain_wrong(out_dir, predictor, warn, wrong=wrong)
    except UserError as exc:
        if warn:
            warn(f"the report's heatmaps: {exc}")


def to_explain(out_dir: Path, limit: int = REPORT_HEATMAPS, rows: list[dict] | None = None,
               multi: bool = False) -> list[dict]:
    """The rows of `out_dir`'s predictions.csv (or `rows`, its rows not yet written, of a
    multi-label model if `multi`) whose heatmaps the report shows."""
    if rows is None:
        rows, multi = read_predictions(out_dir), read_summary(out_dir).get("task") == "multilabel"
    return most_wrong(rows, multi)[:limit]


def explain_wrong(out_dir: Path, predictor, say=None, limit: int = REPORT_HEATMAPS,
                  wrong: list[dict] | None = None) -> int:
    """Heatmaps of the `limit` most confidently wrong images of `out_dir`'s predictions.csv (or
    of `wrong`, those rows), by `predictor` (its model's spatial maps); how many were written. A
    model without maps, or an image that cannot be read, is left out (one warning through `say`)."""
    from ..errors import ImageDecodeError, UserError
    from ..prediction import heatmaps

    rows = to_explain(out_dir, limit) if wrong is None else wrong
    folder = out_dir / FOLDER
    if not rows or not getattr(predictor, "can_explain", False):
        return 0
    try:
        _, _, maps, errors = predictor.explain([r["path"] for r in rows])
    except UserError as exc:
        if say:
            say(f"the report's heatmaps: {exc}")
        return 0
    index = {}
    folder.mkdir(exist_ok=True)
    for i, (row, cam) in enumerate(zip(rows, maps)):
        if cam is None:
            continue
        try:
            _, jpg = heatmaps.encoded(*heatmaps.of_image(row["path"], cam, predictor.sizes(), side=THUMB_SIDE))
        except ImageDecodeError:
            continue
        name = f"{i:03d}.jpg"
        atomic_write(folder / name, jpg)
        index[row["path"]] = f"{FOLDER}/{name}"
    write_json(out_dir / INDEX, index)
    return len(index)


def heatmap_files(out_dir: Path) -> dict[str, Path]:
    """{image path: its overlay} of a run or eval folder (those made by `explain_wrong`)."""
    index = read_json_object(out_dir / INDEX) or {}
    return {str(k): out_dir / v for k, v in index.items() if isinstance(v, str) and v.startswith(f"{FOLDER}/")
            and "/" not in v[len(FOLDER) + 1:] and (out_dir / v).is_file()}
