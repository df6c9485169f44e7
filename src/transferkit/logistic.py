"""The logistic-regression head's numerics, torch-free (doctor's out-of-fold probabilities run
in a process that never imports torch): scikit-learn's objective for scipy's L-BFGS-B,
and standardization. `training.heads` fits and selects heads with them; `folds` says which
images are held out together."""

from __future__ import annotations

import numpy as np

from .task import mean_ap, sigmoid

STD_FLOOR_PERCENTILE = 10


class Logistic:
    """scikit-learn's multinomial logistic-regression objective on standardized features `z`
    (float32 or float64: the CV fits use float32, twice as fast), for scipy's L-BFGS-B."""

    def __init__(self, z: np.ndarray, y: np.ndarray, k: int, weight_decay: float, balanced: bool = False):
        self.z, self.y, self.k, self.weight_decay = z, y, k, weight_decay
        counts = np.maximum(np.bincount(y, minlength=k), 1)
        w = (len(y) / (k * counts))[y] if balanced else np.ones(len(y))
        self.weights = (w / w.sum()).astype(z.dtype)
        # logits = (z @ W + b) @ to_logits: one column and logits (-z/2, z/2) for two classes
        self.to_logits = np.array([[-0.5, 0.5]], dtype=z.dtype) if k == 2 else np.eye(k, dtype=z.dtype)
        self.d, self.m = z.shape[1], self.to_logits.shape[0]
        self.onehot = np.eye(k, dtype=z.dtype)[y]

    def start(self) -> np.ndarray:
        return np.zeros(self.d * self.m + self.m)

    def log_probs(self, z: np.ndarray, theta: np.ndarray) -> np.ndarray:
        t = theta.astype(z.dtype)
        logits = (z @ t[:-self.m].reshape(self.d, self.m) + t[-self.m:]) @ self.to_logits
        logits -= logits.max(1, keepdims=True)
        return logits - np.log(np.exp(logits).sum(1, keepdims=True))

    def logits(self, z: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """Logits of (z, theta) (the log-probabilities: the softmax of either is the same)."""
        return self.log_probs(z, theta)

    def objective(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        y, m = self.y, self.m
        w, lp = theta[:-m].reshape(self.d, m), self.log_probs(self.z, theta)
        loss = -float((self.weights * lp[np.arange(len(y)), y]).sum()) + self.weight_decay / 2 * float((w * w).sum())
        g = ((np.exp(lp) - self.onehot) * self.weights[:, None]) @ self.to_logits.T  # d loss / d (z @ W + b)
        grad = np.concatenate([(self.z.T @ g).astype(np.float64).ravel() + self.weight_decay * w.ravel(),
                               g.sum(0).astype(np.float64)])
        return loss, grad

    def fit(self, theta: np.ndarray, maxiter: int, gtol: float = 1e-6, ftol: float | None = None) -> tuple[np.ndarray, int]:
        """`maxiter` more L-BFGS-B iterations from `theta`: (theta, iterations run). `ftol`: the
        relative decrease of the objective below which it stops (default: 64 x the dtype's eps)."""
        from scipy.optimize import minimize

        ftol = 64 * np.finfo(self.z.dtype).eps if ftol is None else ftol
        fit = minimize(self.objective, theta, jac=True, method="L-BFGS-B",
                       options={"maxiter": maxiter, "gtol": gtol, "ftol": ftol})
        return fit.x, int(fit.nit)

    def stats(self, z: np.ndarray, y: np.ndarray, theta: np.ndarray) -> tuple[float, float]:
        """Mean log loss and accuracy of `theta` on (z, y)."""
        if not len(y):
            return 0.0, 0.0
        lp = self.log_probs(z, theta)
        return float(-lp[np.arange(len(y)), y].mean()), float((lp.argmax(1) == y).mean())

    def coefficients(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(k, d) weights and (k,) biases of the logits on the standardized features."""
        return (theta[:-self.m].reshape(self.d, self.m) @ self.to_logits.astype(np.float64)).T, \
            theta[-self.m:] @ self.to_logits.astype(np.float64)


class MultiLogistic(Logistic):
    """Multi-label: one logistic regression per class on the same standardized features `z`, all
    fitted at once (the sum of the classes' objectives, each scikit-learn's binary one: the mean
    log loss plus weight_decay / 2 * |w|^2, the bias unpenalized; one-vs-rest with a shared C).
    `y`: (N, C) 0/1 rows. `balanced`: each class's positives and negatives weigh half its loss
    (class_weight="balanced" per class). `stats` gives the mean log loss per image (summed over
    the classes) and the mAP (`task.mean_ap`: what multi-label models are compared by)."""

    def __init__(self, z: np.ndarray, y: np.ndarray, k: int, weight_decay: float, balanced: bool = False):
        self.z, self.k, self.weight_decay = z, k, weight_decay
        self.y = np.asarray(y, dtype=z.dtype)
        n = max(len(self.y), 1)
        if balanced:
            pos = np.clip(self.y.sum(0), 1, None)
            neg = np.clip(n - self.y.sum(0), 1, None)
            w = np.where(self.y > 0, n / (2 * pos), n / (2 * neg)) / n
        else:
            w = np.full(self.y.shape, 1.0 / n)
        self.weights = w.astype(z.dtype)
        self.d, self.m = z.shape[1], k

    def logits(self, z: np.ndarray, theta: np.ndarray) -> np.ndarray:
        t = theta.astype(z.dtype)
        return z @ t[:-self.m].reshape(self.d, self.m) + t[-self.m:]

    def objective(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, logits = theta[:-self.m].reshape(self.d, self.m), self.logits(self.z, theta)
        loss = float((self.weights * (np.logaddexp(0, logits) - self.y * logits)).sum())
        loss += self.weight_decay / 2 * float((w * w).sum())
        g = (sigmoid(logits) - self.y) * self.weights  # d loss / d logits
        grad = np.concatenate([(self.z.T @ g).astype(np.float64).ravel() + self.weight_decay * w.ravel(),
                               g.sum(0).astype(np.float64)])
        return loss, grad

    def stats(self, z: np.ndarray, y: np.ndarray, theta: np.ndarray) -> tuple[float, float]:
        if not len(y):
            return 0.0, 0.0
        logits = self.logits(z, theta).astype(np.float64)
        y = np.asarray(y, dtype=np.float64)
        loss = float((np.logaddexp(0, logits) - y * logits).sum(1).mean())

        return loss, mean_ap(y, logits)

    def coefficients(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return theta[:-self.m].reshape(self.d, self.m).T, theta[-self.m:].copy()


def problem_for(y: np.ndarray):
    """The logistic regression for targets `y`: multinomial (class indices) or one per class
    (multi-label (N, C) rows)."""
    return MultiLogistic if np.ndim(y) == 2 else Logistic


def scale(x: np.ndarray) -> np.ndarray:
    """Per-feature scale for standardizing: the standard deviation, floored at its 10th
    percentile over features. Plain standardization blows up near-constant features (std ~0.01
    where the median is ~0.3): on small data the fit leans on them with huge raw weights (78 on the
    80-image ants/bees sample), which tiny input changes (INT8, another decoder) flip. Measured with
    the floor, Lite0: sample 91.3 -> 95.0%, hymenoptera 94.8 -> 95.4%, flowers 84.0 -> 84.0%, and
    INT8 export no longer loses accuracy on the sample."""
    std = x.std(0)
    return np.maximum(std, np.percentile(std, STD_FLOOR_PERCENTILE)) + 1e-6


def standardizer(x: np.ndarray, scaling: str = "feature") -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) to standardize `x` with. "feature": each feature by its standard deviation,
    floored at the 10th percentile over features (see `scale`). "global": one scale for all
    features (their root-mean-square std), which keeps the backbone's own geometry: earlier-layer
    features, whose activations are small, then stay small instead of being blown up to the
    weight of the last layer's (measured: flowers, multi-layer features, 83.5% per-feature vs
    86.0% global)."""
    mean = x.mean(0)
    if scaling == "global":
        return mean, np.full(x.shape[1], float(np.sqrt((x.var(0)).mean())) + 1e-6, dtype=x.dtype)
    return mean, scale(x)


def identity(values: np.ndarray) -> np.ndarray:
    return values


class ShardedLogistic(Logistic):
    """`Logistic` over rows spread across processes (a torchrun group, #31): each process holds its
    share of the rows (`z`, `y`); every evaluation of the objective sums the data term's loss and
    gradient over the group with `allreduce` (one float64 vector, a sum that gives every process
    the same numbers) and adds the penalty once, so every process takes the same L-BFGS steps and
    ends with the same head. The class weights (--class-weights auto) count the whole group's rows.
    With one process (`allreduce` the identity) it computes exactly what `Logistic` does."""

    def __init__(self, z: np.ndarray, y: np.ndarray, k: int, weight_decay: float, balanced: bool = False,
                 allreduce=identity):
        super().__init__(z, y, k, weight_decay, balanced)
        self.allreduce = allreduce
        counts = allreduce(np.bincount(y, minlength=k).astype(np.float64))
        total = float(counts.sum())
        counts = np.maximum(counts, 1)
        w = (total / (k * counts))[y] if balanced else np.ones(len(y))
        self.weights = (w / allreduce(np.array([w.sum()]))[0]).astype(z.dtype)

    CHUNK = 32768  # rows whose loss and gradient are computed at once: temporaries of CHUNK x (classes + 1)

    def objective(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """The group's loss and gradient, this process's rows taken CHUNK at a time (one chunk,
        and `Logistic`'s arithmetic, below CHUNK rows): memory flat in the rows, and `z` may be
        any rows that slice to arrays (rows kept compressed, decoded a chunk at a time)."""
        m, dm = self.m, self.d * self.m
        w = theta[:-m].reshape(self.d, m)
        part = np.zeros(1 + dm + m)
        for start in range(0, len(self.y), self.CHUNK):
            z, y = self.z[start:start + self.CHUNK], self.y[start:start + self.CHUNK]
            weights, lp = self.weights[start:start + self.CHUNK], self.log_probs(z, theta)
            g = ((np.exp(lp) - self.onehot[start:start + self.CHUNK]) * weights[:, None]) @ self.to_logits.T
            part[0] -= float((weights * lp[np.arange(len(y)), y]).sum())
            part[1:1 + dm] += (z.T @ g).astype(np.float64).ravel()
            part[1 + dm:] += g.sum(0).astype(np.float64)
        total = self.allreduce(part)
        loss = float(total[0]) + self.weight_decay / 2 * float((w * w).sum())
        return loss, np.concatenate([total[1:1 + dm] + self.weight_decay * w.ravel(), total[1 + dm:]])

    def stats(self, z: np.ndarray, y: np.ndarray, theta: np.ndarray) -> tuple[float, float]:
        """Mean log loss and accuracy of `theta` on the group's (z, y), each process's share given."""
        sums = np.zeros(3)
        for start in range(0, len(y), self.CHUNK):
            yc = y[start:start + self.CHUNK]
            lp = self.log_probs(z[start:start + self.CHUNK], theta)
            sums += [-lp[np.arange(len(yc)), yc].sum(), (lp.argmax(1) == yc).sum(), len(yc)]
        sums = self.allreduce(sums)
        return (float(sums[0] / sums[2]), float(sums[1] / sums[2])) if sums[2] else (0.0, 0.0)


SUM_CHUNK = 2048  # rows summed at a time by `sharded_standardizer`: float64 temporaries of 2048 x D (21 MB at 1280), not all the rows


def sharded_standardizer(x: np.ndarray, scaling: str = "feature", allreduce=identity) -> tuple[np.ndarray, np.ndarray]:
    """`standardizer` over rows spread across processes (each gives its share `x`): the mean and
    the variances summed in float64 over the group, a chunk of rows at a time (memory flat in the
    rows), then the same floor. With one process: `standardizer`'s numbers to float64 round-off."""
    n = allreduce(np.array([len(x)], dtype=np.float64))[0]
    chunks = range(0, len(x), SUM_CHUNK)
    mean = allreduce(sum((x[i:i + SUM_CHUNK].sum(0, dtype=np.float64) for i in chunks), np.zeros(x.shape[1]))) / n
    squares = sum((np.square(x[i:i + SUM_CHUNK] - mean).sum(0) for i in chunks), np.zeros(x.shape[1]))
    var = (allreduce(squares) / n).astype(x.dtype)
    mean = mean.astype(x.dtype)
    if scaling == "global":
        return mean, np.full(x.shape[1], float(np.sqrt(var.mean())) + 1e-6, dtype=x.dtype)
    std = np.sqrt(var)
    return mean, np.maximum(std, np.percentile(std, STD_FLOOR_PERCENTILE)) + 1e-6


class Folds:
    """Every fold of a cross-validation as one problem (`heads.select_head`): the folds share the
    rows `z` (n, d) and fold s fits on the rows `train[s]` only, each with its own weights and
    bias, the objective of `Logistic` (class indices `y`) or `MultiLogistic` ((N, C) rows) per
    fold, summed. The folds are independent, so one L-BFGS run over all their parameters ends
    where each fold's own would, at a fraction of the calls: the logits of all folds are one
    (n, d) x (d, folds * m) product. The penalty is `weight_decay` for every fold (the path moves
    them together). `allreduce` (rows spread over a torchrun group, single-label): every process
    gives its share of the rows, the data term's loss and gradient are summed over the group as in
    `ShardedLogistic`, so every process takes the same steps as one process holding every row."""

    def __init__(self, z: np.ndarray, y: np.ndarray, k: int, weight_decay: float, balanced: bool,
                 train: list[np.ndarray], allreduce=None):
        self.z, self.y, self.k, self.weight_decay = z, np.asarray(y), k, weight_decay
        self.multi, self.allreduce = np.ndim(y) == 2, allreduce or identity
        if allreduce is not None:
            self.folds = [ShardedLogistic(z[t], self.y[t], k, weight_decay, balanced, allreduce) for t in train]
        else:
            kind = MultiLogistic if self.multi else Logistic
            self.folds = [kind(z[t], self.y[t], k, weight_decay, balanced) for t in train]
        first = self.folds[0]
        self.d, self.m, self.s = z.shape[1], first.m, len(train)
        # each fold's row weights, zero on the rows it does not fit: (n, folds) or (n, folds, C)
        self.weights = np.zeros((len(z), self.s) + ((k,) if self.multi else ()), dtype=z.dtype)
        for s, (t, fold) in enumerate(zip(train, self.folds)):
            self.weights[t, s] = fold.weights
        if self.multi:
            self.targets = self.y.astype(z.dtype)[:, None, :]
        else:
            self.to_logits = first.to_logits
            self.onehot = np.eye(k, dtype=z.dtype)[self.y][:, None, :]

    def start(self) -> np.ndarray:
        return np.zeros((self.d + 1) * self.s * self.m)

    def _split(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sm = self.s * self.m
        return theta[:-sm].reshape(self.d, sm), theta[-sm:]

    def objective(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = self._split(theta)
        t = (self.z @ w.astype(self.z.dtype) + b.astype(self.z.dtype)).reshape(len(self.z), self.s, self.m)
        if self.multi:
            loss = float((self.weights * (np.logaddexp(0, t) - self.targets * t)).sum())
            g = (sigmoid(t) - self.targets) * self.weights
        else:
            binary = self.k == 2  # one logit t: the logits (-t/2, t/2) (`Logistic.to_logits`)
            logits = t * self.to_logits[0] if binary else t.copy()
            logits -= logits.max(2, keepdims=True)
            lp = logits - np.log(np.exp(logits).sum(2, keepdims=True))
            loss = -float((self.weights * (lp * self.onehot).sum(2)).sum())
            g = (np.exp(lp) - self.onehot) * self.weights[..., None]
            g = (g * self.to_logits[0]).sum(2, keepdims=True) if binary else g
        g = g.reshape(len(self.z), self.s * self.m)
        total = self.allreduce(np.concatenate([[loss], (self.z.T @ g).astype(np.float64).ravel(),
                                               g.sum(0).astype(np.float64)]))
        loss = float(total[0]) + self.weight_decay / 2 * float((w * w).sum())
        grad = total[1:]
        grad[:w.size] += self.weight_decay * w.ravel()
        return loss, grad

    def fit(self, theta: np.ndarray, maxiter: int, gtol: float = 1e-6, ftol: float | None = None) -> tuple[np.ndarray, int]:
        return Logistic.fit(self, theta, maxiter, gtol, ftol)

    def fold_theta(self, theta: np.ndarray, s: int) -> np.ndarray:
        """Fold s's parameters, laid out as its own problem's (`Logistic.start`)."""
        w, b = self._split(theta)
        cols = slice(s * self.m, (s + 1) * self.m)
        return np.concatenate([w[:, cols].ravel(), b[cols]])

    def held_out(self, theta: np.ndarray, test: list[np.ndarray]) -> np.ndarray:
        """Each fold's (log loss, accuracy or mAP) on its `test` rows: (folds, 2)."""
        return np.array([fold.stats(self.z[t], self.y[t], self.fold_theta(theta, s))
                         for s, (fold, t) in enumerate(zip(self.folds, test))])
