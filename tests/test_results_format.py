"""The results contract (results_format/): versions, migrations of older files, and one record
per point where a sweep wrote both its JSON and its journal."""

from __future__ import annotations

import json

import pytest
from test_reports import journal_point, machine_info, points, results_json, stats, write_json

from reports.__main__ import main
from reports.load import MIGRATIONS, load_results
from results_format import journal
from results_format.schema import SCHEMA_VERSION, VERSION_KEY


def v2(doc: dict, session: str = "s1") -> dict:
    """``doc`` as version 2 writes it."""
    return {**doc, "hollowbench": {**doc["hollowbench"], VERSION_KEY: 2, "session": session}}


def session_line(node: str, session: str | None, version: int | None = 2) -> dict:
    line = {"kind": "session", "started": "2026-01-02T03:00:00", "machine_info": machine_info(node)}
    line |= {"session": session} if session else {}
    return line | ({VERSION_KEY: version} if version else {})


def write_journal(path, lines: list[dict]):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_there_is_a_migration_for_every_version_step():
    assert SCHEMA_VERSION == 2 and sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION))


def test_the_journal_writes_the_version_on_every_line(tmp_path):
    j = journal.Journal(tmp_path / "j.jsonl", lambda: {"node": "x"})
    j.append({"kind": "point", "name": "a"})
    j.append({"kind": "plan", "planned_ids": []})
    lines = journal.read(tmp_path / "j.jsonl")
    assert [line["kind"] for line in lines] == ["session", "point", "plan"]
    assert all(line[VERSION_KEY] == SCHEMA_VERSION for line in lines)
    assert lines[0]["session"] == j.session and len(j.session) == 32


def test_a_json_and_its_journal_give_each_point_once(tmp_path):
    doc = v2(results_json("alpha"))
    write_json(tmp_path / "r.json", doc)
    entries = [(e, ms) for e, ms in points("alpha")]
    lines = [session_line("alpha", "s1")]
    lines += [journal_point(e, None if isinstance(ms, str) else stats(ms)) for e, ms in entries]
    # a later session of the same journal, without its JSON (it crashed): read from here
    extra = journal_point(entries[0][0], stats(3.0), name="extra", fullname="bench/x.py::extra")
    lines += [session_line("alpha", "s2"), extra]
    j = write_journal(tmp_path / "r.journal.jsonl", lines)
    frame = load_results([str(tmp_path / "r.json"), str(j)])
    assert len(frame) == len(entries) + 1 and not frame["fullname"].duplicated().any()
    assert set(frame.loc[frame["fullname"] != "bench/x.py::extra", "source_kind"]) == {"json"}
    journal_only = load_results([str(j)])
    assert len(journal_only) == len(entries) + 1


def test_a_version_1_train_point_without_step_is_migrated_a_version_2_one_is_not(tmp_path):
    entry, ms = points("alpha")[0]
    entry["extra_info"] |= {"mode": "train"}
    entry["extra_info"].pop("variant", None)
    old = write_journal(tmp_path / "old.journal.jsonl", [
        session_line("alpha", None, version=None), journal_point(entry, stats(ms)),
    ])  # fmt: skip
    new_entry = {**entry, "fullname": entry["fullname"] + "-new", "name": "new"}
    new = write_journal(tmp_path / "new.journal.jsonl", [
        session_line("alpha", "s3"), journal_point(new_entry, stats(ms)) | {VERSION_KEY: 2},
    ])  # fmt: skip
    frame = load_results([str(old), str(new)]).set_index("fullname")
    migrated, current = frame.loc[entry["fullname"]], frame.loc[new_entry["fullname"]]
    assert migrated["step"] == "separate_forward" and migrated["variant"] == "eager"
    assert pd_isna(current["step"]) and pd_isna(current["variant"])


def pd_isna(value) -> bool:
    return value is None or value != value


@pytest.mark.parametrize("where", ["json", "journal session", "journal point"])
def test_a_file_newer_than_the_reader_exits_2_with_one_line(tmp_path, capsys, where):
    newer = SCHEMA_VERSION + 1
    if where == "json":
        doc = results_json("alpha")
        doc["hollowbench"][VERSION_KEY] = newer
        path = write_json(tmp_path / "r.json", doc)
    else:
        entry, ms = points("alpha")[0]
        point = journal_point(entry, stats(ms))
        lines = [session_line("alpha", "s", newer if where == "journal session" else 2)]
        path = write_journal(tmp_path / "r.journal.jsonl", [*lines, point | {VERSION_KEY: newer}])
    assert main(["build", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err, err
    assert f"{VERSION_KEY} {newer}, newer than this reader's {SCHEMA_VERSION}" in err
    assert not (tmp_path / "out").exists()


def test_a_merged_file_names_every_shard_s_session(tmp_path):
    doc = results_json("alpha")
    half = len(doc["benchmarks"]) // 2
    shards = [
        v2({**doc, "benchmarks": doc["benchmarks"][:half]}, "a"),
        v2({**doc, "benchmarks": doc["benchmarks"][half:], "hollowbench": {
            **doc["hollowbench"], "not_run": []}}, "b"),
    ]  # fmt: skip
    paths = [write_json(tmp_path / f"s{i}.json", shard) for i, shard in enumerate(shards)]
    assert main(["merge", str(tmp_path / "m.json"), *map(str, paths)]) == 0
    merged = json.loads((tmp_path / "m.json").read_text())["hollowbench"]
    assert merged["sessions"] == ["a", "b"] and merged[VERSION_KEY] == 2
