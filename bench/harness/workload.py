"""What every workload (divergence, ddim, cnf, ode, sde) declares, and how pytest runs it.

A test module holds one ``WORKLOAD`` and a one-line test; ``bench/conftest.py`` asks the
workload for its points (:meth:`Workload.points`: its axes and its presets, data under the
names of ``bench.harness.grid.PRESETS``, resolved against the ``--bench-*`` settings), shards
them, and parametrizes the test with each point's ``params`` under its ``id``; the ``point``
fixture rebuilds the very same point from them, and :meth:`Workload.run` measures it through
:meth:`~bench.harness.sweep.Sweep.run`, which records it. A point keeps one type from
generation to the journal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar


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

    @property
    def id(self) -> str:
        raise NotImplementedError

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> PointBase:
        return cls(**{name: params[name] for name in cls.param_names()})


class Workload:
    """One workload: ``name`` (extra_info's ``workload``), ``point_type``, ``presets`` (its
    own grid and limits per preset name; None: the harness's own presets say it all), its
    points for the settings (:meth:`points`), what cannot run here (:meth:`unavailable`), and
    how one point is measured (:meth:`run`: build the task, check it, say its extra_info
    keys)."""

    name: str
    point_type: type[PointBase]
    presets: Mapping[str, Any] | None = None

    def preset(self, settings) -> Any:
        """This workload's preset for ``settings.preset`` (``--bench-preset``)."""
        return self.presets[settings.preset.name]

    def points(self, settings, devices: dict[str, tuple[str, ...]]) -> list[PointBase]:
        """Every point of this workload for ``settings`` on ``devices`` (backend -> devices):
        each of :meth:`rows` on each device, in that order."""
        return [
            self.point_type(backend, device, *row)
            for backend, backend_devices in devices.items()
            for device in backend_devices
            for row in self.rows(settings, backend)
        ]

    def rows(self, settings, backend: str) -> list[tuple]:
        """The parameters after (backend, device) of every point for ``settings`` on
        ``backend``."""
        raise NotImplementedError

    def point(self, params: dict[str, Any]) -> PointBase:
        """The point pytest's ``params`` (its parametrized names) stand for."""
        return self.point_type.from_params(params)

    def unavailable(self, point: PointBase) -> str | None:
        """Why ``point`` cannot run here (a missing optional package), or None."""
        return None

    def run(self, sweep, benchmark, point: PointBase) -> None:
        raise NotImplementedError
