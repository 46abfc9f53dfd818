"""The continuous normalizing flow (CNF) workload, framework-free: data sets and transforms,
the flow's configuration, checks and statistics. A CNF (FFJORD) integrates ``d/dt [x, a] =
[f(t, x), -div f(t, x)]`` from data ``x`` (model space) at t = 0, ``a(0) = 0``, to ``z =
x(t1)``: ``log p(x) = log N(z; 0, I) - a(t1)``; sampling integrates ``z ~ N(0, I)`` back.

>>> data = load_dataset("digits")            # train (1438, 64), model space, float64
>>> data.nll(logp_test)                      # held-out NLL in data space: nats, bits/dim
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from impls.methods import DEFAULT_NOISE, ESTIMATOR_NOISES, MIN_MATVECS, NOISES
from impls.spec import HollowSpec

TOY_DATASETS = ("moons", "8gaussians", "checkerboard", "rings")
DATASETS = (*TOY_DATASETS, "digits")
# Divergence methods a flow can use: hollow needs a HollowNet, the others take any f(t, x).
CNF_METHODS = ("hollow", "hutchinson", "hutchpp", "dense_vectorized", "dense_loop")
STOCHASTIC_TRACES = ("hutchinson", "hutchpp")
CNF_EXACT = tuple(method for method in CNF_METHODS if method not in STOCHASTIC_TRACES)
SOLVERS = ("dopri5", "tsit5")  # torchdiffeq has dopri5 only; diffrax both
# New evaluations of f per step attempt of the FSAL pairs (7 stages, the last reused): diffrax
# makes 6 * num_steps + 1 per solve, the initial step included (checked in the tests).
EVALS_PER_STEP = {"dopri5": 6, "tsit5": 6}

DIGITS_LEVELS = 17  # load_digits' pixels are integers 0..16
LOGIT_ALPHA = 0.05  # keeps the logit off 0 and 1, as RealNVP/FFJORD do (they use 1e-6..0.05)
TOY_SIZES = (10_000, 2_000)  # default train and test sizes of a toy set


# --- transforms: elementwise bijections T from data space to model space, written against an
# array namespace xp (numpy, torch or jax.numpy) so autodiff can check log_det:
# forward(x) = T(x), inverse(y) = T^-1(y), both (n, d); log_det(x) = log |det dT/dx|, (n,). ---


@dataclass(frozen=True)
class Identity:
    """Model space is data space (the 2-D toys)."""

    def forward(self, x, xp=np):
        return x

    def inverse(self, y, xp=np):
        return y

    def log_det(self, x, xp=np):
        return 0 * x[:, 0]


@dataclass(frozen=True, eq=False)
class Standardize:
    """y = (x - mean) / std, per dimension (user arrays)."""

    mean: np.ndarray
    std: np.ndarray

    def forward(self, x, xp=np):
        return (x - xp.asarray(self.mean, dtype=x.dtype)) / xp.asarray(self.std, dtype=x.dtype)

    def inverse(self, y, xp=np):
        return y * xp.asarray(self.std, dtype=y.dtype) + xp.asarray(self.mean, dtype=y.dtype)

    def log_det(self, x, xp=np):
        return 0 * x[:, 0] - float(np.log(self.std).sum())


@dataclass(frozen=True)
class Logit:
    """Dequantised pixels x in (0, levels) to R: ``s = alpha + (1 - 2 alpha) x / levels``,
    ``y = log s - log(1 - s)`` (RealNVP's logit transform)."""

    levels: float
    alpha: float = LOGIT_ALPHA

    def _scale(self) -> float:
        return (1 - 2 * self.alpha) / self.levels

    def forward(self, x, xp=np):
        s = self.alpha + self._scale() * x
        return xp.log(s) - xp.log(1 - s)

    def inverse(self, y, xp=np):
        s = 1 / (1 + xp.exp(-y))
        return (s - self.alpha) / self._scale()

    def log_det(self, x, xp=np):
        # dy/dx = scale / (s (1 - s)), elementwise
        s = self.alpha + self._scale() * x
        return (math.log(self._scale()) - xp.log(s) - xp.log(1 - s)).sum(-1)


Transform = Identity | Standardize | Logit


# --- data sets ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train and test rows in model space (float64), the transform from data space and its
    log-determinant at each test row (held-out NLL is reported in data space)."""

    name: str
    train: np.ndarray  # (n_train, d)
    test: np.ndarray  # (n_test, d)
    test_log_det: np.ndarray  # (n_test,)
    transform: Transform = field(default_factory=Identity)

    @classmethod
    def transformed(cls, name: str, train, test, transform: Transform) -> Dataset:
        """The data-space rows ``train`` and ``test``, moved to model space by ``transform``."""
        test_log_det = transform.log_det(test)
        return cls(name, transform.forward(train), transform.forward(test), test_log_det, transform)

    @property
    def dim(self) -> int:
        return self.train.shape[1]

    def nll(self, logp_test: np.ndarray) -> dict[str, float]:
        """Held-out NLL in data space from the model-space log-likelihoods of ``test``."""
        if np.shape(logp_test) != (len(self.test),):
            raise ValueError(
                f"expected one log-likelihood per test row, shape ({len(self.test)},), "
                f"got {np.shape(logp_test)}"
            )
        return nll_summary(logp_test, self.test_log_det, self.dim)


def nll_summary(logp_model: np.ndarray, log_det: np.ndarray, dim: int) -> dict[str, float]:
    """Mean negative log-likelihood in data space, ``-(log p_model(T(x)) + log|det T'(x)|)``:
    nats per sample (``nll_nats``), its standard error (``nll_sem``) and bits per dimension."""
    logp = np.asarray(logp_model, dtype=np.float64) + np.asarray(log_det, dtype=np.float64)
    if logp.ndim != 1 or logp.size == 0:
        raise ValueError(f"expected a non-empty (n,) array of log-likelihoods, got {logp.shape}")
    nll = float(-logp.mean())
    sem = float(logp.std(ddof=1) / math.sqrt(logp.size)) if logp.size > 1 else float("nan")
    return {"nll_nats": nll, "nll_sem": sem, "bits_per_dim": bits_per_dim(nll, dim)}


def bits_per_dim(nll_nats: float, dim: int) -> float:
    return nll_nats / (dim * math.log(2))


def load_dataset(
    name: str, *, n_train: int | None = None, n_test: int | None = None, seed: int = 0
) -> Dataset:
    """A named data set: ``n_train``/``n_test`` fresh toy samples (default 10 000 / 2 000), or
    the first rows of a seeded 80/20 split of ``digits`` (1797 8x8 images), dequantised and
    :class:`Logit`-transformed."""
    if name not in DATASETS:
        raise ValueError(
            f"unknown dataset {name!r}; available: {', '.join(DATASETS)} "
            "(or load_npy(path) for an array of your own)"
        )
    for value, label in ((n_train, "n_train"), (n_test, "n_test")):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{label} must be an int or None, got {type(value).__name__}")
        if value is not None and value < 1:
            raise ValueError(f"{label} must be >= 1, got {value}")
    if name == "digits":
        return _digits(n_train, n_test, seed)
    rng = np.random.default_rng(seed)
    sizes = (n_train or TOY_SIZES[0], n_test or TOY_SIZES[1])
    train, test = (TOYS[name](n, rng) for n in sizes)
    return Dataset(name, train, test, np.zeros(len(test)))


def load_npy(
    path: str | Path,
    *,
    test_fraction: float = 0.1,
    seed: int = 0,
    standardize: bool = True,
    name: str | None = None,
) -> Dataset:
    """An (n, d) float array from ``path``, split at random (``seed``) into train and test,
    standardised with the train rows' mean and std unless ``standardize=False``."""
    path = Path(path)
    if path.suffix != ".npy":
        raise ValueError(f"expected a .npy file, got {str(path)!r}")
    data = np.load(path, allow_pickle=False)
    if data.ndim != 2 or data.shape[0] < 2 or data.shape[1] < 1:
        raise ValueError(f"{path}: expected an (n, d) array with n >= 2, got shape {data.shape}")
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise TypeError(f"{path}: expected real numbers, got dtype {data.dtype}")
    data = data.astype(np.float64)
    if not np.isfinite(data).all():
        raise ValueError(f"{path}: the array contains NaN or inf")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    order = np.random.default_rng(seed).permutation(len(data))
    n_test = min(max(round(test_fraction * len(data)), 1), len(data) - 1)
    train, test = data[order[n_test:]], data[order[:n_test]]
    transform: Transform = Identity()
    if standardize:
        std = train.std(0)
        transform = Standardize(train.mean(0), np.where(std > 0, std, 1.0))
    return Dataset.transformed(name or path.stem, train, test, transform)


def _digits(n_train: int | None, n_test: int | None, seed: int) -> Dataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError(
            "the 'digits' dataset needs scikit-learn: pip install 'hollowbench[cnf]'"
        ) from err
    pixels = load_digits().data.astype(np.float64)  # (1797, 64), integers 0..16
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pixels))
    cut = len(pixels) // 5
    test_rows, train_rows = order[:cut][:n_test], order[cut:][:n_train]
    # Uniform dequantisation, once per load: the density of pixel + u upper-bounds the
    # discrete data's NLL, so bits/dim compare with the literature's.
    dequantised = pixels + rng.uniform(size=pixels.shape)
    transform = Logit(DIGITS_LEVELS)
    train, test = dequantised[train_rows], dequantised[test_rows]
    return Dataset.transformed("digits", train, test, transform)


# The toys as FFJORD's lib/toy_data.py defines them, from a numpy Generator.


def _moons(n: int, rng: np.random.Generator) -> np.ndarray:
    """sklearn.datasets.make_moons(noise=0.1), written out so the toys need no scikit-learn,
    then scaled as FFJORD does (* 2 + (-1, -0.2))."""
    n_out = n // 2
    outer, inner = np.linspace(0, np.pi, n_out), np.linspace(0, np.pi, n - n_out)
    x = np.concatenate([np.cos(outer), 1 - np.cos(inner)])
    y = np.concatenate([np.sin(outer), 1 - np.sin(inner) - 0.5])
    data = np.stack([x, y], 1) + rng.normal(scale=0.1, size=(n, 2))
    return rng.permutation(data) * 2 + np.array([-1.0, -0.2])


def _eight_gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    r = 1 / math.sqrt(2)
    unit = [(1, 0), (-1, 0), (0, 1), (0, -1), (r, r), (r, -r), (-r, r), (-r, -r)]
    centers = 4.0 * np.array(unit)
    points = rng.normal(size=(n, 2)) * 0.5 + centers[rng.integers(0, 8, n)]
    return points / 1.414


def _checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    x1 = rng.uniform(size=n) * 4 - 2
    x2 = rng.uniform(size=n) - rng.integers(0, 2, n) * 2 + np.floor(x1) % 2
    return np.stack([x1, x2], 1) * 2


def _rings(n: int, rng: np.random.Generator) -> np.ndarray:
    """Four concentric circles (radii 1, 0.75, 0.5, 0.25, times 3) with Gaussian noise 0.08."""
    quarter = n // 4
    counts, radii = (n - 3 * quarter, quarter, quarter, quarter), (0.25, 0.5, 0.75, 1.0)
    circles = []
    for count, radius in zip(counts, radii, strict=True):
        angle = np.linspace(0, 2 * np.pi, count, endpoint=False)
        circles.append(radius * np.stack([np.cos(angle), np.sin(angle)], 1))
    data = rng.permutation(np.concatenate(circles)) * 3.0
    return data + rng.normal(scale=0.08, size=data.shape)


TOYS = {
    "moons": _moons,
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "rings": _rings,
}


def batches(data: np.ndarray, batch: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless minibatches of ``data``'s rows: a fresh permutation each epoch, no short batch
    (so compiled steps see one shape). The same rng gives the same batches in both backends."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    n = len(data)
    while True:
        order = rng.permutation(n)
        if n < batch:  # fewer rows than a batch: sample with replacement
            yield data[rng.integers(0, n, batch)]
            continue
        for start in range(0, n - batch + 1, batch):
            yield data[order[start : start + batch]]


# --- the flow's configuration and model -----------------------------------------------------


@dataclass(frozen=True)
class FlowConfig:
    """How a flow is solved and its divergence computed. ``method``: "hollow" (exact,
    HollowNets only), "hutchinson" (``n_probes`` probes of ``noise``, None: the method's
    default), "hutchpp" (``n_matvecs`` products), both drawn once per solve as in FFJORD, or
    "dense_vectorized"/"dense_loop" (exact). ``adjoint``: True solves the continuous adjoint
    backwards in O(1) memory (``odeint_adjoint``, ``BacksolveAdjoint``) instead of
    differentiating through the solver's steps."""

    method: str = "hollow"
    n_probes: int = 1
    n_matvecs: int = 3
    noise: str | None = None
    solver: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5
    t1: float = 1.0
    adjoint: bool = False
    max_steps: int = 1000

    def __post_init__(self):
        if self.method not in CNF_METHODS:
            raise ValueError(
                f"unknown method {self.method!r} for a flow; available: {', '.join(CNF_METHODS)}"
            )
        n = self.n_probes
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n_probes must be a positive int, got {n!r}")
        if self.noise is None:  # frozen: set the method's default through object's setattr
            object.__setattr__(self, "noise", DEFAULT_NOISE.get(self.method, NOISES[0]))
        noises = ESTIMATOR_NOISES if self.method == "hutchpp" else NOISES
        if self.noise not in noises:
            raise ValueError(f"unknown noise {self.noise!r}; choose from {', '.join(noises)}")
        m, least = self.n_matvecs, MIN_MATVECS["hutchpp"]
        if isinstance(m, bool) or not isinstance(m, int) or m < least:
            raise ValueError(f"n_matvecs must be an int >= {least} (Hutch++), got {m!r}")
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; available: {', '.join(SOLVERS)}")
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
            if not 0 < value < 1:
                raise ValueError(f"{name} must be in (0, 1), got {value!r}")
        if isinstance(self.t1, bool) or not isinstance(self.t1, int | float):
            raise TypeError(f"t1 must be a real number, got {type(self.t1).__name__}")
        if not (math.isfinite(self.t1) and self.t1 > 0):
            raise ValueError(f"t1 must be a finite number > 0, got {self.t1!r}")
        if not isinstance(self.adjoint, bool):
            raise TypeError(f"adjoint must be a bool, got {type(self.adjoint).__name__}")
        steps = self.max_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"max_steps must be a positive int, got {steps!r}")

    @property
    def probe_opts(self) -> dict[str, Any]:
        """The divergence method's options besides its randomness ({} for exact ones)."""
        if self.method == "hutchinson":
            return {"n_probes": self.n_probes, "noise": self.noise}
        if self.method == "hutchpp":
            return {"n_matvecs": self.n_matvecs, "noise": self.noise}
        return {}


DEFAULT_CONFIG = FlowConfig()


def flow_spec(dim: int, dtype: str = "float32") -> HollowSpec:
    """The benchmark's CNF dynamics: a small time-dependent HollowNet."""
    return HollowSpec(
        dim=dim,
        d_h=8,
        cond_hidden=(16,),
        trans_hidden=(32, 32),
        activation="tanh",
        time_dependent=True,
        dtype=dtype,
    )


def standard_normal_logpdf(z: Any) -> Any:
    """log N(z; 0, I) per row of z, (n,)."""
    return -0.5 * (z * z).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


def check_flow(field: Any, config: Any, seed: Any, hollow: bool) -> None:
    """A solve's field, configuration and seed; ``hollow``: field is the backend's HollowNet."""
    if not isinstance(config, FlowConfig):
        raise TypeError(f"config must be an impls.cnf.FlowConfig, got {type(config).__name__}")
    if not callable(field):
        raise TypeError(f"field must be a model or a callable f(t, x), got {type(field).__name__}")
    if config.method == "hollow" and not hollow:
        raise ValueError(
            "method 'hollow' needs a HollowNet built by this backend as the flow's f; "
            "use hutchinson, hutchpp, dense_vectorized or dense_loop for other callables"
        )
    check_seed(seed)


def check_rows(name: str, shape: tuple, dtype: str, floating: bool, spec: Any) -> None:
    """``name`` must be a floating (batch, d) array, of the model ``spec``'s d and dtype (None:
    a plain callable, any)."""
    if len(shape) != 2 or shape[0] < 1 or not floating:
        raise ValueError(f"{name} must be a floating (batch, d) array, got {shape} {dtype}")
    if spec is not None and shape[1] != spec.dim:
        raise ValueError(f"{name} must have shape (batch, {spec.dim}), got {shape}")
    if spec is not None and dtype != spec.dtype:
        raise TypeError(f"{name} has dtype {dtype} but the model is {spec.dtype}")


def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return int(seed)


def probe_seed(seed: int, index: int) -> int:
    """The probe seed of training iteration (or evaluation batch) ``index``."""
    return seed * 1_000_003 + index


def check_data(data: Any, dim: int) -> np.ndarray:
    array = np.asarray(data)
    if array.ndim != 2 or array.shape[1] != dim or array.shape[0] < 1:
        raise ValueError(f"data must have shape (n, {dim}) with n >= 1, got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("data contains NaN or inf")
    return array


@dataclass(frozen=True)
class TrainOptions:
    """``train``'s keywords: Adam at ``lr`` on minibatches of ``batch`` rows, batches and
    probes from ``seed``, for ``steps`` iterations or ``budget_s`` wall seconds, whichever
    comes first (at least one must be given)."""

    steps: int | None = None
    budget_s: float | None = None
    batch: int = 64
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self):
        steps, budget_s = self.steps, self.budget_s
        if steps is None and budget_s is None:
            raise ValueError("give steps=..., budget_s=... or both")
        if steps is not None and (
            isinstance(steps, bool) or not isinstance(steps, int) or steps < 1
        ):
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        if budget_s is not None and not (isinstance(budget_s, int | float) and budget_s > 0):
            raise ValueError(f"budget_s must be a number > 0, got {budget_s!r}")
        check_seed(self.seed)

    def batches(self, data: Any, dim: int) -> Iterator[np.ndarray]:
        """Minibatches of ``data`` (n, dim), checked."""
        return batches(check_data(data, dim), self.batch, np.random.default_rng(self.seed))

    def run(self, field: Any, iteration: Callable) -> TrainResult:
        """``iteration(i) -> (loss, stats)`` for i = 0, 1, ... until done; reading the loss
        waits for the step, so the seconds include it."""
        result = TrainResult(field, [], [], [], 0.0)
        start = time.perf_counter()
        while (self.steps is None or result.iterations < self.steps) and (
            self.budget_s is None or result.seconds < self.budget_s
        ):
            loss, stats = iteration(result.iterations)
            result.losses.append(float(loss))
            result.nfe_forward.append(int(stats["nfe_forward"]))
            backward = stats["nfe_backward"]
            result.nfe_backward.append(None if backward is None else int(backward))
            result.seconds = time.perf_counter() - start
        return result


@dataclass
class TrainResult:
    """A training run: the trained ``field`` (torch: in place; JAX: a new module), each
    iteration's loss (mean model-space NLL, nats) and NFE, and the wall seconds of the
    iterations (JAX compilation excluded)."""

    field: Any
    losses: list[float]
    nfe_forward: list[int]
    nfe_backward: list[int | None]
    seconds: float

    @property
    def iterations(self) -> int:
        return len(self.losses)
