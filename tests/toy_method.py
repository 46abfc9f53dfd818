"""A toy method, registered as a new method is: one record in the registry and one operator per
backend, nothing else. Hutchinson's estimator again, under the name ``hutchinson2`` and its own
label. Importing this module registers it; ``-p tests.toy_method`` does so in a sweep's process
before anything reads the registry, as an entry in impls/methods.py would (tests/test_methods.py).
"""

from __future__ import annotations

from impls import methods

NAME, LABEL = "hutchinson2", "Hutchinson, the toy copy"


def torch_operator(call):
    from impls.torch_backend import operators

    return operators.hutchinson(call.fun, call.x, call.opts, call.trace, with_value=True)


def jax_operator(call):
    from impls.jax_backend import operators

    n_probes, noise = call.opts.get("n_probes", 1), call.opts.get("noise") or "rademacher"
    return operators.hutchinson(
        call.fun, call.x, call.key, n_probes, noise, call.trace, with_value=True
    )


TOY = methods.Method(
    NAME,
    kind="stochastic",
    family="toy",
    k_range=(1, 1),
    options=("n_probes", "noise", "seed"),
    budget="n_probes",
    noises=methods.NOISES,
    passes=methods.REGISTRY["hutchinson"].passes,
    label=LABEL,
)


def register() -> None:
    if NAME not in methods.REGISTRY:
        methods.register(TOY, torch=torch_operator, jax=jax_operator)


register()
