"""The logistic-regression head's settings chosen by cross-validation on the training images' cached
features (`select_head`): the feature set, the scaling and the weight decay, every candidate's
numbers kept (`HeadChoice`); near-identical images kept in one fold, a sample beyond `cv_images`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ...folds import group_folds, max_folds, similar_groups, stratified_sample
from ...logistic import Folds, sharded_standardizer, standardizer
from ...task import strata_of


SCALINGS = ("feature", "global")

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

    from ...machine import usable_cores

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
    from ...folds import SAME_SCENE, components, unit_rows

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
