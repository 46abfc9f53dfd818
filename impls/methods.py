"""The methods' registry: one :class:`Method` record per way of computing D_dim^k or the
divergence, and each backend's operator for it.

A method is registered once (:func:`register`) with what the rest of hollowbench asks of it:
exact or stochastic, HollowNets only or any model, its k range, its options and its budget
option, its label in reports, and its bytes model (``passes``). Each backend implements it
(``impls/*/operators.py`` :func:`implement` their own; ``register(..., torch=op, jax=op)`` for a
new one), and its ``ddim`` / ``divergence`` dispatch through :func:`operator`. The tuples
``METHODS``, ``HOLLOW_METHODS``, ``STOCHASTIC_METHODS``, ... are views of the registry, read
when they are imported (module ``__getattr__``): register before importing a module that
takes one. Framework-free: numpy is not even needed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MAX_K = 4
KINDS = ("exact", "stochastic")
NOISES = ("rademacher", "gaussian")
# The estimators' probes also sketch J's range, through a QR factorisation and (XTrace, XDiag)
# R^-1: Rademacher sketches are rank-deficient with probability ~ s^2 2^-d (two probes equal up
# to sign), which leaves R singular and the gradient of the QR undefined; Gaussian ones never.
ESTIMATOR_NOISES = ("gaussian",)

# passes(d, k, budget, train) -> activation-sized buffers a point keeps alive (the bytes model
# of bench/workloads/operators.py predict_bytes): budget is the method's budget option's value.
Passes = Callable[[int, int, "int | None", bool], int]


def _passes(d: int, k: int, budget: int | None, train: bool) -> int:
    """One pass per derivative order, plus the forward and the output; training doubles it."""
    return (k + 2) * (2 if train else 1)


@dataclass(frozen=True)
class Method:
    """One method. ``family`` groups methods that preset limits and report tables treat alike
    ("hollow", "dense", "hutchinson", "estimator"; a new method may name its own); ``options``:
    the keywords it takes besides ``t`` (JAX's stochastic methods also take ``key``);
    ``budget``: the option a stochastic method spends, swept by the grid over the axis of the
    same name (``n_probes`` or ``n_matvecs``), at least ``min_budget``; ``noises``: the probe
    distributions it draws, the first its default; ``trace_only``: it estimates the trace, not
    the diagonal; ``label``: its name in reports (default: ``name``)."""

    name: str
    kind: str
    family: str
    hollow_only: bool = False
    k_range: tuple[int, int] = (1, MAX_K)
    options: tuple[str, ...] = ()
    budget: str | None = None
    min_budget: int = 1
    noises: tuple[str, ...] = ()
    trace_only: bool = False
    passes: Passes = _passes
    label: str = field(default="")

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(
                f"method {self.name!r}: kind must be one of {KINDS}, not {self.kind!r}"
            )
        if not self.label:
            object.__setattr__(self, "label", self.name)
        if self.budget is not None and self.budget not in self.options:
            raise ValueError(f"method {self.name!r}: its budget {self.budget!r} is not an option")

    @property
    def stochastic(self) -> bool:
        return self.kind == "stochastic"

    @property
    def default_noise(self) -> str | None:
        return self.noises[0] if self.noises else None

    def takes_k(self, k: int) -> bool:
        return self.k_range[0] <= k <= self.k_range[1]


REGISTRY: dict[str, Method] = {}
# backend name -> method name -> that backend's operator (impls/*/operators.py say its shape)
_OPERATORS: dict[str, dict[str, Callable[..., Any]]] = {}


def register(method: Method, **operators: Callable[..., Any]) -> Method:
    """Add ``method`` (a name not yet taken) and its operators by backend name (``torch=``,
    ``jax=``: see each backend's ``operators.py`` for the operator's signature)."""
    if method.name in REGISTRY:
        raise ValueError(f"method {method.name!r} is already registered")
    REGISTRY[method.name] = method
    for backend, op in operators.items():
        implement(backend, {method.name: op})
    return method


def unregister(name: str) -> None:
    """Remove a method and its operators (tests that register a method put things back)."""
    REGISTRY.pop(name, None)
    for ops in _OPERATORS.values():
        ops.pop(name, None)


def implement(backend: str, operators: dict[str, Callable[..., Any]]) -> None:
    """Give ``backend`` its operators of registered methods, by method name."""
    unknown = sorted(set(operators) - set(REGISTRY))
    if unknown:
        raise ValueError(f"no such method(s) {unknown}: register them first")
    _OPERATORS.setdefault(backend, {}).update(operators)


def operator(backend: str, name: str) -> Callable[..., Any]:
    """``backend``'s operator for the method ``name`` (checked by :func:`check_call` first)."""
    try:
        return _OPERATORS[backend][name]
    except KeyError:
        raise ValueError(f"method {name!r} has no {backend} operator") from None


def label(name: str) -> str:
    """How reports name the method ``name`` (its own name where it is not registered)."""
    method = REGISTRY.get(name)
    return method.label if method is not None else name


def _dense_loop_passes(d: int, k: int, budget: int | None, train: bool) -> int:
    """One forward, then k backward graphs per output; in training all d of them are kept."""
    return d * (k + 1) if train else k + 2


def _probe_passes(d: int, k: int, budget: int | None, train: bool) -> int:
    """Each probe's (or product's) pass, plus the forward and the output."""
    return ((budget or 1) + 2) * (2 if train else 1)


_STOCHASTIC = {"kind": "stochastic", "k_range": (1, 1), "passes": _probe_passes}
_HUTCHINSON_OPTIONS = ("n_probes", "noise", "seed")
_ESTIMATOR_OPTIONS = ("n_matvecs", "noise", "seed")
# The fewest products each estimator can spend: Hutch++ one sketch, one range and one residual
# product; XTrace and XDiag one sketch and one range product.
for _method in (
    Method("hollow", "exact", "hollow", hollow_only=True),
    Method("hollow_forward", "exact", "hollow", hollow_only=True),
    Method("dense_loop", "exact", "dense", passes=_dense_loop_passes),
    Method(
        "dense_vectorized", "exact", "dense", options=("chunk_size",),
        passes=lambda d, k, budget, train: d * 2**k * (2 if train else 1),
    ),
    Method(
        "hutchinson", family="hutchinson", options=_HUTCHINSON_OPTIONS, budget="n_probes",
        noises=NOISES, **_STOCHASTIC,
    ),
    # Estimators stronger than Hutchinson's at the same number of Jacobian-vector products when
    # the spectrum decays (impls/*/estimators.py): two of the trace, one of the diagonal.
    Method(
        "hutchpp", family="estimator", options=_ESTIMATOR_OPTIONS, budget="n_matvecs",
        min_budget=3, noises=ESTIMATOR_NOISES, trace_only=True, **_STOCHASTIC,
    ),
    Method(
        "xtrace", family="estimator", options=_ESTIMATOR_OPTIONS, budget="n_matvecs",
        min_budget=2, noises=ESTIMATOR_NOISES, trace_only=True, **_STOCHASTIC,
    ),
    Method(
        "xdiag", family="estimator", options=_ESTIMATOR_OPTIONS, budget="n_matvecs",
        min_budget=2, noises=ESTIMATOR_NOISES, **_STOCHASTIC,
    ),
):  # fmt: skip
    register(_method)


def _names(test: Callable[[Method], bool]) -> tuple[str, ...]:
    return tuple(m.name for m in REGISTRY.values() if test(m))


# The views, by name: what ``from impls.methods import METHODS`` (or ``from impls import``) gets.
VIEWS: dict[str, Callable[[], Any]] = {
    "METHODS": lambda: tuple(REGISTRY),
    "HOLLOW_METHODS": lambda: _names(lambda m: m.family == "hollow"),
    "DENSE_METHODS": lambda: _names(lambda m: m.family == "dense"),
    "EXACT_METHODS": lambda: _names(lambda m: not m.stochastic),
    "STOCHASTIC_METHODS": lambda: _names(lambda m: m.stochastic),
    "ESTIMATORS": lambda: _names(lambda m: m.family == "estimator"),
    "TRACE_ESTIMATORS": lambda: _names(lambda m: m.family == "estimator" and m.trace_only),
    # Options each method takes besides ``t``.
    "METHOD_OPTS": lambda: {m.name: m.options for m in REGISTRY.values()},
    "MIN_MATVECS": lambda: {
        m.name: m.min_budget for m in REGISTRY.values() if m.family == "estimator"
    },
    "DEFAULT_NOISE": lambda: {m.name: m.default_noise for m in REGISTRY.values() if m.noises},
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in VIEWS:
        return VIEWS[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_call(
    *,
    method: str,
    k: int,
    opts: dict,
    is_hollow: bool,
    model_name: str,
    extra_opts: dict[str, tuple[str, ...]] | None = None,
) -> None:
    """Raise ValueError/TypeError naming the problem with a method, k or option."""
    if method not in REGISTRY:
        raise ValueError(f"unknown method {method!r}; available: {', '.join(REGISTRY)}")
    m = REGISTRY[method]
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got k={k}")
    if m.stochastic and not m.takes_k(k):
        raise ValueError(f"method {method!r} estimates k=1 only, got k={k}")
    if not m.takes_k(k):
        raise ValueError(f"k must be <= {m.k_range[1]}, got k={k}")
    if m.hollow_only and not is_hollow:
        others = ", ".join(name for name, o in REGISTRY.items() if not o.hollow_only)
        raise ValueError(
            f"method {method!r} needs a HollowNet, got {model_name}; "
            f"use one of {others} for other models"
        )
    allowed = ("t", *m.options, *(extra_opts or {}).get(method, ()))
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        takes = ", ".join(allowed)
        raise TypeError(f"method {method!r} got unexpected option(s) {unknown}; it takes: {takes}")
    if m.budget == "n_probes":
        n = opts.get("n_probes", 1)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n_probes must be a positive int, got {n!r}")
    elif m.budget is not None:
        n, least = opts.get(m.budget, m.min_budget), m.min_budget
        if isinstance(n, bool) or not isinstance(n, int) or n < least:
            raise ValueError(f"method {method!r} needs {m.budget} >= {least} (an int), got {n!r}")
    if m.noises and opts.get("noise", m.default_noise) not in m.noises:
        raise ValueError(f"unknown noise {opts['noise']!r} for {method!r}; use one of {m.noises}")
    chunk = opts.get("chunk_size")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk!r}")


def check_target(method: str, trace: bool) -> None:
    """Raise ValueError when ``method`` cannot estimate the diagonal (``trace`` False)."""
    if not trace and REGISTRY[method].trace_only:
        raise ValueError(
            f"method {method!r} estimates the trace only: call divergence, or use xdiag or "
            "hutchinson for the diagonal"
        )
