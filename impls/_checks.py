"""Framework-free argument checks shared by both backends, so both fail with the same words."""

from __future__ import annotations

HOLLOW_METHODS = ("hollow", "hollow_forward")
DENSE_METHODS = ("dense_loop", "dense_vectorized")
EXACT_METHODS = (*HOLLOW_METHODS, *DENSE_METHODS)
METHODS = (*EXACT_METHODS, "hutchinson")
MAX_K = 4
# How a step runs. torch: as written (eager), captured whole in one CUDA graph and replayed
# (cudagraph: no per-kernel launch cost; CUDA devices only), or through torch.compile (eval
# only: AOTAutograd cannot differentiate twice, and every train step here does). JAX: jit.
VARIANTS = {"torch": ("eager", "cudagraph", "compile"), "jax": ("jit",)}
DEFAULT_VARIANT = {name: variants[0] for name, variants in VARIANTS.items()}

# Options each method takes besides ``t``; the JAX backend's hutchinson also takes a PRNG ``key``.
METHOD_OPTS = {
    "hollow": (),
    "hollow_forward": (),
    "dense_loop": (),
    "dense_vectorized": ("chunk_size",),
    "hutchinson": ("n_probes", "noise", "seed"),
}
NOISES = ("rademacher", "gaussian")


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
    if method == "hutchinson" and k != 1:
        raise ValueError(f"method 'hutchinson' estimates k=1 only, got k={k}")
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
        if opts.get("noise", "rademacher") not in NOISES:
            raise ValueError(f"unknown noise {opts['noise']!r}; choose from {NOISES}")
    chunk = opts.get("chunk_size")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk!r}")


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
