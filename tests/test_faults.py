"""Faults on the lake: a process killed mid-write, an unwritable lake, foreign files in table folders.

Each case checks what a user sees afterwards: the earlier table version, its rows and a content
checksum, read through the lake in-process and through ``beha2vec sql``. One lake is built
in-process per module and each test works on its own copy (Delta logs hold relative paths).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from beha2vec import stages
from beha2vec.ask import context_message, register_safe_views, run_query
from beha2vec.config import load_config
from beha2vec.context import Context
from beha2vec.lake import Lake
from beha2vec.sql import SqlError, query
from beha2vec.synth import SynthSummary, synth

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1", "HF_HUB_OFFLINE": "1"}
QUIET = ("--set", "spark.progress_bar=false")
DAYS = 14
# users of a retry when the kill came after the commit (the first try uses the module's data)
MORE_USERS = 1500


def cli(*args: str, cwd: Path, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``beha2vec`` as a user runs it, not checked: these tests look at failures."""
    return subprocess.run([*prefix, str(BIN / "beha2vec"), *args], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=300)


def fingerprint(df, key: str) -> tuple[int, int, int]:
    """Rows, distinct keys and a sum of row hashes: equal tuples mean the same rows."""
    row = df.agg(F.count(F.lit(1)), F.count_distinct(key),
                 F.sum(F.xxhash64(*df.columns).cast("decimal(38,0)"))).first()
    return int(row[0]), int(row[1]), int(row[2] or 0)


def sql_fingerprint(lake: Path, table: str, key: str, cwd: Path) -> tuple[int, int, int]:
    """:func:`fingerprint` through ``beha2vec sql`` (same columns in the same order, same hash)."""
    proc = cli("--lake", str(lake), *QUIET, "sql",
               f"SELECT count(*) AS n, count(DISTINCT {key}) AS k, "
               f"sum(CAST(xxhash64(*) AS DECIMAL(38,0))) AS h FROM {table}", "--format", "json", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(proc.stdout)[0]
    return int(row["n"]), int(row["k"]), int(row["h"])


def error_line(stderr: str) -> str:
    """The CLI's one-line message; Spark's own log lines may come before it."""
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def parquet_files(folder: Path) -> set[Path]:
    return set(folder.rglob("*.parquet"))


def active_files(lake: Lake, table: str) -> set[Path]:
    paths = DeltaTable(lake.uri(table)).get_add_actions(flatten=True).column("path").to_pylist()
    return {Path(lake.uri(table)) / p for p in paths}


def context(spark, root: Path) -> Context:
    """A stage context on ``root`` sharing the session-wide Spark session."""
    ctx = Context(load_config(lake_root=str(root)))
    ctx.__dict__["spark"] = spark
    return ctx


def live_members(pgid: int) -> dict[int, str]:
    """Processes of a process group that are not zombies (a zombie cannot write any more), with
    their command names from the same read: a short-lived worker may exit right after it is listed."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, rest = text[text.index("(") + 1:].rsplit(")", 1)
        fields = rest.split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            found[int(stat.parent.name)] = name
    return found


def kill_during_write(lake: Path, table: str, args: list[str], cwd: Path, timeout: float = 300,
                      jvm_only: bool = False) -> int | None:
    """Run ``beha2vec ARGS`` and SIGKILL its whole process group (driver, JVM, Python workers) as
    soon as new parquet files appear in the table's folder; fails when the command ends before.
    ``jvm_only`` kills Spark's JVM alone and returns the exit status of the Python driver, which
    lives on to report the failure (stderr in ``cwd/killed.stderr``)."""
    folder = lake / table
    before = parquet_files(folder)
    with open(cwd / "killed.stderr", "w") as log:
        proc = subprocess.Popen([str(BIN / "beha2vec"), "--lake", str(lake), *QUIET, *args], env=ENV,
                                cwd=cwd, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not parquet_files(folder) - before:
            assert proc.poll() is None, f"exited {proc.returncode} before writing {table}: " + (
                cwd / "killed.stderr").read_text()[-3000:]
            assert time.monotonic() < deadline, f"no new {table} files after {timeout} s"
            time.sleep(0.02)
        if jvm_only:
            java = [p for p, name in live_members(proc.pid).items() if name == "java"]
            assert len(java) == 1, f"expected one JVM in the process group, found {java}"
            os.kill(java[0], signal.SIGKILL)
            return proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while live_members(proc.pid):
            assert time.monotonic() < deadline, f"still running after SIGKILL: {live_members(proc.pid)}"
            time.sleep(0.1)
    return None


def first_week(data: Path) -> list[str]:
    return sorted(str(p) for p in data.glob("events_*.json.gz"))[:7]


@pytest.fixture(scope="module")
def ga4(tmp_path_factory) -> tuple[Path, SynthSummary]:
    """Two weeks of 300 users: about 16,000 events, whose events write takes seconds."""
    out = tmp_path_factory.mktemp("data") / "ga4"
    return out, synth("ga4", 300, DAYS, 3, 11, out)


@pytest.fixture(scope="module")
def base_lake(spark, ga4, tmp_path_factory) -> Path:
    """Events of the first week and their sessions, written in-process."""
    root = tmp_path_factory.mktemp("base") / "lake"
    ctx = context(spark, root)
    stages.ingest(ctx, "ga4", first_week(ga4[0]))
    stages.sessionize(ctx)
    return root


@pytest.fixture
def copied(base_lake, lake) -> Lake:
    """This test's copy of the module's lake, as the ``lake`` fixture."""
    shutil.copytree(base_lake, lake.root)
    return lake


def test_sigkill_during_ingest_keeps_the_previous_version_and_a_rerun_has_no_duplicates(
        ctx, copied, ga4, tmp_path):
    """The kill must land between the first parquet file and the commit; a kill after the commit
    proves nothing, so it is retried on more data, and the test fails if that is late too."""
    lake, root = copied, Path(copied.root)
    data, summary = ga4
    for attempt in range(2):
        if attempt:
            data = tmp_path / "more"
            summary = synth("ga4", MORE_USERS, DAYS, 3, 11, data)
            stages.ingest(ctx, "ga4", first_week(data))
        version = lake.version("events")
        before = fingerprint(lake.read("events"), "event_id")
        assert 0 < before[0] < summary.events

        existing = parquet_files(root / "events")
        started = time.monotonic()
        kill_during_write(root, "events", ["ingest", "--source", "ga4", str(data)], tmp_path)
        print(f"{summary.users} users: killed {time.monotonic() - started:.1f} s after the start")
        if lake.version("events") == version:
            break
        print(f"the kill came after the commit of events v{lake.version('events')}; more data")
    else:
        pytest.fail(f"both kills came after the commit, even with {MORE_USERS} users")

    leftovers = parquet_files(root / "events") - existing
    assert leftovers and not leftovers & active_files(lake, "events"), "the kill left no uncommitted files"
    assert fingerprint(lake.read("events"), "event_id") == before

    report = stages.ingest(ctx, "ga4", [str(data)])
    after = fingerprint(lake.read("events"), "event_id")
    assert after[0] == after[1] == summary.events == report["rows_out"]
    assert lake.version("events") == version + 1

    assert not lake.leftovers(older_than_hours=1), "a write of the last hour may still be running"
    found = {Path(f.path) for f in lake.leftovers(older_than_hours=0) if f.table == "events"}
    assert all(any(d in found for d in f.parents) for f in leftovers), (found, leftovers)
    proc = cli("--lake", str(root), *QUIET, "vacuum", "--older-than", "0", "--dry-run", cwd=tmp_path)
    assert re.search(r"^would remove [1-9]\d* leftovers", proc.stdout, re.M), proc.stdout + proc.stderr
    assert all(f.exists() for f in leftovers)
    proc = cli("--lake", str(root), *QUIET, "vacuum", "--older-than", "0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"^removed [1-9]\d* leftovers of failed writes", proc.stdout, re.M), proc.stdout
    assert not any(f.exists() for f in leftovers) and not lake.leftovers(older_than_hours=0)
    assert fingerprint(lake.read("events"), "event_id") == after
    previous = DeltaTable(lake.uri("events"), version=version).to_pyarrow_table(columns=["event_id"])
    assert previous.num_rows == before[0], "committed files of earlier versions stay"


def test_spark_dying_mid_ingest_is_reported_in_one_line_and_recorded_as_failed(copied, ga4, tmp_path):
    """Spark's JVM dies while the Python driver lives (what an OutOfMemoryError or the kernel's OOM
    killer does): the user sees the stage's error, not one of its clean-up, and ``runs`` gets the
    failed run through delta-rs, since Spark can no longer write it."""
    lake, root = copied, Path(copied.root)
    version = lake.version("events")
    before = set(DeltaTable(lake.uri("runs")).to_pandas()["run_id"])
    args = ["ingest", "--source", "ga4", str(ga4[0])]
    rc = kill_during_write(root, "events", args, tmp_path, jvm_only=True)
    stderr = (tmp_path / "killed.stderr").read_text()
    assert rc == 2, stderr[-3000:]
    line = error_line(stderr)
    assert re.match(rf"error: writing table 'events' at {root}/events failed: Spark's JVM is gone ",
                    line), line
    assert "unpersist" not in stderr and "beha2vec/" not in stderr, "no traceback of ours"
    runs = lake.read("runs").toPandas()
    new = runs[~runs["run_id"].isin(before)]
    assert list(new["stage"]) == ["ingest"] and list(new["status"]) == ["failed"], new
    assert "writing table 'events'" in json.loads(new["details"].iloc[0])["error"]
    assert new["finished_at"].iloc[0] >= new["started_at"].iloc[0]
    assert lake.version("events") == version


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


def _tables(lake: Lake) -> dict:
    return {t: (lake.version(t), fingerprint(lake.read(t), key))
            for t, key in (("events", "event_id"), ("sessions", "session_id"))}


@pytest.fixture(scope="module")
def read_only_run(spark, base_lake, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, dict, dict]:
    """``sessionize`` on a lake that a read-only bind mount makes unwritable (as root too, unlike
    chmod); the lake's root and its tables before and after."""
    if not _unshare_works():
        pytest.skip("needs unprivileged user namespaces (unshare -rm) for a read-only bind mount")
    root = tmp_path_factory.mktemp("ro") / "lake"
    shutil.copytree(base_lake, root)
    lake = Lake(spark, str(root))
    before = _tables(lake)
    wrap = ("unshare", "-rm", "sh", "-c",
            f'mount --bind "{root}" "{root}" && mount -o remount,bind,ro "{root}" && exec "$0" "$@"')
    proc = cli("--lake", str(root), *QUIET, "sessionize", cwd=root.parent, prefix=wrap)
    return proc, root, before, _tables(lake)


def test_read_only_lake_fails_in_one_line_and_keeps_every_version(read_only_run):
    proc, root, before, after = read_only_run
    assert proc.returncode == 2
    assert f"writing table 'sessions' at {root}/sessions failed" in error_line(proc.stderr)
    assert "Traceback" not in proc.stderr
    assert after == before


def test_read_only_lake_error_says_why(read_only_run):
    line = error_line(read_only_run[0].stderr)
    assert "An error occurred while calling" not in line
    assert re.search(r"read-only file system|mkdirs failed|permission denied", line, re.I), line


def test_lake_under_a_regular_file_fails_in_one_line(tmp_path):
    """Works everywhere, also without user namespaces: the lake's parent is a file (ENOTDIR)."""
    data = tmp_path / "ga4"
    synth("ga4", 5, 1, 1, 1, data)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the lake's parent folder should be")
    proc = cli("--lake", str(blocker / "lake"), *QUIET, "ingest", "--source", "ga4", str(data), cwd=tmp_path)
    assert proc.returncode == 2
    assert re.match(rf"error: writing table '\w+' at {blocker}/lake/\w+ failed", error_line(proc.stderr))
    assert "Traceback" not in proc.stderr


# in a user namespace: the lake on a 16 MiB tmpfs with 256 KiB left, the command, the lake copied out
DISK_FULL = """
mnt=$1 src=$2 out=$3
shift 3
mount -t tmpfs -o size=16m tmpfs "$mnt" || exit 90
cp -a "$src" "$mnt/lake"
dd if=/dev/zero of="$mnt/filler" bs=64k 2>/dev/null
truncate -s -256K "$mnt/filler"
"$@" > "$out/stdout" 2> "$out/stderr"
echo $? > "$out/rc"
rm "$mnt/filler"
cp -a "$mnt/lake" "$out/lake"
"""


@pytest.fixture(scope="module")
def disk_full_run(spark, base_lake, ga4, tmp_path_factory) -> dict:
    """``ingest`` of both weeks into a copy of the module's lake on a file system that fills up."""
    if not _unshare_works():
        pytest.skip("needs unprivileged user namespaces (unshare -rm) to mount a small tmpfs")
    work = tmp_path_factory.mktemp("full")
    mount, out = work / "mnt", work / "out"
    mount.mkdir()
    out.mkdir()
    command = [str(BIN / "beha2vec"), "--lake", str(mount / "lake"), *QUIET, "ingest", "--source", "ga4",
               str(ga4[0])]
    script = ["unshare", "-rm", "sh", "-c", DISK_FULL, "sh", str(mount), str(base_lake), str(out)]
    proc = subprocess.run([*script, *command], capture_output=True, text=True, env=ENV, cwd=work, timeout=600)
    assert proc.returncode == 0 and (out / "rc").exists(), proc.stderr[-3000:]
    before = _tables(Lake(spark, str(base_lake)))
    return {"mount": mount, "lake": out / "lake", "before": before, "rc": int((out / "rc").read_text()),
            "stderr": (out / "stderr").read_text()}


def test_a_full_disk_fails_in_one_line_and_keeps_every_version(spark, disk_full_run):
    run = disk_full_run
    assert run["rc"] == 2, run["stderr"][-3000:]
    line = error_line(run["stderr"])
    where = rf"error: writing table '\w+' at {run['mount']}/lake/\w+ failed: "
    assert re.match(where + ".*No space left on device", line), line
    assert "Traceback" not in run["stderr"]
    assert _tables(Lake(spark, str(run["lake"]))) == run["before"]


def test_after_a_full_disk_the_rerun_completes_and_vacuum_frees_the_space(spark, disk_full_run, ga4,
                                                                          tmp_path):
    root = tmp_path / "lake"
    shutil.copytree(disk_full_run["lake"], root)
    lake = Lake(spark, str(root))
    found = lake.leftovers(older_than_hours=0)
    assert any(f.table == "events" for f in found), found  # the failed write's folder
    report = stages.ingest(context(spark, root), "ga4", [str(ga4[0])])
    after = fingerprint(lake.read("events"), "event_id")
    assert after[0] == after[1] == ga4[1].events == report["rows_out"]
    lake.remove(lake.leftovers(older_than_hours=0))
    assert not any(Path(f.path).exists() for f in found)
    assert fingerprint(lake.read("events"), "event_id") == after


def _copy_head(src: Path, dst: Path, fraction: float = 1.0) -> None:
    data = src.read_bytes()
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data[: int(len(data) * fraction)])


def test_foreign_files_in_a_table_folder_change_no_result(copied, tmp_path):
    """Same-schema parquet copies would double rows for any reader that lists folders, and a torn
    parquet file would fail it; the lake reads only the files of the Delta log."""
    lake = copied
    version = lake.version("events")
    before = fingerprint(lake.read("events"), "event_id")
    folder = Path(lake.root) / "events"
    active = sorted(active_files(lake, "events"))
    _copy_head(active[0], folder / "copy.parquet")
    _copy_head(active[0], active[0].parent / "part-99999-stray.c000.snappy.parquet")
    _copy_head(active[-1], folder / "source=ga4" / "part-00000-hive.snappy.parquet")
    _copy_head(active[-1], folder / "source=ga4" / "torn.parquet", fraction=0.5)
    (folder / "source=ga4" / "notes.txt").write_text("written by hand")
    log = folder / "_delta_log"
    newest = sorted(log.glob("*.json"))[-1]
    killed_commit = log / f"_commit_{uuid.uuid4()}.json.tmp"
    _copy_head(newest, killed_commit, fraction=0.5)  # a killed delta-rs commit

    assert fingerprint(lake.read("events"), "event_id") == before
    assert sql_fingerprint(Path(lake.root), "events", "event_id", tmp_path) == before
    assert lake.version("events") == version
    assert {t.name: t.rows for t in lake.tables()}["events"] == before[0]

    found = lake.leftovers(older_than_hours=0)
    assert {Path(f.path) for f in found if f.table == "events"} == {killed_commit}, "and no foreign file"
    lake.remove(found)
    assert not killed_commit.exists() and (folder / "source=ga4" / "notes.txt").exists()
    assert fingerprint(lake.read("events"), "event_id") == before


@pytest.fixture(scope="module")
def torn_commit(spark, base_lake, tmp_path_factory) -> dict:
    """The events table with an empty, then a torn ``N+1.json``: what the readers saw."""
    root = tmp_path_factory.mktemp("torn") / "lake"
    shutil.copytree(base_lake, root)
    lake = Lake(spark, str(root))
    version = DeltaTable(lake.uri("events")).version()
    seen: dict = {"root": root, "version": version, "before": fingerprint(lake.read("events"), "event_id")}
    log = root / "events" / "_delta_log"
    last, future = log / f"{version:020d}.json", log / f"{version + 1:020d}.json"
    future.write_text("")
    seen["empty"] = (DeltaTable(lake.uri("events")).version(), fingerprint(lake.read("events"), "event_id"))
    try:
        seen["lake_version"] = lake.version("events")
    except Exception as exc:  # an empty commit has no history entry: the version must not need one
        seen["lake_version"] = exc
    future.write_text(last.read_text()[: last.stat().st_size // 2])
    try:
        lake.read("events")
    except Exception as exc:  # whatever delta-rs raises is checked by the tests
        seen["read_error"] = str(exc)
    seen["previous"] = DeltaTable(lake.uri("events"), version=version).to_pyarrow_table(
        columns=["event_id"]).column("event_id").to_pylist()
    seen["sql"] = cli("--lake", str(root), *QUIET, "sql", "SELECT count(*) FROM events", cwd=root.parent)
    seen["other_table"] = query(lake, "SELECT count(*) AS n FROM sessions").collect()[0]["n"]
    seen["tables"] = cli("--lake", str(root), *QUIET, "tables", cwd=root.parent)
    names, damaged = register_safe_views(lake, "salt")
    seen["ask_views"] = names, damaged
    seen["ask_other"] = run_query(spark, "SELECT count(*) AS n FROM sessions", set(names), 5, 60,
                                  damaged)[0]["n"][0]
    try:
        run_query(spark, "SELECT count(*) FROM events", set(names), 5, 60, damaged)
    except SqlError as exc:
        seen["ask_error"] = str(exc)
    seen["ask_context"] = context_message(lake, pd.DataFrame({"cluster": []}), None, 3)
    seen["sessions"] = DeltaTable(lake.uri("sessions")).to_pyarrow_dataset().count_rows()
    return seen


def test_torn_future_commit_is_refused_not_read_as_rows(torn_commit):
    """delta-rs commits by rename, so a torn ``N.json`` only comes from another writer or a broken
    disk; delta-rs then refuses the whole table rather than return other rows, and the version
    before stays readable by number. An empty ``N.json`` reads as a commit without actions."""
    version, before = torn_commit["version"], torn_commit["before"]
    assert torn_commit["empty"] == (version + 1, before)
    assert "Truncated record" in torn_commit["read_error"]
    proc = torn_commit["sql"]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "Truncated record" in error_line(proc.stderr)
    previous = torn_commit["previous"]
    assert len(previous) == len(set(previous)) == before[0]


def test_empty_future_commit_has_a_version(torn_commit):
    assert torn_commit["lake_version"] == torn_commit["version"] + 1


def test_torn_future_commit_error_names_the_table(torn_commit):
    line = error_line(torn_commit["sql"].stderr)
    assert f"{torn_commit['root']}/events" in line and "_delta_log" in line


def test_a_damaged_table_leaves_queries_of_the_others_working(torn_commit):
    assert torn_commit["other_table"] == torn_commit["sessions"] > 0


def test_a_damaged_table_is_listed_with_its_reason_beside_the_others(torn_commit):
    proc = torn_commit["tables"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    cells = [[c.strip() for c in line.split(" | ")] for line in proc.stdout.splitlines() if " | " in line]
    rows = {row[0]: row[1:] for row in cells[1:]}
    assert rows["sessions"][0] == str(torn_commit["sessions"])
    assert rows["events"][:3] == ["NULL", "NULL", "NULL"]
    problem = [line for line in proc.stdout.splitlines() if line.startswith("cannot read")]
    assert len(problem) == 1 and problem[0].startswith("cannot read events: ")
    assert "Truncated record" in problem[0]


def test_ask_queries_the_other_tables_and_names_the_damaged_one(torn_commit):
    names, damaged = torn_commit["ask_views"]
    assert "sessions" in names and "events" not in names and set(damaged) == {"events"}
    assert torn_commit["ask_other"] == torn_commit["sessions"]
    assert "Truncated record" in torn_commit["ask_error"] and "_delta_log" in torn_commit["ask_error"]
    context = torn_commit["ask_context"]
    assert "- sessions(" in context and "- events: cannot be read now (" in context
