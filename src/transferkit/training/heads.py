"""Heads on cached features: the logistic regression (scipy's L-BFGS on scikit-learn's
objective) with its settings chosen by cross-validation (`select_head`), and the epoch-trained head."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import TrainConfig
from ..evaluation.metrics import EpochStats
from ..folds import group_folds, max_folds, similar_groups, stratified_sample
from ..logistic import (STD_FLOOR_PERCENTILE, Folds, Logistic, ShardedLogistic, problem_for, scale,  # noqa: F401
                        sharded_standardizer, standardizer)
from ..task import choose_thresholds, fit_temperature, log_loss, sigmoid, strata_of
from ..features.dataset import labels_of
from .result import FitResult, LinearHead


def fit_head(cfg: TrainConfig, num_classes: int, x_train, y_train, x_val, y_val, progress=None,
             checkpoint: Path | None = None, resume: dict | None = None) -> tuple[FitResult, LinearHead]:
    """Dropout + linear head (zero init) trained on features (NumPy arrays) in fp32 for
    `cfg.epochs`; the best epoch is kept. `checkpoint` / `resume`: as in `loop.fit`."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from ..data.datasets import train_loader
    from ..runtime import Runtime
    from . import loop, subscribers
    from .losses import classification_loss

    x_train, y_train, x_val, y_val = (torch.from_numpy(np.ascontiguousarray(a)) for a in (x_train, y_train, x_val, y_val))
    progress = progress or _no_progress
    torch.manual_seed(cfg.seed)
    linear = nn.Linear(x_train.shape[1], num_classes)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    head = nn.Sequential(nn.Dropout(cfg.dropout), linear)
    strata = torch.from_numpy(strata_of(y_train.numpy()))  # (multi-label: what the class-balanced sampler draws by)
    loader = train_loader(TensorDataset(x_train, y_train), strata, cfg.batch_size, cfg.seed, balanced=cfg.balanced_sampler)
    val_loader = DataLoader(TensorDataset(x_val, y_val), batch_size=1024)
    optimizer = loop.make_optimizer(cfg.optimizer, [{"params": head.parameters()}], cfg.lr, cfg.weight_decay)
    steps = cfg.epochs * len(loader)
    scheduler = loop.make_scheduler(cfg.schedule, optimizer, steps, int(cfg.warmup_epochs * len(loader)))
    bar = progress(cfg.epochs, "head")
    step = loop.Step(head, optimizer, scheduler, classification_loss(cfg, y_train, num_classes),
                     Runtime(torch.device("cpu"), torch.float32))
    follow = [subscribers.Checkpointing(checkpoint)] if checkpoint is not None else []
    result, best = loop.fit(step, loader, val_loader, cfg.epochs,
                            [*follow, subscribers.EpochEnd(lambda s: _tick(bar, s)), subscribers.EarlyStop(cfg.patience)],
                            resume=resume)
    bar.close()
    head.load_state_dict(best)
    return result, LinearHead.of(linear)


def fit_logistic(cfg: TrainConfig, num_classes: int, x_train, y_train, x_val, y_val,
                 progress=None, scaling: str = "feature", group=None) -> tuple[FitResult, LinearHead]:
    """Multinomial logistic regression, fitted full-batch by scipy's L-BFGS-B (float64) on
    standardized features (`scaling`: see `standardizer`), folded back into one `LinearHead` on
    the raw features. The objective is scikit-learn's LogisticRegression's (tested to give its
    probabilities): the mean cross-entropy plus weight_decay / 2 * |W|^2, the bias unpenalized,
    i.e. C = 1 / (weight_decay * n); with two classes one logit, as there. --class-weights auto
    and --balanced-sampler weigh each class by inverse frequency (class_weight="balanced").
    Convex: the converged model is kept, nothing is selected on the val set. The history records
    the losses every LBFGS_STEP iterations. Not scikit-learn itself: importing it costs 0.7 s,
    scipy.optimize 0.4 s (a torch optimizer imports torch._dynamo: 1.1 s).
    `group` (sharded features, #31): every rank gives its rows and the fit is data-parallel
    (`logistic.ShardedLogistic`, `sharded_standardizer`): every rank ends with the same head."""
    progress = progress or _no_progress
    xt, yt = np.asarray(x_train, dtype=np.float64), np.asarray(y_train)
    xv, yv = np.asarray(x_val, dtype=np.float64), np.asarray(y_val)
    balanced = cfg.class_weights == "auto" or cfg.balanced_sampler
    if group is not None:
        mean, std = sharded_standardizer(xt, scaling, group.sum)
        problem = ShardedLogistic((xt - mean) / std, yt, num_classes, cfg.weight_decay, balanced, group.sum)
    else:
        mean, std = standardizer(xt, scaling)
        problem = problem_for(yt)((xt - mean) / std, yt, num_classes, cfg.weight_decay, balanced)
    zv = (xv - mean) / std
    theta = problem.start()
    result, start, done = FitResult(unit="iteration"), time.perf_counter(), 0
    bar = progress(LBFGS_MAX_ITER, "head (L-BFGS)")
    while done < LBFGS_MAX_ITER:
        theta, iters = problem.fit(theta, LBFGS_STEP, LBFGS_GTOL)
        if iters == 0 and result.history:  # converged exactly at the end of the last chunk: no new row
            break
        done += iters
        seconds = time.perf_counter() - start
        row = EpochStats(done, *problem.stats(problem.z, yt, theta), *problem.stats(zv, yv, theta), 0.0,
                                seconds, seconds)
        result.history.append(row)
        _tick(bar, row, iters)
        if iters < LBFGS_STEP:  # converged
            break
    bar.close()
    result.best_epoch, result.best_val_acc = done, result.history[-1].val_acc
    coef, intercept = problem.coefficients(theta)
    coef = coef / std  # (k, d), on raw features
    intercept = intercept - coef @ mean
    return result, LinearHead(coef.astype(np.float32), intercept.astype(np.float32))


SCALINGS = ("feature", "global")


# L-BFGS runs in chunks of LBFGS_STEP iterations (one row of the history each), at most LBFGS_MAX_ITER.
LBFGS_STEP, LBFGS_MAX_ITER = 10, 1000
LBFGS_GTOL = 1e-5  # on the largest gradient component (scikit-learn's default tol: 1e-4)

# The head's L2 penalties (on the mean loss over standardized features) that cross-validation
# tries, strongest first: each fit starts from the previous one's solution (a regularization path).
WEIGHT_DECAY_GRID = (3.0, 1.0, 0.3, 0.1, 0.03, 0.01, 3e-3, 1e-3, 3e-4, 1e-4)
CV_MAX_FOLDS, CV_MAX_ITER = 5, 100
# The cross-validation's fits stop at a relative decrease of their objective below CV_FTOL, not
# at float32's round-off: the same choice on flowers (200 images) and CIFAR-10 (500, 1,000 and
# 4,000 images), 1.6-2.2x faster (bench/head_speed.py's samples). No test on the gradient: its
# largest component depends on the coordinates (the span's, or the features' under torchrun),
# the objective does not, so sharded and one-process fits stop at the same iteration.
CV_FTOL, CV_GTOL = 3e-4, 0.0
# Few images (`_few`: fewer than CV_FEWER_FOLDS_FROM, or than CV_FEW_PER_CLASS per class): 5 folds,
# drawn CV_REPEATS times (seeds seed, seed + 1, ...), every candidate's numbers averaged over all of
# them: with 40 images per class one draw of the folds decides between candidates by an image or
# two (bench/head_rule.py). More: 3 folds, drawn once (each fold's estimate is steadier). Until #41
# the line was 1,000 images whatever the classes: 500 CIFAR-10 images (50 per class) then cost 0.8 s
# of cross-validation where 3 folds drawn once take 0.3 s (bench/head_speed.py).
CV_FEWER_FOLDS_FROM, CV_FEW_PER_CLASS = 500, 40
CV_REPEATS = 3


def _few(images: int, classes: int) -> bool:
    """Few training images for the cross-validation: 5 folds, drawn CV_REPEATS times."""
    return images < CV_FEWER_FOLDS_FROM or images < CV_FEW_PER_CLASS * classes


# At most `cv_images(classes)` training images (a stratified, seeded sample) are cross-validated:
# CV_SAMPLE_IMAGES, or CV_SAMPLE_PER_CLASS per class where there are many classes, up to
# CV_SAMPLE_MOST. The choice's cost then stops growing with the dataset, at about a tenth of the
# extraction of that many images (#41). The weight decay chosen is scaled by (sample / all images)
# for the fit on all of them, which keeps the penalty on the summed loss (scikit-learn's C) what
# cross-validation chose. Measured on CIFAR-10's 5,000 training images (bench/head_speed.py): a
# sample of 1,000 chose the same features and scaling as 4,000 did, the head's val accuracy
# 0.8840 against 0.8830, in 0.7 s instead of 4.3 s; the CV accuracy of a smaller sample reads
# lower (each fold's head learns from fewer images).
CV_SAMPLE_IMAGES, CV_SAMPLE_PER_CLASS, CV_SAMPLE_MOST = 1000, 40, 4000
# The out-of-fold logits (the temperature, multi-label thresholds) come from at most this many.
OUT_OF_FOLD_MAX_IMAGES = 4000


def cv_images(num_classes: int) -> int:
    """How many training images (at most) the head's choice cross-validates for `num_classes`."""
    return min(max(CV_SAMPLE_IMAGES, CV_SAMPLE_PER_CLASS * num_classes), CV_SAMPLE_MOST)


# From this many cross-validated images on, the candidates are fitted in threads (`_in_threads`):
# CIFAR-10 features on 2 cores, one thread against two: 500 images 0.55 / 0.46 s, 1,000 images
# 1.1 / 0.75 s; below, the fits are so small that the GIL held by scipy's L-BFGS wrapper takes
# the gain (250 images: 0.24 s either way; 100: 0.08 / 0.14 s).
CV_THREADS_FROM = 500
DEFAULT_WEIGHT_DECAY = 0.1  # where no cross-validation is possible (a class with one image)


@dataclass
class HeadChoice:
    """The head's settings chosen by cross-validation on the training images' cached features,
    with every candidate's numbers (results.json, the report): the lowest cross-validated log
    loss wins (`_rank`)."""

    features: str  # "last" or "multi"
    scaling: str  # a key of SCALINGS
    weight_decay: float
    cv_accuracy: float | None  # None: not cross-validated (given options, or too few images)
    folds: int
    seconds: float
    table: list[dict] = field(default_factory=list)  # features, scaling, weight_decay, cv_accuracy, cv_log_loss
    cached: bool = False  # read from the feature cache (a run on the same features did the cross-validation)
    images: int | None = None  # training images cross-validated (a sample of them beyond `cv_images`)
    groups: int | None = None  # groups of near-identical images among them, each kept in one fold (`folds`)
    repeats: int = 1  # draws of the folds averaged over
    grouped_images: int = 0  # images in a group of two or more

    def best_for(self, features: str) -> dict | None:
        rows = [r for r in self.table if r["features"] == features]
        return max(rows, key=_rank) if rows else None

    def to_dict(self) -> dict:
        return {"features": self.features, "scaling": self.scaling, "weight_decay": self.weight_decay,
                "cv_accuracy": self.cv_accuracy, "folds": self.folds, "seconds": round(self.seconds, 3),
                "cached": self.cached, "cv_images": self.images, "cv_groups": self.groups,
                "cv_grouped_images": self.grouped_images, "cv_repeats": self.repeats, "candidates": self.table}


def _rank(row: dict) -> tuple[float, float]:
    """A candidate's rank (higher is better): its cross-validated log loss, lower first, then its
    accuracy. The log loss, not the accuracy: on a few hundred images the accuracies of the
    candidates differ by an image or two, so picking the most accurate picks noise (often the
    strongest penalty, whose flat, underconfident probabilities tie on accuracy); the log loss
    is a proper score, continuous, and charges those. Measured against scikit-learn's plain
    LogisticRegression on 40 images per class (bench/head_rule.py)."""
    return -row["cv_log_loss"], row["cv_accuracy"]


@dataclass
class Shards:
    """Rows spread over a torchrun group (sharded features, #31): this rank holds the rows of the
    training images at `index` (positions in the whole list, whose labels are `labels`)."""

    group: object  # distributed.Group
    index: np.ndarray
    labels: np.ndarray


def select_head(x: np.ndarray, y: np.ndarray, num_classes: int, widths: dict[str, int], seed: int,
                weight_decay: float | None = None, balanced: bool = False, last_width: int | None = None,
                shards: Shards | None = None) -> HeadChoice:
    """Cross-validate the logistic-regression head on the training images' features `x` (one row
    per image; the first `widths["last"]` columns are the last layer's): every feature set in
    `widths` x every scaling in SCALINGS x every weight decay in WEIGHT_DECAY_GRID (or just
    `weight_decay`, when given), in up to CV_MAX_FOLDS stratified folds, all folds of a candidate
    fitted as one problem (`_folds_path`). With few images (`_few`) the folds are drawn
    CV_REPEATS times, the further draws only for the candidates the first one leaves in contention
    (`_contenders`) and at the penalties next to their best. Picked, among the rows every draw
    measured: the lowest mean log loss over the folds, ties broken by the higher accuracy (`_rank`;
    the last layer's features come first in `widths`, so they win a full tie with the multi-layer
    ones). A class with fewer than 2 images
    leaves nothing to cross-validate: the first feature set, per-feature scaling, DEFAULT_WEIGHT_DECAY.
    The folds keep near-identical images together (`folds.similar_groups` on the first
    `last_width` columns, the last layer's features; None: no grouping), unless the groups are so
    large that a class would not split into two folds.

    `shards`: `x` and `y` are this rank's rows; the sample, the groups and the folds are those of
    all the rows (the same on every rank), and every fit is data-parallel (`ShardedLogistic`, the
    statistics by `sharded_standardizer`): the same choice as one process holding every row, up to
    float round-off. (Without the span reduction `_in_span`: the L-BFGS iterates from zero stay in
    the rows' span anyway, so the fits are the same, only larger.)"""
    start = time.perf_counter()
    x, yn, here, y_all, total = _cv_rows(x, y, num_classes, seed, shards)
    few = _few(total, num_classes)
    most_folds = CV_MAX_FOLDS if few else 3
    if shards is not None:
        groups = sharded_similar_groups(x[:, :last_width], here, len(y_all), shards.group) \
            if last_width and len(y_all) else None
    else:
        groups = similar_groups(x[:, :last_width]) if last_width and len(yn) else None
    folds = max_folds(y_all, groups, most_folds)
    if groups is not None and folds < 2:  # so alike that no class splits: plain folds
        groups, folds = None, max_folds(y_all, None, most_folds)
    grid = WEIGHT_DECAY_GRID if weight_decay is None else (weight_decay,)
    n_groups = int(groups.max()) + 1 if groups is not None else None
    grouped = int((np.bincount(groups) > 1)[groups].sum()) if groups is not None else 0
    if folds < 2:
        return HeadChoice(next(iter(widths)), "feature", grid[0] if weight_decay is not None else DEFAULT_WEIGHT_DECAY,
                          None, 0, time.perf_counter() - start, groups=n_groups, grouped_images=grouped)
    repeats = CV_REPEATS if few else 1
    draws = [[(fold_of if here is None else fold_of[here], f) for f in range(folds)]
             for r in range(repeats) for fold_of in [group_folds(y_all, groups, folds, seed + r)]]
    xs = np.asarray(x, dtype=np.float32)
    with _one_blas_thread():
        table = _cross_validate(xs, yn, num_classes, widths, grid, balanced, draws, shards)
    widest = max(row["cv_splits"] for row in table)  # (chosen among the rows every draw measured)
    best = max((row for row in table if row["cv_splits"] == widest), key=_rank)
    chosen = best["weight_decay"] * (len(y_all) / total if weight_decay is None else 1.0)
    return HeadChoice(best["features"], best["scaling"], chosen, best["cv_accuracy"], folds,
                      time.perf_counter() - start, table, images=len(y_all), groups=n_groups, grouped_images=grouped,
                      repeats=len(draws))


def _cv_rows(x: np.ndarray, y: np.ndarray, num_classes: int, seed: int, shards: Shards | None):
    """The rows cross-validated: every image, or a stratified sample of `cv_images(num_classes)`
    (sharded: this rank's rows of the sample of all the rows). Returns (x, y of those rows, here:
    each local row's position in the sample or None, the sample's strata, the number of images)."""
    yn, here = np.asarray(y), None
    total = len(yn) if shards is None else len(shards.labels)
    most = cv_images(num_classes)  # images cross-validated
    if shards is not None:
        sample = stratified_sample(shards.labels, most, seed) if total > most else np.arange(total)
        mine = np.isin(shards.index, sample)
        x, yn, here = x[mine], yn[mine], np.searchsorted(sample, shards.index[mine])
        return x, yn, here, shards.labels[sample], total
    if total > most:  # a stratified sample
        sample = stratified_sample(strata_of(yn), most, seed)
        x, yn = x[sample], yn[sample]
    return x, yn, here, strata_of(yn), total  # (multi-label: each image stratified by its rarest label)


def _one_blas_thread():
    """The cross-validation in one BLAS thread: its products are small (a few thousand rows by
    tens of columns) and OpenBLAS's second thread spins and synchronizes more than it computes.
    Measured on 2 cores (CIFAR-10 features): 1,000 images 2.3 s in one thread, 3.9 s in two;
    4,000 images 7.6 s against 11.5 s; beside another busy process (the report worker, the
    decoder) two threads were up to 10x slower. scipy's own OpenBLAS is loaded first, so that
    it is limited too."""
    import scipy.linalg  # noqa: F401
    import scipy.optimize  # noqa: F401
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


def _cross_validate(xs: np.ndarray, yn: np.ndarray, num_classes: int, widths: dict[str, int], grid: tuple,
                    balanced: bool, draws: list, shards: Shards | None) -> list[dict]:
    """Every candidate's rows (`HeadChoice.table`), each with the number of splits it averages."""
    coordinates: dict[tuple[int, str], np.ndarray] = {}  # (the same for every draw of the folds)

    def path(width: int, scaling: str, splits: list):
        if (width, scaling) not in coordinates:
            coordinates[(width, scaling)] = _coordinates(xs[:, :width], scaling, shards)
        return _folds_path(coordinates[(width, scaling)], yn, num_classes, grid[0], balanced, splits, shards)

    # the first draw of the folds: every candidate's penalty path, strongest penalty first, each
    # fold warm-started from its previous solution; weaker penalties cost the most iterations, so
    # a path stops once two penalties in a row did worse
    def first_draw(candidate: tuple[str, str]) -> dict[float, np.ndarray]:
        at, rows, best, worse = path(widths[candidate[0]], candidate[1], draws[0]), {}, None, 0
        for lam in grid:
            rows[lam] = at(lam)
            worse = 0 if best is None or _mean_rank(rows[lam]) > _mean_rank(rows[best]) else worse + 1
            best = lam if worse == 0 else best
            if worse == 2:
                break
        return rows

    candidates = [(features, scaling) for features in widths for scaling in SCALINGS]
    # (sharded: in one thread, so that every rank makes its collectives in the same order)
    run = _in_threads if shards is None and len(yn) >= CV_THREADS_FROM else map
    found = dict(zip(candidates, run(first_draw, candidates)))  # -> penalty -> (splits, 2)

    # the further draws (few images): only for the candidates the first draw does not rule out
    # (`_contenders`), at the penalties next to each one's best: the folds' noise is averaged
    # where the choice is close, not where it is already clear
    def further(task: tuple[tuple[str, str], list]) -> dict[float, np.ndarray]:
        (features, scaling), splits = task
        at, lams = path(widths[features], scaling, splits), _near_best(found[(features, scaling)], grid)
        return {lam: at(lam) for lam in lams}

    tasks = [(key, splits) for key in (_contenders(found) if len(draws) > 1 else []) for splits in draws[1:]]
    for (key, _), rows in zip(tasks, list(run(further, tasks))):
        for lam, per_split in rows.items():
            found[key][lam] = np.concatenate([found[key][lam], per_split])
    table = [{"features": key[0], "scaling": key[1], "weight_decay": lam,
              "cv_accuracy": round(float(per_split[:, 1].mean()), 5),
              "cv_log_loss": round(float(per_split[:, 0].mean()), 5), "cv_splits": len(per_split)}
             for key, rows in found.items() for lam, per_split in rows.items()]
    return table


def _in_threads(fn, items: list) -> list:
    """`fn` over `items` in as many threads as there are cores (up to one per item), results in
    order: the candidates' fits are independent, each in one BLAS thread (`_one_blas_thread`), and
    NumPy's products release the GIL, so two cores fit two candidates at once."""
    from concurrent.futures import ThreadPoolExecutor

    from ..machine import usable_cores

    workers = min(usable_cores(), len(items))
    if workers < 2:
        return list(map(fn, items))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def _mean_rank(per_split: np.ndarray) -> tuple[float, float]:
    return -float(per_split[:, 0].mean()), float(per_split[:, 1].mean())


def _near_best(rows: dict[float, np.ndarray], grid) -> list[float]:
    """The penalties of a path next to its best (the best and its neighbours on the grid), strongest
    first: where further draws of the folds decide."""
    best = grid.index(max(rows, key=lambda lam: _mean_rank(rows[lam])))
    return [lam for lam in grid[max(best - 1, 0):best + 2] if lam in rows]


CLEARLY_WORSE = 2.0  # standard errors of the paired per-fold differences of the log loss


def _contenders(found: dict[tuple, dict[float, np.ndarray]]) -> list[tuple]:
    """The candidates (features, scaling) whose best penalty on the first draw of the folds is not
    clearly worse than the best candidate's: the mean of the paired per-fold differences of their
    log losses within CLEARLY_WORSE standard errors of zero (the folds agree on the rest)."""
    best_of = {key: max(rows.values(), key=_mean_rank) for key, rows in found.items()}
    top = max(best_of.values(), key=_mean_rank)
    out = []
    for key, per_split in best_of.items():
        diff = per_split[:, 0] - top[:, 0]
        spread = float(diff.std(ddof=1)) / np.sqrt(len(diff)) if len(diff) > 1 else 0.0
        if diff.mean() <= CLEARLY_WORSE * spread or per_split is top:
            out.append(key)
    return out


def _coordinates(x: np.ndarray, scaling: str, shards: Shards | None = None) -> np.ndarray:
    """The cross-validated rows standardized with the statistics of all of them (no labels in
    them: what a fold's own rows give, to a few rows' difference) and, with fewer rows than
    features, put in coordinates of their span (`_in_span`: one basis for every split, instead of
    one SVD per split, 60 of them, 70% of the choice's time before). `shards`: `x` is this
    process's rows, the statistics the group's (`sharded_standardizer`)."""
    if shards is not None:
        mean, std = sharded_standardizer(x, scaling, shards.group.sum)
        return (x - mean) / std
    mean, std = standardizer(x, scaling)
    z, _ = _in_span((x - mean) / std, x[:0])
    return z


def _folds_path(z: np.ndarray, y: np.ndarray, k: int, first: float, balanced: bool, splits: list,
                shards: Shards | None = None):
    """The penalty path of every split at once (`logistic.Folds`) on the rows `z` (`_coordinates`).
    `shards`: `z` and `y` are this process's rows; every sum is the group's (`Folds`' allreduce),
    the same numbers as one process holding every row, to float round-off. Returns penalty ->
    each split's (log loss, accuracy)."""
    problem = Folds(z, y, k, first, balanced, [fold_of != f for fold_of, f in splits],
                    shards.group.sum if shards is not None else None)
    test = [fold_of == f for fold_of, f in splits]
    theta = problem.start()

    def at(lam: float) -> np.ndarray:
        nonlocal theta
        problem.weight_decay = lam
        theta, _ = problem.fit(theta, CV_MAX_ITER * 2, gtol=CV_GTOL, ftol=CV_FTOL)
        return problem.held_out(theta, test)  # (splits, 2)
    return at


def sharded_similar_groups(x: np.ndarray, here: np.ndarray, n: int, group) -> np.ndarray:
    """`folds.similar_groups` of n rows spread over `group` (this rank's `x` are rows `here`):
    each rank's rows go round the group in turn (one rank's at a time: no process holds them
    all), each rank finds its rows' pairs with them, and the pairs (small) are shared. Each pair
    is found once, by the rank holding its lower row."""
    from ..folds import SAME_SCENE, components, unit_rows

    z = unit_rows(x)
    pairs = []
    for other_here, other in group.blocks((here, z)):
        if not len(z) or not len(other):
            continue
        sims = z @ other.T
        i, j = np.nonzero(sims >= SAME_SCENE)
        a, b = here[i], other_here[j]
        pairs.append(np.stack([a[a < b], b[a < b]], 1))
    mine = np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)
    found = sorted(map(tuple, np.concatenate(group.all_gather(mine)).tolist()))
    return components(n, found)


def _in_span(zt: np.ndarray, ze: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """With fewer training rows than features, both sets in coordinates of the span of the
    training rows: the L2-penalized weights lie in that span, so the fit and its predictions are
    exactly the same, with n instead of d unknowns per class. The coordinates are the rows of the
    pivoted Cholesky factor of the n x n Gram matrix (LAPACK's pstrf: the rows in pivot order
    zt_p = L Q, Q's rows orthonormal, so ze's coordinates ze Q^T = ze zt_p^T L^-T), not an SVD or an
    eigenbasis: L-BFGS takes the same steps in any orthonormal basis, and the factor costs 22 ms
    where the eigendecomposition took 150 ms at n = 1,000 (and the SVD before it 70% of the
    choice's time). Rows the others already span (to float32 round-off: duplicates) end the
    factor early."""
    if len(zt) >= zt.shape[1]:
        return zt, ze
    from scipy.linalg import lapack, solve_triangular

    gram = (zt @ zt.T).astype(np.float64)  # (in the features' precision: the coordinates are kept in it)
    tol = len(zt) * np.finfo(zt.dtype).eps * float(gram.diagonal().max())
    factor, pivots, rank, _ = lapack.dpstrf(gram, tol=tol, lower=1)
    if not rank:  # (every row zero)
        return zt[:, :0], ze[:, :0]
    pivots = pivots - 1  # (LAPACK's are 1-based)
    low = np.tril(factor[:, :rank])  # (the factor's upper triangle holds what it left of the input)
    coordinates = np.empty((len(zt), rank))
    coordinates[pivots] = low
    basis = zt[pivots[:rank]].astype(np.float64)  # = L[:rank] Q
    held = solve_triangular(low[:rank], (ze.astype(np.float64) @ basis.T).T, lower=True).T
    return coordinates.astype(zt.dtype), held.astype(zt.dtype)


def head_thresholds(cfg: TrainConfig, f, choice: HeadChoice) -> np.ndarray:
    """Multi-label: each class's decision threshold, F1-optimal on out-of-fold probabilities of
    the training images (`task.choose_thresholds`, `out_of_fold`)."""
    found = out_of_fold(cfg, f, choice)
    if found is None:
        return choose_thresholds(np.zeros((0, len(f.split.classes))), np.zeros((0, len(f.split.classes))))
    y, logits = found
    return choose_thresholds(y, sigmoid(logits))


def head_temperature(cfg: TrainConfig, f, choice: HeadChoice) -> float | None:
    """Single-label: the temperature that calibrates the head (`task.fit_temperature` on its
    out-of-fold logits of the training images, `out_of_fold`: never the val images that then
    report the calibration); None (no temperature) where there are too few images for folds, or
    where it lowers the out-of-fold log loss by less than TEMPERATURE_MIN_GAIN (the head, chosen
    by that log loss, is calibrated already, and so small a change is within the folds' noise:
    measured, hymenoptera T 0.96, flowers T 0.95, val ECE moving by +-0.01 either way), or where
    it would sharpen (T < 1): fold models fitted on less data than the kept head are less sure
    than it, so sharpening them would make the head more confident than its folds justify (on
    separable data the fit runs to the range's end)."""
    found = out_of_fold(cfg, f, choice)
    if found is None:
        return None
    y, logits = found
    temperature = fit_temperature(y, logits)
    before, after = log_loss(y, logits, 1.0), log_loss(y, logits, temperature)
    return temperature if temperature > 1 and before - after >= TEMPERATURE_MIN_GAIN * before else None


TEMPERATURE_MIN_GAIN = 0.02  # the share of the out-of-fold log loss a temperature must save to be kept


def out_of_fold(cfg: TrainConfig, f, choice: HeadChoice) -> tuple[np.ndarray, np.ndarray] | None:
    """(targets, logits) of the training images, each image's logits from the chosen head's
    settings fitted in `choice.folds` folds without it (near-identical images kept in one fold,
    as cross-validation keeps them; at most OUT_OF_FOLD_MAX_IMAGES images, a stratified sample); None
    where the images allow no folds. Memoized on `f` (auto, linear and LP-FT's probe ask), and
    kept in the feature cache under a digest of what it saw (a warm run reads the logits)."""
    balanced = cfg.class_weights == "auto" or cfg.balanced_sampler
    key = ("out_of_fold", OUT_OF_FOLD_VERSION, choice.features, choice.scaling, choice.weight_decay, cfg.seed, balanced)
    if key in f.memo:
        return f.memo[key]
    n, k = f.num_images, len(f.split.classes)
    x, y = f.x_train[:n, :f.widths[choice.features]], np.asarray(f.y_train[:n])
    strata = strata_of(y)
    if len(y) > OUT_OF_FOLD_MAX_IMAGES:
        sample = stratified_sample(strata, OUT_OF_FOLD_MAX_IMAGES, cfg.seed)
        x, y, strata = x[sample], y[sample], strata[sample]
    digest = _choice_key(f, key) if f.store is not None and not f.sharded else None
    stored = f.store.get(digest, "oof") if digest is not None else None
    if stored is not None and stored.shape == (len(y), k):
        f.memo[key] = (y, stored.astype(np.float64))
        return f.memo[key]
    groups = similar_groups(x[:, :f.widths["last"]]) if len(y) else None
    folds = max_folds(strata, groups, CV_MAX_FOLDS)
    if groups is not None and folds < 2:
        groups, folds = None, max_folds(strata, None, CV_MAX_FOLDS)
    found = None
    if folds >= 2:
        fold_of = group_folds(strata, groups, folds, cfg.seed)
        logits = np.zeros((len(y), k))
        xs = np.asarray(x, dtype=np.float32)
        for fold in range(folds):
            tr, te = fold_of != fold, fold_of == fold
            mean, std = standardizer(xs[tr], choice.scaling)
            zt, ze = _in_span((xs[tr] - mean) / std, (xs[te] - mean) / std)
            problem = problem_for(y)(zt, y[tr], k, choice.weight_decay, balanced)
            theta, _ = problem.fit(problem.start(), LBFGS_MAX_ITER, gtol=1e-5)
            logits[te] = problem.logits(ze, theta).astype(np.float64)
        logits = logits.astype(np.float32).astype(np.float64)  # (as the cache keeps them: cold and warm alike)
        found = (y, logits)
        if digest is not None:
            f.store.put(digest, "oof", logits.astype(np.float32))
            f.store.flush()
    f.memo[key] = found
    return found


OUT_OF_FOLD_VERSION = 1  # the out-of-fold logits kept in the feature cache (a change of how they are made: +1)


def train_head(cfg: TrainConfig, num_classes: int, x_train, y_train, x_val, y_val, progress=None,
               checkpoint: Path | None = None, resume: dict | None = None) -> tuple[FitResult, LinearHead]:
    """The head on cached features: logistic regression (--optimizer lbfgs, linear's default) or
    epochs of a first-order optimizer."""
    if cfg.optimizer == "lbfgs":
        return fit_logistic(cfg, num_classes, x_train, y_train, x_val, y_val, progress)
    return fit_head(cfg, num_classes, x_train, y_train, x_val, y_val, progress, checkpoint, resume)


def fit_best_head(cfg: TrainConfig, f, progress=None, checkpoint: Path | None = None,
                  resume: dict | None = None) -> tuple[FitResult, LinearHead, HeadChoice]:
    """The head on the cached features `f` (`context.Features`), as linear and LP-FT's probe fit
    it. The logistic regression (--optimizer lbfgs): the feature set (--features auto: last or
    multi), the scaling and the weight decay (unless given) chosen by `select_head` on the
    training images, then fitted on all training rows. An epoch-trained head: on the last layer's
    features unless --features multi (`checkpoint` / `resume`: as in `loop.fit`). The head reads the first `widths[choice.features]` columns."""
    if cfg.optimizer != "lbfgs":
        name = "multi" if cfg.features == "multi" and "multi" in f.widths else "last"
        choice = HeadChoice(name, "feature", cfg.weight_decay, None, 0, 0.0)
        result, linear = fit_head(cfg, len(f.split.classes), f.x_train[:, :f.widths[name]], f.y_train,
                                  f.x_val[:, :f.widths[name]], f.y_val, progress, checkpoint, resume)
        return result, linear, choice
    choice = head_choice(cfg, f)
    w = f.widths[choice.features]
    fit_cfg = dataclasses.replace(cfg, weight_decay=choice.weight_decay)
    args = (len(f.split.classes), f.x_train[:, :w], f.y_train, f.x_val[:, :w], f.y_val)
    key = _fit_key(fit_cfg, choice, f, *args) if f.store is not None else None
    stored = _stored_fit(f.store, key) if key is not None else None
    if f.sharded:  # each rank reads its own cache: the fit is read only where every rank has it
        stored = stored if all(f.group.all_gather(stored is not None)) else None
    if stored is not None:
        return *stored, choice
    result, linear = fit_logistic(fit_cfg, *args, progress, choice.scaling, f.group if f.sharded else None)
    if key is not None and (not f.sharded or f.group.writes_cache):  # (sharded: one rank per node)
        _store_fit(f.store, key, result, linear)
    return result, linear, choice


# The fitted logistic head is kept in the feature cache too, under a digest of what it was fitted
# on (every feature row, the labels, the val rows its history measured, the settings): the fit is
# deterministic, so a warm run on the same images reads it instead of refitting (16,000 images:
# 100 s of L-BFGS).
HEAD_FIT_VERSION = 1


def _fit_key(cfg: TrainConfig, choice: HeadChoice, f, num_classes: int, *arrays: np.ndarray) -> str:
    import hashlib

    ident = (HEAD_FIT_VERSION, num_classes, choice.scaling, cfg.weight_decay, cfg.class_weights, cfg.balanced_sampler,
             LBFGS_STEP, LBFGS_MAX_ITER, LBFGS_GTOL)
    h = hashlib.sha256(repr(ident).encode())
    for a in arrays:
        h.update(repr(tuple(a.shape)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return _over_group(f, h.hexdigest())


def _over_group(f, digest: str) -> str:
    """A digest of what this rank holds made a digest of what the group holds (sharded: every
    rank's in rank order, the same on every rank, and another than one process's)."""
    if not f.sharded:
        return digest
    import hashlib

    return hashlib.sha256(repr(("sharded", f.group.all_gather(digest))).encode()).hexdigest()


def _stored_fit(store, key: str) -> tuple[FitResult, LinearHead] | None:
    import json

    params, meta = store.get(key, "fitp"), store.get(key, "fith")
    if params is None or meta is None:
        return None
    try:
        d = json.loads(meta.tobytes().decode())
        result = FitResult([EpochStats(**h) for h in d["history"]], d["best_epoch"], d["best_val_acc"],
                           unit="iteration")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None
    return result, LinearHead(np.ascontiguousarray(params[:, :-1], dtype=np.float32),
                              np.ascontiguousarray(params[:, -1], dtype=np.float32))


def _store_fit(store, key: str, result: FitResult, linear: LinearHead) -> None:
    import json

    meta = {"history": [dataclasses.asdict(h) for h in result.history], "best_epoch": result.best_epoch,
            "best_val_acc": result.best_val_acc}
    params = np.concatenate([linear.weight, linear.bias[:, None]], 1).astype(np.float32)
    store.put(key, "fitp", params)
    store.put(key, "fith", np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    store.flush()


def head_choice(cfg: TrainConfig, f) -> HeadChoice:
    """`select_head` on the training images of `f` for the options `cfg`, computed once per run
    (memoized on `f`: auto, linear and LP-FT's probe ask for the same)."""
    widths = _wanted_widths(cfg, f)
    n, balanced = f.num_images, cfg.class_weights == "auto" or cfg.balanced_sampler
    key = ("select_head", tuple(widths.items()), cfg.seed, cfg.weight_decay, balanced)
    if key not in f.memo:
        stored = _stored_choice(f, key)
        if f.sharded:  # each rank reads its own cache: the primary's record, if every rank has one
            stored = f.group.broadcast(stored) if all(f.group.all_gather(stored is not None)) else None
        shards = Shards(f.group, f.train_index, labels_of(f.split.train)) if f.sharded else None
        f.memo[key] = stored or select_head(
            f.x_train[:n], f.y_train[:n], len(f.split.classes), widths, cfg.seed, cfg.weight_decay, balanced,
            f.widths["last"], shards)
        _store_choice(f, key, f.memo[key])
    return f.memo[key]


# The cross-validation's result is kept in the feature cache under a digest of exactly what it
# saw (the features, labels, options and this version), so a warm run with the same images does
# not cross-validate again.
# 3: folds keep near-identical images together; 4: chosen by log loss, repeated folds; 5: all folds as
# one problem standardized with all rows' statistics, further draws for the contenders only (#41)
# 6: a sample of `cv_images` (1,000 for up to 25 classes) instead of 4,000 (#41)
HEAD_CHOICE_VERSION = 6


def _choice_key(f, key: tuple) -> str:
    import hashlib

    n = f.num_images
    h = hashlib.sha256(repr((HEAD_CHOICE_VERSION, key)).encode())
    h.update(np.ascontiguousarray(f.x_train[:n]).tobytes())
    h.update(np.ascontiguousarray(f.y_train[:n]).tobytes())
    return _over_group(f, h.hexdigest())


def _stored_choice(f, key: tuple) -> HeadChoice | None:
    import json

    if f.store is None:
        return None
    data = f.store.get(_choice_key(f, key), "head")
    if data is None:
        return None
    try:
        d = json.loads(data.tobytes().decode())
        return HeadChoice(d["features"], d["scaling"], float(d["weight_decay"]), d["cv_accuracy"], int(d["folds"]),
                          0.0, d["candidates"], cached=True, images=d.get("cv_images"), groups=d.get("cv_groups"),
                          grouped_images=d.get("cv_grouped_images", 0), repeats=d.get("cv_repeats", 1))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


def _store_choice(f, key: tuple, choice: HeadChoice) -> None:
    import json

    if f.store is None or choice.cached or choice.cv_accuracy is None:
        return
    digest = _choice_key(f, key)  # (sharded: a collective, so every rank computes it)
    if not f.sharded or f.group.writes_cache:  # one rank per node writes
        f.store.put(digest, "head", np.frombuffer(json.dumps(choice.to_dict()).encode(), dtype=np.uint8))
        f.store.flush()


def _wanted_widths(cfg: TrainConfig, f) -> dict[str, int]:
    wanted = cfg.features or "auto"
    return {wanted: f.widths[wanted]} if wanted != "auto" and wanted in f.widths else dict(f.widths)


def _tick(bar, stats: EpochStats, n: int = 1) -> None:
    bar.update(n)
    bar.set_postfix(loss=f"{stats.train_loss:.3f}", val_acc=f"{stats.val_acc:.3f}")


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kw) -> None:
        pass

    def close(self) -> None:
        pass


def _no_progress(total: int, desc: str) -> _NoBar:
    return _NoBar()
