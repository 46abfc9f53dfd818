"""Read pytest-benchmark JSON files and hollowbench journals (results_format/SCHEMA.md) into one
tidy DataFrame, a row per point: ``extra_info`` fields by name, ``param.<name>``, stats in
seconds (``median_s``, ...), ``machine.<a>.<b>``, ``commit.<field>``, and the derived
``machine``, ``device_id``, ``series``, ``facet`` and ``time_ms``. A point that did not run
keeps its ``status`` and NaN times, never zeros. Files of an older ``schema_version`` are
migrated step by step (``MIGRATIONS``); a newer one is refused."""

from __future__ import annotations

import glob
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from impls import DEFAULT_VARIANT, methods  # impls itself imports numpy only
from results_format import journal
from results_format.schema import (
    COUNTS,
    INFO_KEYS,
    NOT_RUN,
    OUR_KEYS,
    SCHEMA_VERSION,
    STATS,
    VERSION_KEY,
)

NFE_KIND = {"torch": "counted", "jax": "derived"}  # each backend's cnf.NFE_KIND, for old files
STAT_COLUMNS = tuple(f"{s}_s" for s in STATS)
INT_COLUMNS = ("d", "batch", "k", "n_probes", "n_matvecs")
FLOAT_COLUMNS = (
    *("n_params", "flops", "compile_s", "peak_mem_bytes", "error", "energy_j", "cpu_share"),
    *("load_1m", "rel_error", *STAT_COLUMNS),
)
BOOL_COLUMNS = ("noisy", "remeasured")  # True/False flags
# Workload keys the figures and tables read, added empty where no input has them.
READ_KEYS = ("n_matvecs", "rel_error", "nfe_kind")
# Each record's private fields while loading: its file's (or journal line's) schema_version, the
# journal session it belongs to, and the sessions a JSON says it holds (SCHEMA.md, "One record
# per point"); dropped before the frame is returned.
VERSION, SESSION, COVERS = "_version", "_session", "_covers"
# Record fields that extra_info keys must not overwrite.
RESERVED = {
    *("source", "source_kind", "timestamp", "name", "fullname", "group", "status", "machine"),
    *("gpu_names", "time_ms", "device_id", "series", "facet", "matvecs", *STAT_COLUMNS, *COUNTS),
}


class InputError(Exception):
    """A results file we cannot use. The message is one line: the file, then the problem."""


def warn(message: str) -> None:
    """One line on stderr; the build goes on."""
    print(f"warning: {message}", file=sys.stderr)


def expand_inputs(args: Sequence[str]) -> list[Path]:
    """Existing paths and glob matches, in order, without repeats (globs are expanded here
    too: Windows shells and quoted arguments pass them through)."""
    paths: list[Path] = []
    for arg in args:
        path = Path(arg).expanduser()
        if path.exists():
            matches = [path]
        elif any(c in arg for c in "*?["):
            matches = [Path(m) for m in sorted(glob.glob(str(path), recursive=True))]
            if not matches:
                raise InputError(f"{arg}: no file matches this pattern")
        else:
            raise InputError(f"{arg}: no such file")
        for match in matches:
            if match.is_dir():
                raise InputError(f"{match}: is a directory; pass result files or a glob")
            if match not in paths:
                paths.append(match)
    return paths


def load_results(args: Sequence[str]) -> pd.DataFrame:
    """The tidy frame of every point in the files ``args`` name (paths or globs): each point
    from one file (a journal session that a JSON among them holds is left out), migrated to
    the current schema, and measured twice only where it ran again (the newest wins)."""
    records: list[dict[str, Any]] = []
    for path in expand_inputs(args):
        records.extend(read_records(path))
    covered = {session for r in records for session in r.pop(COVERS)}
    records = [r for r in records if r.pop(SESSION) not in covered]
    if not records:
        raise InputError(f"{', '.join(args)}: no benchmark points in the input")
    frame = pd.DataFrame.from_records(records)
    return annotate(dedupe(frame))


def file_version(path: Path, where: str, obj: dict[str, Any], default: int = 1) -> int:
    """``obj``'s schema_version (``default`` where it has none); a newer one than this reader's
    cannot be read, only refused."""
    version = obj.get(VERSION_KEY, default)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InputError(f"{path}: {where}: {VERSION_KEY} {version!r} is not a version (1, 2, ...)")
    if version > SCHEMA_VERSION:
        raise InputError(
            f"{path}: {where} has {VERSION_KEY} {version}, newer than this reader's "
            f"{SCHEMA_VERSION}; update hollowbench to read it"
        )
    return version


def read_records(path: Path) -> list[dict[str, Any]]:
    """Flat records of one file, a pytest-benchmark JSON or a journal (by name, then content)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    if not raw.strip():
        raise InputError(f"{path}: empty file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file (not UTF-8), so not a results file") from None
    if path.name.endswith(".jsonl"):
        return _journal_records(path, text)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        if _looks_like_journal(text):
            return _journal_records(path, text)
        raise InputError(f"{path}: {_json_problem(text, exc)}") from None
    if isinstance(doc, dict) and doc.get("kind") == "session":
        return _journal_records(path, text)
    return _benchmark_records(path, doc)


def _json_problem(text: str, exc: json.JSONDecodeError) -> str:
    where = f"line {exc.lineno}, column {exc.colno}"
    # An unterminated string also runs to the end of the text: the file was cut off.
    if exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string"):
        return f"truncated JSON: the document ends before it is complete ({exc.msg} at {where})"
    return f"not valid JSON ({exc.msg} at {where})"


def _looks_like_journal(text: str) -> bool:
    first = text.lstrip().split("\n", 1)[0]
    try:
        obj = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(obj, dict) and obj.get("kind") == "session"


def _benchmark_records(path: Path, doc: Any) -> list[dict[str, Any]]:
    if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), list):
        raise InputError(
            f"{path}: valid JSON but not a pytest-benchmark results file (no 'benchmarks' list)"
        )
    if not isinstance(doc.get("machine_info"), dict):
        raise InputError(f"{path}: a pytest-benchmark file without 'machine_info'")
    context = _context(path, "json", doc["machine_info"], doc.get("commit_info"))
    context["timestamp"] = doc.get("datetime")
    ours = doc.get("hollowbench") or {}
    if not isinstance(ours, dict):
        raise InputError(f"{path}: 'hollowbench' is not an object")
    context[VERSION] = file_version(path, "its 'hollowbench' section", ours)
    sessions = ours.get("sessions") or [ours.get("session")]  # a merged file holds several
    covers = tuple(s for s in sessions if isinstance(s, str))
    # The harness's preset and limits (beyond SCHEMA.md) say why some points were never requested.
    if isinstance(settings := ours.get("settings"), dict):
        limits = settings.get("limits")
        context["sweep.preset"] = settings.get("preset")
        context["sweep.limits"] = "; ".join(map(str, limits)) if isinstance(limits, list) else None
    # A budgeted sweep's plan (--bench-budget): what it planned, ran and left out; else absent.
    if isinstance(plan := ours.get("plan"), dict):
        context["sweep.plan"] = json.dumps(plan, sort_keys=True)
    entries = [
        (f"benchmarks[{i}]", bench, _stats(path, f"benchmarks[{i}]", bench))
        for i, bench in enumerate(doc["benchmarks"])
    ]
    not_run = ours.get("not_run") or []
    if not isinstance(not_run, list):
        raise InputError(f"{path}: 'hollowbench.not_run' is not a list")
    entries += [(f"hollowbench.not_run[{i}]", point, None) for i, point in enumerate(not_run)]
    records = [_record(path, where, e, stats, context) for where, e, stats in entries]
    return [r | {SESSION: None, COVERS: covers} for r in _ours(path, records)]


def _stats(path: Path, where: str, bench: Any) -> dict[str, Any]:
    stats = bench.get("stats") if isinstance(bench, dict) else None
    median = stats.get("median") if isinstance(stats, dict) else None
    if not isinstance(median, int | float) or isinstance(median, bool) or not math.isfinite(median):
        raise InputError(f"{path}: {where} has no stats.median, so it is not a measured benchmark")
    return stats


def _journal_records(path: Path, text: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    context: dict[str, Any] | None = None
    session: str | None = None
    try:
        lines = list(journal.parse(text))
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from None
    for no, obj in lines:
        if obj is None:
            if context is None:
                raise InputError(f"{path}: line {no} is not valid JSON (cut short)")
            # The journal is written point by point so that it survives a crash; a torn
            # last line is that crash's signature, not a corrupt file.
            warn(f"{path}: line {no} is cut short (an interrupted write?); skipped it")
            continue
        kind = obj.get("kind") if isinstance(obj, dict) else None
        if kind == "session":
            if not isinstance(obj.get("machine_info"), dict):
                raise InputError(f"{path}: line {no}: session line without 'machine_info'")
            context = _context(path, "journal", obj["machine_info"], None)
            context["timestamp"] = obj.get("started")
            context[VERSION] = file_version(path, f"line {no}", obj)
            session = obj.get("session") if isinstance(obj.get("session"), str) else None
        elif kind == "point" and context is not None:
            stats = None if obj.get("stats") is None else _stats(path, f"line {no}", obj)
            record = _record(path, f"line {no}", obj, stats, context)
            record[VERSION] = file_version(path, f"line {no}", obj, context[VERSION])
            records.append(record | {SESSION: session, COVERS: ()})
        elif kind == "point":
            raise InputError(f"{path}: line {no}: a point before any session line")
        elif kind == "plan":  # a budget's plan: the JSON's hollowbench.plan carries it
            file_version(path, f"line {no}", obj)
        else:
            raise InputError(
                f"{path}: not a hollowbench journal "
                f"(line {no} is not a 'session', 'point' or 'plan' entry)"
            )
    return _ours(path, records)


def _context(path: Path, kind: str, machine: dict, commit: Any) -> dict[str, Any]:
    """The fields every point of one file (or journal session) shares."""
    context: dict[str, Any] = {"source": str(path), "source_kind": kind}
    context.update(_flatten(machine, "machine"))
    if isinstance(commit, dict):
        context.update(_flatten(commit, "commit"))
    ours = machine.get("hollowbench") if isinstance(machine.get("hollowbench"), dict) else {}
    context["machine"] = ours.get("node") or machine.get("node") or "unknown"
    gpus = ours.get("gpus") or []
    context["gpu_names"] = ", ".join(str(g.get("name")) for g in gpus if isinstance(g, dict))
    return context


def _flatten(obj: dict, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name))
        elif isinstance(value, list):
            scalar = all(not isinstance(v, dict | list) for v in value)
            out[name] = ", ".join(map(str, value)) if scalar else json.dumps(value)
        else:
            out[name] = value
    return out


def _record(
    path: Path, where: str, point: Any, stats: dict | None, context: dict[str, Any]
) -> dict[str, Any]:
    if not isinstance(point, dict) or not isinstance(point.get("fullname"), str):
        raise InputError(f"{path}: {where} has no 'fullname', so it is not a benchmark entry")
    extra = point.get("extra_info") or {}
    params = point.get("params") or {}
    if not isinstance(extra, dict) or not isinstance(params, dict):
        raise InputError(f"{path}: {where}: 'extra_info' and 'params' must be objects")
    record = dict(context)
    record.update({f"param.{k}": _scalar(v) for k, v in params.items()})
    for key, value in extra.items():
        if key != "status":
            record[f"extra.{key}" if key in RESERVED else key] = _scalar(value)
    record.update(name=point.get("name"), fullname=point["fullname"], group=point.get("group"))
    record["_ours"] = all(key in extra for key in OUR_KEYS)
    record["status"] = _status(extra.get("status"), stats is not None)
    if stats is not None:
        record.update({f"{s}_s": stats.get(s) for s in STATS})
        record.update({c: stats.get(c) for c in COUNTS})
    return record


def _status(status: Any, measured: bool) -> str:
    """'ok' for a timed point; for one without stats, its not-run status, or 'not timed' when
    it ran under --benchmark-disable (status ok, no stats)."""
    if measured:
        return str(status or "ok")
    if status in NOT_RUN:
        return str(status)
    return "not timed" if status == "ok" else "error"


def _scalar(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, dict | list) else value


def _ours(path: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop benchmarks that are not hollowbench's; a file with none of ours is foreign."""
    mine = [r for r in records if r.pop("_ours")]
    if records and not mine:
        raise InputError(
            f"{path}: benchmark results, but not hollowbench's (no extra_info "
            f"{' / '.join(OUR_KEYS)}); was it made by `pytest bench`?"
        )
    if len(mine) < len(records):
        warn(
            f"{path}: skipped {len(records) - len(mine)} benchmarks without hollowbench fields "
            "(a point interrupted before it finished, or not made by `pytest bench`)"
        )
    return mine


def dedupe(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (machine, fullname): a point measured again keeps its newest measurement;
    a version 1 JSON beats its journal (version 2 pairs never reach here: load_results)."""
    when = pd.to_datetime(frame["timestamp"], utc=True, errors="coerce", format="mixed")
    order = pd.DataFrame({"json": frame["source_kind"].eq("json"), "when": when})
    ranked = order.sort_values(["json", "when"], ascending=False, na_position="last")
    keep = ~frame.loc[ranked.index].duplicated(["machine", "fullname"])
    return frame.loc[ranked.index[keep.to_numpy()]].sort_index().reset_index(drop=True)


def migrate_1_to_2(frame: pd.DataFrame) -> pd.DataFrame:
    """Version 1 points (SCHEMA.md, "Version") as version 2 writes them: what a missing key
    meant when the key did not yet exist."""
    operator = frame["workload"].isin(["divergence", "ddim"])
    # Operator points from before variants existed ran the backend's default way; the other
    # workloads have no variants.
    default = frame["backend"].map(DEFAULT_VARIANT).where(operator)
    frame["variant"] = frame["variant"].fillna(default)
    # CNF points from before nfe_kind: torch counted its NFE; JAX derived its forward count and
    # assumed its backward one equal to it, which is dropped rather than shown as measured.
    legacy = frame["workload"].eq("cnf") & frame["nfe_kind"].isna()
    if "nfe_backward" in frame:
        frame.loc[legacy & frame["backend"].eq("jax"), "nfe_backward"] = None
    frame["nfe_kind"] = frame["nfe_kind"].where(~legacy, frame["backend"].map(NFE_KIND))
    # Train points from before the fair step took the loss's f from a second net(x).
    old_train = operator & frame["mode"].eq("train") & frame["step"].isna()
    frame["step"] = frame["step"].where(~old_train, "separate_forward")
    # Points from before the noise test (bench/harness/timing.py) read as neither noisy nor
    # re-measured: annotate's typing reads a missing flag as False.
    return frame


# The step from each version to the next, applied to the points of files that say they are
# older than SCHEMA_VERSION (a file without schema_version is version 1).
MIGRATIONS = {1: migrate_1_to_2}
assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION)), "a migration per version step"


def migrate(frame: pd.DataFrame) -> pd.DataFrame:
    """Every point brought to SCHEMA_VERSION: its rows through each step from its version on."""
    versions = frame.pop(VERSION) if VERSION in frame else pd.Series(SCHEMA_VERSION, frame.index)
    for version, step in sorted(MIGRATIONS.items()):
        older = versions <= version
        if older.all():
            frame = step(frame)
        elif older.any():  # inputs of several versions: the older rows alone
            migrated = step(frame.loc[older].copy())
            for column in migrated.columns:
                if column not in frame:
                    frame[column] = None
                frame[column] = migrated[column].reindex(frame.index).where(older, frame[column])
    return frame


def annotate(frame: pd.DataFrame) -> pd.DataFrame:
    """Typed schema columns plus the derived ones the figures and tables group by."""
    # absent keys are added empty: the tables read them whether or not an input has them
    frame = frame.assign(**{c: None for c in (*INFO_KEYS, *READ_KEYS) if c not in frame})
    frame = frame.assign(**{c: float("nan") for c in (*STAT_COLUMNS, *COUNTS) if c not in frame})
    frame = migrate(frame)
    for column in INT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    for column in FLOAT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    for column in BOOL_COLUMNS:
        frame[column] = frame[column].map(lambda v: v is True or v == 1).astype(bool)
    # Only a timed point can be noisy.
    frame["noisy"] &= frame["status"].eq("ok")
    stochastic = frame["method"].isin(methods.STOCHASTIC_METHODS)  # the registry's, now
    frame["time_ms"] = frame["median_s"] * 1e3
    frame["device_id"] = _device_ids(frame)
    # Jacobian-vector products per estimate: Hutchinson's probes, the other estimators' budget
    frame["matvecs"] = frame["n_matvecs"].fillna(frame["n_probes"].where(stochastic))
    frame["series"] = [_series_label(*row) for row in frame[["method", "model", "matvecs"]].values]
    if "spec" in frame:  # files from before --bench-spec stay as they were, no column added
        frame["spec"] = spec_labels(frame)
    frame["facet"] = facet_labels(frame)
    return frame


def _device_ids(frame: pd.DataFrame) -> pd.Series:
    """A short key per device, which the Machines table resolves to its name and machine: the
    ``device`` ("cpu", "cuda:0"), plus "@machine" where several machines have one of that key,
    or " #n" where one machine name holds several (two runs on hosts of the same name)."""
    device = frame["device"].fillna("unknown").astype(str)
    name = frame["device_name"].fillna(device).astype(str)
    ids = pd.DataFrame({"device": device, "machine": frame["machine"].astype(str), "name": name})
    keys: dict[tuple, str] = {}
    for key, group in ids.drop_duplicates().sort_values(["machine", "name"]).groupby("device"):
        rows = list(group.itertuples(index=False, name=None))
        if len(rows) == 1:
            keys[rows[0]] = key
        elif group["machine"].is_unique:
            keys |= {row: f"{key}@{row[1]}" for row in rows}
        else:
            keys |= {row: f"{key} #{i}" for i, row in enumerate(rows, 1)}
    return pd.Series([keys[row] for row in ids.itertuples(index=False, name=None)], frame.index)


MODEL_SHORT = {
    "hollownet": "",
    "mlp_param_matched": "MLP param-matched",
    "mlp_flop_matched": "MLP FLOP-matched",
}


def _series_label(method: Any, model: Any, matvecs: Any) -> str:
    """One line in a plot: the method's label (impls.methods; an unknown method's name), a
    stochastic one's matrix-vector products (Hutchinson: its probes) and (unless a HollowNet)
    the model."""
    label = methods.label(method) if isinstance(method, str) else "?"
    if not pd.isna(matvecs):
        label += f"-{int(matvecs)}"
    short = MODEL_SHORT.get(model, model) if isinstance(model, str) else ""
    return f"{label} [{short}]" if short else label


# Keys that split facets only when the inputs hold several values of them. A variant gets its
# own panels, so the eager figure stays visible beside the CUDA graph and compiled ones.
FACET_EXTRAS = ("variant", "dtype", "batch", "matmul_precision")
# The operator models' architecture (--bench-spec's label) splits facets where the inputs hold
# several: the package defaults' points read "defaults" (the user's own model's, nothing).
DEFAULT_SPEC = "defaults"


def spec_labels(frame: pd.DataFrame) -> pd.Series:
    """Each point's architecture label: its ``spec``; a divergence or ddim point of a built-in
    model without one, "defaults"; any other point, ""."""
    built_in = frame["workload"].isin(["divergence", "ddim"]) & frame["model"].ne("custom")
    spec = frame["spec"].astype(object)
    return spec.where(spec.notna(), DEFAULT_SPEC).where(built_in | spec.notna(), "")


def facet_columns(frame: pd.DataFrame) -> list[str]:
    """backend, device and mode, plus any setting that varies across the inputs (variant:
    only where some point ran other than its backend's default way; spec: where the operator
    points hold several architectures)."""
    extras = [c for c in FACET_EXTRAS if frame[c].nunique(dropna=True) > 1]
    variant = frame["variant"]
    if not (variant.notna() & variant.ne(frame["backend"].map(DEFAULT_VARIANT))).any():
        extras = [c for c in extras if c != "variant"]
    if "spec" in frame and frame["spec"][frame["spec"].ne("")].nunique() > 1:
        extras.append("spec")
    return ["backend", "device_id", "mode", *extras]


def facet_labels(frame: pd.DataFrame) -> pd.Series:
    """'torch · cpu · train' (the device's key; dtype, batch, precision where they vary; the
    architecture, as ``trans_hidden=64-64,activation=tanh``, where several ran)."""
    parts = [
        text(frame[c]) if c == "spec" else (f"{c}=" if c in FACET_EXTRAS else "") + text(frame[c])
        for c in facet_columns(frame)
    ]
    return pd.concat(parts, axis=1).agg(lambda row: " · ".join(p for p in row if p), axis=1)


# Column prefixes of the per-file details that only the machines table reads.
DETAIL_PREFIXES = ("machine.", "commit.", "param.")


def analysis_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame without the per-file details: every filter then copies a third of the data."""
    return frame[[c for c in frame.columns if not c.startswith(DETAIL_PREFIXES)]]


def text(column: pd.Series) -> pd.Series:
    """Values as labels, with 'n/a' for a missing one (pandas may keep NaN through astype)."""
    return column.astype(object).where(column.notna(), "n/a").map(str)
