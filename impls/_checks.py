"""Framework-free argument checks shared by both backends, so both fail with the same words."""

from __future__ import annotations

HOLLOW_METHODS = ("hollow", "hollow_forward")
DENSE_METHODS = ("dense_loop", "dense_vectorized")
EXACT_METHODS = (*HOLLOW_METHODS, *DENSE_METHODS)
# Estimators stronger than Hutchinson's at the same number of Jacobian-vector products when the
# spectrum decays (impls/*/estimators.py): two of the trace, one of the diagonal.
TRACE_ESTIMATORS = ("hutchpp", "xtrace")
ESTIMATORS = (*TRACE_ESTIMATORS, "xdiag")
STOCHASTIC_METHODS = ("hutchinson", *ESTIMATORS)
METHODS = (*EXACT_METHODS, *STOCHASTIC_METHODS)
# The fewest products each estimator can spend: Hutch++ one sketch, one range and one residual
# product; XTrace and XDiag one sketch and one range product.
MIN_MATVECS = {"hutchpp": 3, "xtrace": 2, "xdiag": 2}
MAX_K = 4
# How a step runs. torch: as written (eager), captured whole in one CUDA graph and replayed
# (cudagraph: no per-kernel launch cost; CUDA devices only), through torch.compile (eval
# only: AOTAutograd cannot differentiate twice, and every train step here does), or eagerly
# with the k = 1 hollow_forward transformer in fused Triton kernels (triton). JAX: jit, or jit
# with that transformer in one fused Pallas kernel (pallas).
VARIANTS = {"torch": ("eager", "cudagraph", "compile", "triton"), "jax": ("jit", "pallas")}
# Variants whose one change is tau's value and tangent in a fused kernel: they apply to
# hollow_forward at k = 1 only, on a GPU (their interpreters are for tests).
FUSED_VARIANTS = ("triton", "pallas")
# The variant each fused one runs as, kernel aside: its Hutchinson-1 twin in goal (a).
FUSED_BASE = {"triton": "eager", "pallas": "jit"}
DEFAULT_VARIANT = {name: variants[0] for name, variants in VARIANTS.items()}

# Options each method takes besides ``t``; the JAX backend's stochastic methods also take a PRNG
# ``key``.
METHOD_OPTS = {
    "hollow": (),
    "hollow_forward": (),
    "dense_loop": (),
    "dense_vectorized": ("chunk_size",),
    "hutchinson": ("n_probes", "noise", "seed"),
    **{name: ("n_matvecs", "noise", "seed") for name in ESTIMATORS},
}
NOISES = ("rademacher", "gaussian")
# The estimators' probes also sketch J's range, through a QR factorisation and (XTrace, XDiag)
# R^-1: Rademacher sketches are rank-deficient with probability ~ s^2 2^-d (two probes equal up
# to sign), which leaves R singular and the gradient of the QR undefined; Gaussian ones never.
ESTIMATOR_NOISES = ("gaussian",)
DEFAULT_NOISE = {**{name: ESTIMATOR_NOISES[0] for name in ESTIMATORS}, "hutchinson": "rademacher"}


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
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got k={k}")
    if method in STOCHASTIC_METHODS and k != 1:
        raise ValueError(f"method {method!r} estimates k=1 only, got k={k}")
    if k > MAX_K:
        raise ValueError(f"k must be <= {MAX_K}, got k={k}")
    if method in HOLLOW_METHODS and not is_hollow:
        raise ValueError(
            f"method {method!r} needs a HollowNet, got {model_name}; "
            "use dense_loop, dense_vectorized or hutchinson for other models"
        )
    allowed = ("t", *METHOD_OPTS[method], *(extra_opts or {}).get(method, ()))
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        takes = ", ".join(allowed)
        raise TypeError(f"method {method!r} got unexpected option(s) {unknown}; it takes: {takes}")
    if method == "hutchinson":
        n = opts.get("n_probes", 1)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n_probes must be a positive int, got {n!r}")
    if method in ESTIMATORS:
        n, least = opts.get("n_matvecs", MIN_MATVECS[method]), MIN_MATVECS[method]
        if isinstance(n, bool) or not isinstance(n, int) or n < least:
            raise ValueError(f"method {method!r} needs n_matvecs >= {least} (an int), got {n!r}")
    if method in STOCHASTIC_METHODS:
        noises = ESTIMATOR_NOISES if method in ESTIMATORS else NOISES
        if opts.get("noise", DEFAULT_NOISE[method]) not in noises:
            raise ValueError(f"unknown noise {opts['noise']!r} for {method!r}; use one of {noises}")
    chunk = opts.get("chunk_size")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk!r}")


def check_target(method: str, trace: bool) -> None:
    """Raise ValueError when ``method`` cannot estimate the diagonal (``trace`` False)."""
    if not trace and method in TRACE_ESTIMATORS:
        raise ValueError(
            f"method {method!r} estimates the trace only: call divergence, or use xdiag or "
            "hutchinson for the diagonal"
        )


def check_input(*, shape: tuple, dtype: str, dim: int, model_dtype: str) -> None:
    """Raise ValueError/TypeError when x is not a (batch, dim) array of the model's dtype."""
    if len(shape) != 2 or shape[1] != dim:
        raise ValueError(f"x must have shape (batch, {dim}) for this model, got {tuple(shape)}")
    if shape[0] < 1:
        raise ValueError(f"x must hold at least one sample, got shape {tuple(shape)}")
    if dtype != model_dtype:
        raise TypeError(f"x has dtype {dtype} but the model is {model_dtype}; cast one to match")


def check_time(*, time_dependent: bool, t_given: bool) -> None:
    if time_dependent and not t_given:
        raise ValueError("this model is time-dependent: pass t=... (a scalar or shape (batch,))")
    if not time_dependent and t_given:
        raise ValueError("this model is not time-dependent, but t was given")


def check_t_shape(shape: tuple, batch: int) -> None:
    if tuple(shape) not in ((), (batch,), (batch, 1)):
        raise ValueError(f"t must be a scalar or have shape ({batch},), got {tuple(shape)}")


def resolve_device(name: str | None, available: list[str], backend: str) -> str:
    """The device to use: ``name`` checked against ``available`` ("cuda"/"gpu" mean "cuda:0"),
    or the first GPU, else the CPU, when ``name`` is None."""
    if name is None:
        return "cuda:0" if "cuda:0" in available else "cpu"
    if not isinstance(name, str):
        raise TypeError(f"device must be a str such as 'cpu' or 'cuda:0', got {name!r}")
    norm = "cuda:0" if name in ("cuda", "gpu") else name.replace("gpu:", "cuda:")
    if norm not in available:
        raise ValueError(
            f"device {name!r} is not available to backend {backend!r}; "
            f"available: {', '.join(available)}"
        )
    return norm
