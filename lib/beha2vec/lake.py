"""Table I/O by name: the only module that knows where tables live and how Delta is written.

Two routes (DESIGN.md, storage rule):
- ``native``: Spark's own ``format("delta")`` when the Delta classes are on the classpath; each
  table is also registered in the metastore as ``<database>.<table>`` (its data stays at the path).
- ``delta-rs``: Spark writes parquet part files in parallel into the table folder, then the
  ``deltalake`` library commits them as one Delta transaction after checking every file's schema.
  Reads go through the table's active file list, never through a folder listing, so files of
  failed writes or old versions are invisible.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from beha2vec.errors import brief
from beha2vec.tables import TABLES, TableSpec, spec

log = logging.getLogger(__name__)

ROUTES = ("auto", "native", "delta-rs")
# what this module's writes leave: a write folder (:meth:`Lake._write_delta_rs`) and a commit that
# delta-rs had not renamed yet; nothing else in a table folder is ever removed
WRITE_FOLDER = re.compile(r"w\d{8}T\d{6}-[0-9a-f]{8}")
COMMIT_TEMP = re.compile(r"_commit_[0-9a-f-]{36}\.json\.tmp")


class LakeError(RuntimeError):
    """A table could not be read or written; the message says which table and why."""


@dataclass(frozen=True)
class Written:
    """What one write committed: the new version and the number of rows it added."""

    version: int
    rows: int


@dataclass(frozen=True)
class Leftover:
    """Files of a write that no commit names (a killed or failed write): never read, only stored."""

    table: str
    path: str
    files: int
    bytes: int
    age_hours: float


@dataclass(frozen=True)
class TableInfo:
    """One table's state; a table that cannot be read has only its name and ``problem``."""

    name: str
    version: int | None
    rows: int | None
    files: int | None
    problem: str | None = None


def choose_route(requested: str, delta_on_classpath: bool) -> str:
    """Pick the storage route: native Delta when asked for or available, else delta-rs."""
    if requested not in ROUTES:
        raise LakeError(f"lake.route must be one of {', '.join(ROUTES)}, got '{requested}'")
    if requested == "native" and not delta_on_classpath:
        raise LakeError(
            "lake.route is 'native' but the Delta Lake classes are not on Spark's classpath; "
            "start Spark with the delta-spark package and its two SQL settings (docs/cluster.md) "
            "or set lake.route=auto"
        )
    if requested == "auto":
        return "native" if delta_on_classpath else "delta-rs"
    return requested


def delta_on_classpath(spark: SparkSession) -> bool:
    """True when Spark can write Delta itself: the classes load and the extension is set."""
    extensions = spark.conf.get("spark.sql.extensions", "") or ""
    if "DeltaSparkSessionExtension" not in extensions:
        return False
    try:
        spark._jvm.org.apache.spark.util.Utils.classForName(  # type: ignore[union-attr]
            "io.delta.tables.DeltaTable", True, False
        )
    except Exception:
        return False
    return True


def _resolve_root(root: str) -> str:
    return root if "://" in root else str(Path(root).expanduser().resolve())


def _type_key(t: pa.DataType) -> str:
    """Type identity for schema checks, ignoring list element names and nullability."""
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"list<{_type_key(t.value_type)}>"
    if pa.types.is_struct(t):
        return "struct<" + ",".join(f"{f.name}:{_type_key(f.type)}" for f in t) + ">"
    if pa.types.is_large_string(t):
        return "string"
    if pa.types.is_timestamp(t):
        return f"timestamp[{t.unit},{'utc' if t.tz else 'ntz'}]"
    return str(t)


def check_file_schema(file_schema: pa.Schema, expected: pa.Schema, where: str) -> None:
    """Refuse a commit whose file does not match the table: delta-rs would accept it silently."""
    got = {f.name: _type_key(f.type) for f in file_schema}
    want = {f.name: _type_key(f.type) for f in expected}
    if got != want:
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        changed = sorted(k for k in set(got) & set(want) if got[k] != want[k])
        parts = []
        if missing:
            parts.append(f"missing columns {missing}")
        if extra:
            parts.append(f"unexpected columns {extra}")
        if changed:
            parts.append(
                "type changes " + ", ".join(f"{k}: {got[k]} != {want[k]}" for k in changed)
            )
        raise LakeError(f"schema check failed for {where}: " + "; ".join(parts))


def conform(df: DataFrame, table: TableSpec) -> DataFrame:
    """Select the table's columns in order, casting where a type differs; fail on gaps."""
    have = dict(df.dtypes)
    missing = [f.name for f in table.schema if f.name not in have]
    extra = [c for c in df.columns if c not in {f.name for f in table.schema}]
    if missing or extra:
        raise LakeError(
            f"cannot write table '{table.name}': missing columns {missing}, "
            f"unexpected columns {extra}"
        )
    cols = []
    for f in table.schema:
        col = F.col(f"`{f.name}`")
        if have[f.name] != f.dataType.simpleString():
            col = col.cast(f.dataType)
        cols.append(col.alias(f.name))
    return df.select(cols)


def registration_sql(database: str, name: str, uri: str) -> list[str]:
    """Statements that make a table written at ``uri`` queryable as ``database.name`` anywhere.

    ``LOCATION`` keeps the data where the lake puts it; ``IF NOT EXISTS`` makes re-runs free (the
    metastore entry points at the path, so every new version is seen without re-registering).
    """
    if not database:
        return []
    for part, what in ((database, "lake.database"), (name, "table name")):
        if not part.replace("_", "").isalnum():
            raise LakeError(f"{what} '{part}' must be letters, digits and underscores")
    location = uri.replace("'", "\\'")
    return [f"CREATE DATABASE IF NOT EXISTS `{database}`",
            f"CREATE TABLE IF NOT EXISTS `{database}`.`{name}` USING DELTA LOCATION '{location}'"]


class Lake:
    """Tables by name under one root; see the module docstring for the two routes."""

    def __init__(self, spark: SparkSession, root: str, route: str = "auto",
                 database: str = "beha2vec") -> None:
        self.spark = spark
        self.database = database
        self.root = _resolve_root(root)
        self.route = choose_route(route, delta_on_classpath(spark))
        self._fs, self._fs_root = pafs.FileSystem.from_uri(
            self.root if "://" in self.root else Path(self.root).as_uri()
        )

    def uri(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def exists(self, name: str) -> bool:
        from deltalake import DeltaTable

        if self.route == "native":
            jvm = self.spark._jvm  # type: ignore[attr-defined]
            session = self.spark._jsparkSession  # type: ignore[attr-defined]
            return bool(jvm.io.delta.tables.DeltaTable.isDeltaTable(session, self.uri(name)))
        return DeltaTable.is_deltatable(self.uri(name))

    def read(self, name: str) -> DataFrame:
        """The table's current version as a DataFrame."""
        if not self.exists(name):
            raise LakeError(
                f"table '{name}' does not exist at {self.uri(name)}; run the stage that writes it"
            )
        if self.route == "native":
            return self.spark.read.format("delta").load(self.uri(name))
        return self._read_active_files(name)

    def write(
        self, df: DataFrame, name: str, mode: str = "overwrite", replace: dict[str, str] | None = None
    ) -> Written:
        """Write ``df`` as one new version of table ``name``, atomically.

        ``overwrite`` replaces the whole table, or with ``replace`` only the partitions whose
        columns equal the given values; ``append`` adds rows.
        """
        if mode not in ("overwrite", "append"):
            raise LakeError(f"write mode must be overwrite or append, got '{mode}'")
        table = spec(name)
        if replace and not set(replace) <= set(table.partition_by):
            raise LakeError(f"table '{name}' can only replace by its partition columns {table.partition_by}")
        df = conform(df, table)
        if self.route == "native":
            return self._write_native(df, table, mode, replace)
        return self._write_delta_rs(df, table, mode, replace)

    def append_rows(self, name: str, rows: list[tuple]) -> None:
        """Append a few rows through delta-rs alone: the record of a run whose failure stopped Spark
        (tables of the native route are Delta tables too; the metastore is not touched)."""
        from deltalake import write_deltalake

        table = spec(name)
        schema = to_arrow_schema(table.schema, timezone="UTC")
        data = pa.Table.from_pylist([dict(zip(schema.names, r, strict=True)) for r in rows], schema=schema)
        try:
            write_deltalake(self.uri(name), data, mode="append",
                            partition_by=list(table.partition_by) or None)
        except Exception as exc:
            raise LakeError(f"appending to table '{name}' at {self.uri(name)} failed: {brief(exc)}") from exc

    def _write_native(
        self, df: DataFrame, table: TableSpec, mode: str, replace: dict[str, str] | None
    ) -> Written:
        writer = df.write.format("delta").mode(mode)
        if table.partition_by:
            writer = writer.partitionBy(*table.partition_by)
        if replace:
            condition = " AND ".join(f"`{k}` = '{v}'" for k, v in replace.items())
            writer = writer.option("replaceWhere", condition)
        writer.save(self.uri(table.name))
        for statement in registration_sql(self.database, table.name, self.uri(table.name)):
            self.spark.sql(statement)
        last = self.history(table.name, limit=1)[0]
        metrics = last.get("operationMetrics") or {}
        return Written(int(last["version"]), int(metrics.get("numOutputRows", 0)))

    def version(self, name: str) -> int:
        if self.route == "native":
            return self.history(name, limit=1)[0]["version"]
        return self._delta_table(name).version()  # also for a commit without commitInfo

    def history(self, name: str, limit: int | None = None) -> list[dict]:
        """Commits newest first: version, timestamp, operation and its parameters."""
        if self.route == "native":
            rows = self.spark.sql(f"DESCRIBE HISTORY delta.`{self.uri(name)}`").collect()
            out = [r.asDict() for r in rows]
            return out[:limit] if limit else out
        return self._delta_table(name).history(limit)

    def _delta_table(self, name: str):
        """The delta-rs table, or a LakeError naming it when its log cannot be read."""
        from deltalake import DeltaTable
        from deltalake.exceptions import DeltaError

        try:
            return DeltaTable(self.uri(name))
        except DeltaError as exc:
            raise LakeError(f"table '{name}' at {self.uri(name)} cannot be read: {brief(exc)}; a commit "
                            f"in {self.uri(name)}/_delta_log is damaged (earlier versions stay readable "
                            "by number)") from exc

    def tables(self) -> list[TableInfo]:
        """Every Delta table under the root with its version, row count and file count; a damaged
        table is listed with the reason instead, so one bad table hides none of the others."""
        infos = []
        for name in self.table_names():
            try:
                infos.append(self._info(name))
            except Exception as exc:  # any reader's error: reported in the listing, not raised
                infos.append(TableInfo(name, None, None, None, problem=brief(exc)))
        return infos

    def table_names(self) -> list[str]:
        """Every Delta table under the root, the known ones first in pipeline order."""
        base = self._fs_root
        try:
            entries = self._fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        except OSError as exc:
            raise LakeError(f"cannot list lake root {self.root}: {exc}") from exc
        names = []
        for entry in entries:
            if entry.type == pafs.FileType.Directory:
                log_dir = self._fs.get_file_info(f"{entry.path}/_delta_log")
                if log_dir.type == pafs.FileType.Directory:
                    names.append(entry.base_name)
        known = [n for n in TABLES if n in names]
        return known + sorted(n for n in names if n not in TABLES)

    def _info(self, name: str) -> TableInfo:
        if self.route == "native":
            df = self.read(name)
            return TableInfo(name, self.version(name), df.count(), len(df.inputFiles()))
        dt = self._delta_table(name)
        actions = pa.table(dt.get_add_actions(flatten=True))
        rows = None
        if "num_records" in actions.column_names and actions.num_rows:
            counts = actions.column("num_records").to_pylist()
            rows = None if any(c is None for c in counts) else int(sum(counts))
        elif actions.num_rows == 0:
            rows = 0
        return TableInfo(name, dt.version(), rows, actions.num_rows)

    def _read_active_files(self, name: str) -> DataFrame:
        table = TABLES.get(name)
        dt = self._delta_table(name)
        schema = table.schema if table else _spark_schema_of(dt)
        partition_by = list(dt.metadata().partition_columns)
        file_schema = T.StructType([f for f in schema if f.name not in partition_by])
        actions = pa.table(dt.get_add_actions(flatten=True)).to_pylist()
        if not actions:
            return self.spark.createDataFrame([], schema)
        base = self.uri(name)
        groups: dict[tuple, list[str]] = {}
        for a in actions:
            key = tuple(a.get(f"partition.{c}") for c in partition_by)
            groups.setdefault(key, []).append(f"{base}/{unquote(a['path'])}")
        frames = []
        for key, paths in groups.items():
            part = self.spark.read.schema(file_schema).parquet(*paths)
            for col, value in zip(partition_by, key, strict=True):
                part = part.withColumn(col, F.lit(value).cast(schema[col].dataType))
            frames.append(part.select([f.name for f in schema]))
        out = frames[0]
        for frame in frames[1:]:
            out = out.unionByName(frame)
        return out

    def _write_delta_rs(
        self, df: DataFrame, table: TableSpec, mode: str, replace: dict[str, str] | None
    ) -> Written:
        from deltalake import DeltaTable, Schema
        from deltalake.transaction import AddAction, create_table_with_add_actions

        uri = self.uri(table.name)
        write_id = f"w{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        writer = df.write.mode("errorifexists")
        if table.partition_by:
            writer = writer.partitionBy(*table.partition_by)
        try:
            writer.parquet(f"{uri}/{write_id}")
        except Exception as exc:
            raise LakeError(f"writing table '{table.name}' at {uri} failed: {brief(exc)}") from exc

        arrow_schema = to_arrow_schema(table.schema, timezone="UTC")
        file_schema = pa.schema([f for f in arrow_schema if f.name not in table.partition_by])
        actions = []
        table_path = self._fs_path(uri)
        for info in self._list_parquet(f"{table_path}/{write_id}"):
            rel = info.path[len(table_path) + 1:]
            meta = pq.read_metadata(info.path, filesystem=self._fs)
            check_file_schema(meta.schema.to_arrow_schema(), file_schema, f"{table.name}/{rel}")
            actions.append(
                AddAction(
                    path=rel,
                    size=info.size,
                    partition_values=_partition_values(rel, table.partition_by),
                    modification_time=int(info.mtime_ns // 1_000_000),
                    data_change=True,
                    stats=json.dumps({"numRecords": meta.num_rows}),
                )
            )
        delta_schema = Schema.from_arrow(arrow_schema)
        partition_by = list(table.partition_by) or None
        try:
            existing = DeltaTable(uri) if DeltaTable.is_deltatable(uri) else None
            if existing is not None and _same_schema(existing, arrow_schema):
                filters = [(k, "=", v) for k, v in replace.items()] if replace else None
                existing.create_write_transaction(
                    actions, mode=mode, schema=delta_schema, partition_by=partition_by,
                    partition_filters=filters if mode == "overwrite" else None,
                )
            elif existing is not None and (mode == "append" or replace):
                # a whole-table overwrite here would silently drop the other partitions
                how = "added to" if mode == "append" else "replaced in"
                raise LakeError(f"table '{table.name}' at {uri} has another schema (written by another "
                                f"version of beha2vec?); rows cannot be {how} part of it: overwrite it "
                                "whole first, or remove its folder and run its stage again")
            else:
                create_table_with_add_actions(
                    uri, delta_schema, actions, mode="overwrite", partition_by=partition_by,
                )
        except LakeError:
            raise
        except Exception as exc:
            raise LakeError(f"committing table '{table.name}' at {uri} failed: {brief(exc)}") from exc
        version = DeltaTable(uri).version()
        rows = sum(json.loads(a.stats)["numRecords"] for a in actions)
        log.info("wrote %s version %d (%d rows, %d files)", table.name, version, rows, len(actions))
        return Written(version, rows)

    def leftovers(self, older_than_hours: float, now: float | None = None) -> list[Leftover]:
        """Write folders and commit temp files that no commit of their table names and that nothing
        has touched for ``older_than_hours`` (a younger one may belong to a write still running)."""
        if self.route == "native":
            raise LakeError("on the native Delta route uncommitted files are removed by Delta's own "
                            "VACUUM (see docs/reliability.md)")
        now = time.time() if now is None else now
        found = []
        for name in self.table_names():
            table = self._fs_path(self.uri(name))
            named = self._logged_folders(name)
            entries = self._fs.get_file_info(pafs.FileSelector(table, allow_not_found=True))
            candidates = [e for e in entries if e.type == pafs.FileType.Directory
                          and WRITE_FOLDER.fullmatch(e.base_name) and e.base_name not in named]
            log_entries = self._fs.get_file_info(pafs.FileSelector(f"{table}/_delta_log"))
            candidates += [e for e in log_entries if COMMIT_TEMP.fullmatch(e.base_name)]
            for entry in candidates:
                files = [entry] if entry.type == pafs.FileType.File else [
                    f for f in self._fs.get_file_info(pafs.FileSelector(entry.path, recursive=True))
                    if f.type == pafs.FileType.File]
                newest = max([entry.mtime_ns, *(f.mtime_ns for f in files)]) / 1e9
                age = (now - newest) / 3600
                if age >= older_than_hours:
                    found.append(Leftover(name, entry.path, len(files), sum(f.size for f in files),
                                          round(age, 2)))
        return found

    def remove(self, leftovers: list[Leftover]) -> None:
        """Delete what :meth:`leftovers` found."""
        for item in leftovers:
            if self._fs.get_file_info(item.path).type == pafs.FileType.Directory:
                self._fs.delete_dir(item.path)
            else:
                self._fs.delete_file(item.path)
            log.info("removed %s (%d files, %d bytes) of table %s", item.path, item.files, item.bytes,
                     item.table)

    def _logged_folders(self, name: str) -> set[str]:
        """The first path segment of every file that a commit or checkpoint of the table names.

        A log that cannot be parsed stops the search: then no folder is known to be unnamed.
        """
        log_dir = f"{self._fs_path(self.uri(name))}/_delta_log"
        paths: list[str] = []
        try:
            for info in self._fs.get_file_info(pafs.FileSelector(log_dir)):
                if re.fullmatch(r"\d{20}\.json", info.base_name):
                    with self._fs.open_input_stream(info.path) as stream:
                        actions = [json.loads(line) for line in stream.read().decode().splitlines()
                                   if line.strip()]
                    paths += [a[k]["path"] for a in actions for k in ("add", "remove") if k in a]
                elif ".checkpoint" in info.base_name and info.base_name.endswith(".parquet"):
                    actions = pq.read_table(info.path, filesystem=self._fs, columns=["add", "remove"])
                    paths += [a["path"] for k in ("add", "remove")
                              for a in actions.column(k).to_pylist() if a]
        except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
            raise LakeError(f"the log of table '{name}' at {self.uri(name)} cannot be read, so no file "
                            f"of it is removed: {brief(exc)}") from exc
        return {unquote(p).split("/")[0] for p in paths}

    def _fs_path(self, uri: str) -> str:
        return uri if "://" not in uri else pafs.FileSystem.from_uri(uri)[1]

    def _list_parquet(self, folder: str) -> list[pafs.FileInfo]:
        selector = pafs.FileSelector(folder, recursive=True, allow_not_found=True)
        found = [
            f for f in self._fs.get_file_info(selector)
            if f.type == pafs.FileType.File and f.base_name.endswith(".parquet")
            and not f.base_name.startswith((".", "_"))
        ]
        return sorted(found, key=lambda f: f.path)


def _same_schema(dt, arrow_schema: pa.Schema) -> bool:
    current = pa.schema(dt.schema().to_arrow())
    return [(f.name, _type_key(f.type)) for f in current] == [
        (f.name, _type_key(f.type)) for f in arrow_schema
    ]


def _partition_values(rel_path: str, partition_by: tuple[str, ...]) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    for segment in rel_path.split("/")[:-1]:
        key, sep, value = segment.partition("=")
        if sep and key in partition_by:
            values[key] = None if value == "__HIVE_DEFAULT_PARTITION__" else unquote(value)
    return values


def _spark_schema_of(dt) -> T.StructType:
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(pa.schema(dt.schema().to_arrow()))
