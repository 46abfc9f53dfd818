"""Moved to :mod:`results_format.schema` (packaged, so that ``reports`` reads it when
installed); kept so that ``from bench.schema import ...`` still works."""

from results_format.schema import (  # noqa: F401
    CONDITION_KEYS,
    COUNTS,
    INFO_KEYS,
    NOISE_KEYS,
    NOT_RUN,
    OUR_KEYS,
    SCHEMA_VERSION,
    SPEC_KEYS,
    STATS,
    STATUSES,
    VERSION_KEY,
    WORKLOAD_KEYS,
)
