"""The results format's keys and version, the one place the harness and the report builder
take them from.

results_format/SCHEMA.md describes each key; tests/test_schema.py checks that it names every
key here. No imports beyond the standard library, so ``reports`` reads this without torch or JAX.
"""

from __future__ import annotations

# The format's version: every journal line and every JSON's ``hollowbench`` section carries it
# as ``schema_version``; files without it are version 1. A reader migrates older files step by
# step (reports/load.py, MIGRATIONS) and refuses newer ones. Raise it, and add the step from
# the version before, whenever a key changes meaning or a reader would have to infer a value.
SCHEMA_VERSION = 2
VERSION_KEY = "schema_version"

# The timing's noise test and the conditions it ran in (bench/harness/timing.py, telemetry.py).
NOISE_KEYS = ("noise", "remeasured", "noisy", "cpu_share")
CONDITION_KEYS = ("load_1m", "gpu_processes", "sm_clock_mhz", "throttle_reasons")
# Keys every point's extra_info carries; None where they do not apply.
INFO_KEYS = (
    "backend", "device", "device_name", "workload", "method", "variant", "model", "d", "batch", "k",
    "n_probes", "mode", "step", "dtype", "matmul_precision", "n_params", "flops", "compile_s",
    "peak_mem_bytes", "peak_mem_kind", "error", "error_kind", "energy_j", "energy_kind",
    "predicted_bytes", "wall_s", "status", "reason", "compile_ahead", "compile_cache",
    *NOISE_KEYS, *CONDITION_KEYS,
)  # fmt: skip
# extra_info keys whose presence marks a benchmark as hollowbench's.
OUR_KEYS = ("backend", "workload")
# Each workload's own extra_info keys, besides INFO_KEYS ("model_spec" is every workload's).
# --bench-spec's HollowSpec fields, each its own key on the operator points that swept it.
SPEC_KEYS = tuple(
    f"spec_{name}"
    for name in (
        "d_h", "cond_hidden", "trans_hidden", "activation", "conditioner", "time_dependent",
        "dtype",
    )
)  # fmt: skip
OPERATOR_KEYS = ("model_spec", "n_matvecs", "rel_error", "spec", "model_factory", *SPEC_KEYS)
WORKLOAD_KEYS = {
    "divergence": OPERATOR_KEYS,
    "ddim": OPERATOR_KEYS,
    "cnf": (
        "model_spec", "cnf_item", "dataset", "solver", "rtol", "atol", "t1", "adjoint",
        "nfe_forward", "nfe_backward", "nfe_kind", "n_steps", "loglik_eval_ms",
        "loglik_compile_s", "loglik", "loglik_std", "loglik_std_sample", "budget_s",
        "train_iterations", "train_iter_ms", "train_loss", "nll_nats", "nll_sem", "bits_per_dim",
        "nll_estimate_nats",
    ),
    "ode": (
        "model_spec", "problem", "root_finder", "reuse", "stepper", "adaptive", "rtol", "atol",
        "t1", "stiffness", "max_steps", "reference", "n_steps", "n_accepted", "n_rejected",
        "n_failed", "n_iters", "nfe", "n_jac", "n_diag", "n_lu", "iters_per_step", "success",
        "t_final", "error_rel",
    ),
    "sde": ("model_spec", "route", "target", "t_span"),
}  # fmt: skip
# pytest-benchmark's timing statistics (seconds per call) and its counts, as the journal keeps them.
STATS = ("min", "max", "mean", "stddev", "median", "iqr", "q1", "q3")
COUNTS = ("rounds", "iterations", "ops")
STATUSES = ("ok", "oom", "timeout", "skipped", "error")
NOT_RUN = STATUSES[1:]
# The d the paper's claims are judged over: the paper preset sweeps them (bench's presets), and
# the report counts each claim's coverage against them.
PAPER_DIMS = (8, 32, 128, 512, 1024, 2048, 4096)
