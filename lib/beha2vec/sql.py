"""Read-only SQL over every lake table, and printing results for people and for programs."""

from __future__ import annotations

import io
import json
import re

import pandas as pd
from pyspark.sql import DataFrame

from beha2vec.lake import Lake

READ_ONLY = re.compile(r"^\s*(\(\s*)*(select|with|show|describe|desc|explain)\b", re.I)
# a query inside EXPLAIN or DESCRIBE QUERY is checked like any other: planning it reads file schemas
WRAPPED_QUERY = re.compile(r"^\s*(explain(?:\s+(?:extended|formatted|codegen|cost))?|desc(?:ribe)?\s+query)"
                           r"\s+(.*)$", re.I | re.S)
METADATA = re.compile(r"^\s*(show|describe|desc)\b", re.I)
FORMATS = ("table", "csv", "json")
NOT_FOUND = re.compile(r"TABLE_OR_VIEW_NOT_FOUND\].*?`([^`]+)`")


class SqlError(ValueError):
    """The statement is not a read-only query, or it failed."""


def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def readable_tables(lake: Lake) -> tuple[dict[str, DataFrame], dict[str, str]]:
    """Every table that can be read, by name, and why each other one cannot.

    One damaged table must not stop queries that do not touch it.
    """
    frames, damaged = {}, {}
    for name in lake.table_names():
        try:
            frames[name] = lake.read(name)
        except Exception as exc:  # any reader's error: it is reported when a query names the table
            damaged[name] = first_line(exc)
    return frames, damaged


def register_views(lake: Lake) -> tuple[list[str], dict[str, str]]:
    """Every readable table as a temporary view of its name; the others with why they are missing."""
    frames, damaged = readable_tables(lake)
    for name, df in frames.items():
        df.createOrReplaceTempView(name)
    return list(frames), damaged


def failure(exc: Exception, damaged: dict[str, str]) -> str:
    """A failed query's first line; for a query of a damaged table, why that table cannot be read."""
    first = first_line(exc)
    missing = NOT_FOUND.search(first)
    return damaged.get(missing[1], first) if missing else first


def query(lake: Lake, statement: str) -> DataFrame:
    """Run one read-only statement over the lake's tables.

    A query must pass :func:`beha2vec.ask.check_select` and runs as checked, since a SELECT could
    otherwise call Java methods (``reflect``) or read any file by its path; so must the query of
    EXPLAIN and DESCRIBE QUERY. SHOW and DESCRIBE of a table read no rows and run as given.
    """
    from beha2vec.ask import check_select  # ask imports this module

    text = statement.strip().rstrip(";")
    if not READ_ONLY.match(text) or ";" in text:
        raise SqlError("only one read-only statement (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN) is allowed")
    names, damaged = register_views(lake)
    known = set(names) | set(damaged)  # a damaged table is not unknown: its view is just missing
    wrapped = WRAPPED_QUERY.match(text)
    if wrapped:
        text = f"{wrapped.group(1)} {check_select(wrapped.group(2), known)}"
    elif not METADATA.match(text):
        text = check_select(text, known)
    try:
        return lake.spark.sql(text)
    except Exception as exc:
        raise SqlError(failure(exc, damaged)) from None


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "NULL"
    if isinstance(value, (list, dict)) or hasattr(value, "tolist"):
        return json.dumps(value.tolist() if hasattr(value, "tolist") else value, default=str)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _json_value(value):
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def format_table(frame: pd.DataFrame, max_width: int = 60) -> str:
    """An aligned text table: numbers right, text left, long cells cut."""
    cols = list(frame.columns)
    cells = [[_cell(v) for v in row] for row in frame.itertuples(index=False, name=None)]
    cells = [[c if len(c) <= max_width else c[: max_width - 1] + "…" for c in row] for row in cells]
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in cols]
    widths = [max([len(str(c))] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]

    def line(values: list[str]) -> str:
        aligned = zip(values, widths, numeric, strict=True)
        return " | ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in aligned)

    rule = "-+-".join("-" * w for w in widths)
    body = [line(r) for r in cells]
    footer = f"({len(cells)} row{'s' if len(cells) != 1 else ''})"
    return "\n".join([line([str(c) for c in cols]), rule, *body, footer])


def render(frame: pd.DataFrame, fmt: str) -> str:
    if fmt == "table":
        return format_table(frame)
    if fmt == "csv":
        out = io.StringIO()
        nested = lambda v: _cell(v) if isinstance(v, (list, dict)) or hasattr(v, "tolist") else v  # noqa: E731
        frame.map(nested).to_csv(out, index=False)
        return out.getvalue().rstrip("\n")
    if fmt == "json":
        records = frame.to_dict(orient="records")
        return json.dumps(records, default=_json_value, ensure_ascii=False)
    raise SqlError(f"--format must be one of {', '.join(FORMATS)}")
