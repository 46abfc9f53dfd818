"""What every workload (divergence, ddim, cnf, ode, sde) declares. A workload only describes:
its points (:meth:`Workload.points`, built once, at collection) and, for one point, the
:class:`~bench.harness.case.Case` the sweep runs (:meth:`Workload.case`); the sweep builds,
compiles, times and records. ``bench/test_<name>.py`` hands pytest its ``WORKLOAD``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from bench.harness.case import Case


@dataclass(frozen=True)
class PointBase:
    """A benchmark point. Subclasses are frozen dataclasses whose fields are the pytest
    parameters (the JSON's ``params``), in id order, unless ``PARAMS`` names them."""

    PARAMS: ClassVar[tuple[str, ...] | None] = None

    @classmethod
    def param_names(cls) -> tuple[str, ...]:
        return cls.PARAMS or tuple(f.name for f in fields(cls))

    @property
    def params(self) -> tuple:
        return tuple(getattr(self, name) for name in self.param_names())

    def param_dict(self) -> dict[str, Any]:
        """pytest's ``params`` of the point (the JSON's), by name."""
        return dict(zip(self.param_names(), self.params, strict=True))

    @property
    def id(self) -> str:
        raise NotImplementedError


class Workload:
    """One workload: ``name`` (extra_info's ``workload``), ``point_type``, ``presets`` (its
    own grid and limits per preset name; None: the harness's presets say it all)."""

    name: str
    point_type: type[PointBase]
    presets: Mapping[str, Any] | None = None

    def preset(self, settings) -> Any:
        """This workload's preset for ``settings.preset`` (``--bench-preset``)."""
        return self.presets[settings.preset.name]

    def points(self, settings, devices: dict[str, tuple[str, ...]]) -> list[PointBase]:
        """Every point for ``settings`` on ``devices`` (backend -> devices): each of
        :meth:`rows` on each device, in that order."""
        return [
            self.point_type(backend, device, *row)
            for backend, backend_devices in devices.items()
            for device in backend_devices
            for row in self.rows(settings, backend)
        ]

    def rows(self, settings, backend: str) -> list[tuple]:
        """The parameters after (backend, device) of every point on ``backend``."""
        raise NotImplementedError

    def unavailable(self, point: PointBase) -> str | None:
        """Why ``point`` cannot run here (a missing optional package), or None."""
        return None

    def case(self, sweep, point: PointBase) -> Case:
        """What ``point`` runs, for ``sweep.run`` or a compile-ahead window: describing only
        (the task factory builds nothing until called)."""
        raise NotImplementedError


def backend_module(backend, name: str):
    """``impls.<backend>_backend.<name>``; ImportError (a skipped point) without its packages."""
    return importlib.import_module(f"impls.{backend.name}_backend.{name}")


def attrs(obj, *names: str) -> dict[str, Any]:
    """``{name: obj.<name>}``: extra_info entries copied off a point or a config."""
    return {name: getattr(obj, name) for name in names}


def spec_info(spec, nets: int = 1) -> dict[str, Any]:
    """extra_info's dtype, n_params, flops and model_spec of ``nets`` models of ``spec``."""
    return {
        "dtype": spec.dtype,
        "n_params": nets * spec.n_params,
        "flops": nets * spec.flops,
        "model_spec": {"type": type(spec).__name__, **asdict(spec)},
    }


def reference_backend(sweep, point: PointBase):
    """Where a float64 reference is computed: torch on the point's device where installed
    (eagerly: JAX would compile it first), else the point's own backend."""
    try:
        return sweep.backend("torch", point.device)
    except (ImportError, ValueError):  # torch missing, or it cannot see this device
        return sweep.backend(point.backend, point.device)
