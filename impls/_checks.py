"""Framework-free checks of inputs, times and devices shared by both backends, so both fail
with the same words. A method's own arguments are checked by :func:`impls.methods.check_call`."""

from __future__ import annotations

from collections.abc import Callable


def check_input(*, shape: tuple, dtype: str, dim: int, model_dtype: str) -> None:
    """Raise ValueError/TypeError when x is not a (batch, dim) array of the model's dtype."""
    if len(shape) != 2 or shape[1] != dim:
        raise ValueError(f"x must have shape (batch, {dim}) for this model, got {tuple(shape)}")
    if shape[0] < 1:
        raise ValueError(f"x must hold at least one sample, got shape {tuple(shape)}")
    if dtype != model_dtype:
        raise TypeError(f"x has dtype {dtype} but the model is {model_dtype}; cast one to match")


# A model of the caller's own (no ``spec``): any callable mapping (batch, dim) to (batch, dim).
NOT_A_MODEL = (
    "net must be a model: one this backend built, or a callable mapping (batch, dim) to "
    "(batch, dim); got {}"
)


def check_own_input(*, shape: tuple, dtype: str, model_dtype: str | None) -> None:
    """:func:`check_input` for a model of the caller's own: its dim is x's, its dtype its
    floating parameters' (None: it has none, any dtype goes)."""
    if len(shape) != 2:
        raise ValueError(f"x must have shape (batch, dim), got {tuple(shape)}")
    if shape[0] < 1:
        raise ValueError(f"x must hold at least one sample, got shape {tuple(shape)}")
    if model_dtype is not None and dtype != model_dtype:
        raise TypeError(f"x has dtype {dtype} but the model is {model_dtype}; cast one to match")


def checked_own_model(net: Callable, array_type: type, type_name: str) -> Callable:
    """y -> net(y) for a model of the caller's own, its output checked on every call (or trace):
    an ``array_type`` (named ``type_name`` in the error) of y's shape."""

    def fun(y):
        out = net(y)
        if not isinstance(out, array_type):
            raise TypeError(f"the model returned a {type(out).__name__}, not a {type_name}")
        check_own_output(tuple(y.shape), tuple(out.shape))
        return out

    return fun


def check_own_output(in_shape: tuple, out_shape: tuple) -> None:
    """Raise ValueError unless a model of the caller's own mapped (batch, dim) to itself."""
    if tuple(out_shape) == tuple(in_shape):
        return

    def shown(shape: tuple) -> str:  # (batch, 7) where the batch is x's
        same_batch = len(shape) > 0 and shape[0] == in_shape[0]
        return str(("batch", *shape[1:]) if same_batch else tuple(shape)).replace("'", "")

    raise ValueError(
        f"the model maps {shown(in_shape)} to {shown(out_shape)}; it must map (batch, dim) to "
        "(batch, dim)"
    )


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
