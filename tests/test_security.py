"""Security properties: no API key in any output, read-only SQL, redaction that holds for any input.

The key tests run the stages that hold a key against the local fake server (successes, retries, a
server that keeps failing, a 401 that echoes the key) and then scan everything a run leaves behind.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import secrets
import subprocess
import sys
import traceback
from pathlib import Path
from urllib.parse import quote

import pyarrow.parquet as pq
import pytest
from fake_openai import FakeOpenAI
from hypothesis import given, settings
from hypothesis import strategies as st

from beha2vec import stages
from beha2vec.ask import register_safe_views, run_ask, run_query
from beha2vec.config import load_config
from beha2vec.context import Context
from beha2vec.lake import Lake
from beha2vec.redact import redact
from beha2vec.runs import recorded
from beha2vec.sql import SqlError, query
from beha2vec.tables import USER_CLUSTERS

from conftest import ROOT

KEY = "sk-test-" + secrets.token_hex(16)
KEY_ENV = "B2V_SECURITY_TEST_KEY"
MODEL = "openai:text-embedding-3-small"
PROPERTY = settings(max_examples=300, deadline=None, database=None)

# --- the API key -------------------------------------------------------------------------------


def needles(key: str) -> list[bytes]:
    """The key, and what any base64 (standard or URL-safe) of a text holding it must contain.

    Base64 works in 3-byte groups, so the key's own characters come out differently for each of
    the three offsets it may start at; the middle of each encoding is shared by every text that
    holds the key at that offset.
    """
    found = [key.encode()]
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + key.encode())[4:-4]
        found += [encoded, encoded.replace(b"+", b"-").replace(b"/", b"_")]
    return found


def leaks(places: dict[str, str | bytes], key: str = KEY) -> list[str]:
    """The names of the places that hold the key or its base64."""
    wanted = needles(key)
    return [name for name, data in places.items()
            if any(n in (data if isinstance(data, bytes) else data.encode()) for n in wanted)]


def lake_places(lake: Lake) -> dict[str, str | bytes]:
    """Every row of every table read back through the lake, and every file under its root:
    parquet decoded (its pages may be compressed), anything else as raw bytes."""
    places: dict[str, str | bytes] = {}
    for table in lake.tables():
        places[f"table {table.name}"] = "\n".join(str(row) for row in lake.read(table.name).collect())
    for path in sorted(Path(lake.root).rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if path.suffix == ".parquet":
                data += str(pq.read_table(path).to_pylist()).encode()
            places[f"file {path.relative_to(lake.root)}"] = data
    return places


def _ctx(spark, root: Path, *overrides: str) -> Context:
    config = load_config(overrides=["sessionize.unit=path", "profile.min_support_users=1",
                                    "interpret.sample_tokens=300", "interpret.seeds=[42]", *overrides],
                         lake_root=str(root))
    ctx = Context(config)
    ctx.__dict__["spark"] = spark
    return ctx


def _llm(spark, root: Path, server: FakeOpenAI, *more: str) -> Context:
    """Both API users (the embedder and the LLM) pointed at the fake server, the key in ``KEY_ENV``."""
    return _ctx(spark, root, f"llm.base_url={server.base_url}", f"llm.api_key_env={KEY_ENV}",
                "llm.model=gpt-4o-mini", "llm.tokenizer=minilm", "llm.backoff_base_s=0.01",
                "llm.backoff_max_s=0.1", "llm.timeout_s=2", f"embed.openai.base_url={server.base_url}",
                f"embed.openai.api_key_env={KEY_ENV}", "embed.openai.tokenizer=minilm",
                "embed.openai.backoff_base_s=0.01", "embed.openai.backoff_max_s=0.1",
                "embed.openai.max_retries=2", *more)


def _tracking_csv(path: Path) -> None:
    """Three groups of three users, each group on its own pages."""
    lines = ["panelist_id,wave,timestamp,url,active_seconds,device"]
    for group, pages in enumerate((["/video/live", "/video/replay"], ["/news/world", "/news/rates"],
                                   ["/shop/cart", "/shop/deals"])):
        for u in range(3):
            for day in range(1, 4):
                for v, page in enumerate(pages):
                    at = f"2024-03-0{day}T{(8 + 6 * group + u) % 24:02d}:{10 * v:02d}:00"
                    lines.append(f"panelist_{group}{u},1,{at},https://site.org{page}?ref=mail,60,desktop")
    path.write_text("\n".join(lines) + "\n")


def _lake_with_clusters(spark, root: Path) -> None:
    """Sessions, a selected clustering by group and its profiles: what interpret and ask need."""
    csv = root.parent / "tracking.csv"
    _tracking_csv(csv)
    ctx = _ctx(spark, root)
    stages.ingest(ctx, "webtracking", [str(csv)])
    stages.sessionize(ctx)
    rows = [tuple({"user_id": f"panelist_{g}{u}", "model": "encoder", "algorithm": "kmeans", "k": 3,
                   "seed": 42, "cluster": g, "distance": 0.1, "is_small": False, "selected": True}[f]
                  for f in USER_CLUSTERS.fieldNames())
            for g in range(3) for u in range(3)]
    ctx.lake.write(spark.createDataFrame(rows, USER_CLUSTERS), "user_clusters")
    stages.profile(ctx)


def _tool_call(query_text: str) -> dict:
    return {"content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
        "name": "run_sql", "arguments": json.dumps({"query": query_text})}}]}


def _failure(run, *args, **kwargs) -> str:
    """The whole traceback of the exception ``run`` must raise."""
    with pytest.raises(Exception) as err:
        run(*args, **kwargs)
    return "".join(traceback.format_exception(err.value))


def _cli_embed(root: Path, server: FakeOpenAI) -> subprocess.CompletedProcess:
    """``beha2vec -v embed`` with the openai client's own debug log on, in a fresh process: its Spark
    workers' output comes back too."""
    env = {**os.environ, KEY_ENV: KEY, "OPENAI_LOG": "debug", "PYSPARK_PYTHON": sys.executable}
    args = ["-v", "--lake", str(root), "--set", f"embed.openai.base_url={server.base_url}",
            "--set", f"embed.openai.api_key_env={KEY_ENV}", "--set", "embed.openai.tokenizer=minilm",
            "--set", "embed.openai.dimensions=4", "--set", "embed.openai.max_retries=0",
            "embed", "--model", MODEL]
    return subprocess.run([str(Path(sys.executable).parent / "beha2vec"), *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)


def test_the_api_key_is_in_no_table_file_log_report_or_error(spark, tmp_path, monkeypatch, caplog, capfd):
    """Every stage that holds the key, against a server that answers, retries, keeps failing and
    rejects the key (echoing it back); then everything the runs left behind is scanned."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="py4j")  # its debug log is every JVM call: minutes of text
    monkeypatch.setenv(KEY_ENV, KEY)
    root = tmp_path / "lake"
    _lake_with_clusters(spark, root)
    errors: dict[str, str] = {}
    answers: list[str] = []
    with FakeOpenAI(api_key=KEY, retry_after_s=0.05).serving() as server:
        ctx = _llm(spark, root, server)
        server.fail_next("429", "500")
        stages.embed(ctx, [MODEL])
        server.fail_next("malformed")
        stages.interpret(ctx)
        stages.compare(ctx)

        server.fail_next(*["500"] * 3)  # every attempt of the first request: the stage fails
        errors["interpret 500"] = _failure(stages.interpret, _llm(
            spark, root, server, "interpret.seeds=[43]", "llm.max_retries=2", "llm.concurrency=1"))

        server.api_key = "sk-test-the-server-wants-another-key"  # 401 with our key in its message
        errors["embed 401"] = _failure(stages.embed, _llm(spark, root, server, "embed.openai.dimensions=8"),
                                       [MODEL])
        errors["compare 401"] = _failure(stages.compare, _llm(spark, root, server, "llm.temperature=0.5"))
        errors["ask 401"] = _failure(run_ask, ctx, "How many users?", write=answers.append)
        cli = _cli_embed(root, server)

        server.api_key = KEY
        server.reply_next(_tool_call("SELECT stage, status, details FROM runs"),
                          {"content": "Some runs failed (runs.status)."})
        run_ask(ctx, "Which runs failed, and why?", write=answers.append)
        stages.report(ctx)
        sent = json.dumps([[r.path, r.headers, r.body] for r in server.requests])

    assert cli.returncode != 0 and "HTTP 401" in cli.stderr and "<redacted>" in cli.stderr, cli.stderr[-2000:]
    assert all("<redacted>" in errors[k] for k in ("embed 401", "compare 401", "ask 401")), errors
    assert "HTTP 500" in errors["interpret 500"]
    runs = ctx.lake.read("runs").toPandas()
    failed = runs[runs["status"] == "failed"]
    assert sorted(failed["stage"]) == ["compare", "embed", "embed", "interpret"], runs[["stage", "status"]]
    assert failed["details"].str.contains("HTTP").all()
    assert answers == ["Some runs failed (runs.status)."]
    assert '"tool"' in sent and "HTTP 401" in sent, "the failed runs' details were sent to the model"
    captured = capfd.readouterr()
    places = {**lake_places(ctx.lake), "stdout": captured.out, "stderr": captured.err, "log": caplog.text,
              "log records": "\n".join(str(r.args) for r in caplog.records),
              "cli stdout": cli.stdout, "cli stderr": cli.stderr, "requests (less Authorization)": sent,
              **{f"error {k}": v for k, v in errors.items()}}
    assert "file report/index.html" in places and "table embedding_cache" in places
    assert not leaks(places), f"the key is in {leaks(places)}"


def test_the_scan_finds_a_planted_key(ctx, tmp_path):
    """The scanner is not blind: a key in a row, a file, a parquet page or base64 is found."""
    lake = ctx.lake
    with recorded(lake, ctx.config, "plant") as run:
        run.details["error"] = f"HTTP 401: Incorrect API key provided: {KEY}"
    (Path(lake.root) / "notes.txt").write_bytes(b"auth " + base64.b64encode(f"user:{KEY}".encode()))
    places = lake_places(lake)
    parquet = {f"file {p.relative_to(lake.root)}" for p in Path(lake.root).rglob("*.parquet")}
    found = set(leaks(places))
    assert {"table runs", "file notes.txt"} <= found and found & parquet and found <= {
        "table runs", "file notes.txt", *parquet}
    for prefix in ("", "x", "xy"):
        assert leaks({"b64": base64.urlsafe_b64encode(f"{prefix}{KEY}!".encode())}) == ["b64"]
    assert leaks({"other": KEY[:-1]}) == []


# --- read-only SQL -----------------------------------------------------------------------------

PROBE = "beha2vec.security.probe"
WRITES = [
    "INSERT OVERWRITE TABLE runs SELECT * FROM runs",
    "INSERT OVERWRITE DIRECTORY '{out}' USING parquet SELECT * FROM runs",
    "WITH x AS (SELECT * FROM runs) INSERT INTO runs SELECT * FROM x",
    "UPDATE runs SET status = 'ok'",
    "DELETE FROM runs WHERE true",
    "MERGE INTO runs t USING runs s ON t.run_id = s.run_id WHEN MATCHED THEN DELETE",
    "DROP VIEW runs",
    "CREATE TABLE probe AS SELECT * FROM runs",
    "CREATE OR REPLACE TEMP VIEW runs AS SELECT 1 AS a",
    "ALTER TABLE runs ADD COLUMNS (probe INT)",
    "TRUNCATE TABLE runs",
    "CACHE TABLE runs",
    "UNCACHE TABLE runs",
    f"SET {PROBE}=1",
    "RESET",
    "ADD JAR /tmp/probe.jar",
    "REFRESH TABLE runs",
    "EXECUTE IMMEDIATE 'DROP VIEW runs'",
    "SELECT 1; DROP VIEW runs",
    "SELECT 1 /* ; */ ; DROP VIEW runs",
    "SELECT 1 -- a comment\n; DROP VIEW runs",
    "SELECT stage FROM runs /* hides the rest */; INSERT INTO runs SELECT * FROM runs",
    "SELECT 1 -- a comment\nDROP VIEW runs",
    f"SELECT reflect('java.lang.System', 'setProperty', '{PROBE}', '1')",
    f"SELECT ReFlEcT('java.lang.System', 'setProperty', '{PROBE}', '1')",
    f"SELECT try_reflect('java.lang.System', 'setProperty', '{PROBE}', '1')",
    f"SELECT stage FROM runs WHERE stage = java_method('java.lang.System', 'setProperty', '{PROBE}', '1')",
    f"WITH x AS (SELECT java_method('java.lang.System', 'setProperty', '{PROBE}', '1') AS v) SELECT * FROM x",
    f"SELECT IDENTIFIER('reflect')('java.lang.System', 'setProperty', '{PROBE}', '1')",
    "SELECT * FROM parquet.`{lake}/runs`",
    "SELECT * FROM delta.`{lake}/runs`",
    "SELECT * FROM text.`/etc/hostname`",
    "SELECT * FROM csv.`/etc/passwd`",
    "SELECT * FROM binaryFile.`/etc/hostname`",
    "SELECT * FROM runs r JOIN text.`/etc/hostname` h ON true",
    "SELECT (SELECT max(value) FROM text.`/etc/hostname`) AS v",
    "SELECT * FROM IDENTIFIER('text.`/etc/hostname`')",
    "SELECT * FROM read_files('/etc/hostname')",
    "SELECT input_file_name() FROM runs",
    "EXPLAIN SELECT * FROM csv.`/etc/passwd`",
    "EXPLAIN EXTENDED SELECT reflect('java.lang.System', 'getProperty', 'user.home')",
    "DESCRIBE QUERY SELECT * FROM text.`/etc/hostname`",
]
# what our checks say; a Spark error instead would mean the statement reached Spark
REFUSED = ("read-only statement|only SELECT|exactly one statement|by bare name|not allowed|does not parse|"
           "unknown table")


@pytest.fixture(scope="module")
def sql_lake(spark, tmp_path_factory) -> Lake:
    """A lake of three small tables, shared by the statements (none may change it)."""
    ctx = _ctx(spark, tmp_path_factory.mktemp("sql") / "lake")
    for stage in ("ingest", "sessionize"):
        with recorded(ctx.lake, ctx.config, stage) as run:
            run.details["note"] = stage
    rows = [tuple({"user_id": f"u{i}", "model": "m", "algorithm": "kmeans", "k": 2, "seed": 1,
                   "cluster": i % 2, "distance": 0.5, "is_small": False, "selected": True}[f]
                  for f in USER_CLUSTERS.fieldNames())
            for i in range(4)]
    ctx.lake.write(spark.createDataFrame(rows, USER_CLUSTERS), "user_clusters")
    register_safe_views(ctx.lake, "salt")  # the views ask's queries run over
    assert all(t.rows for t in ctx.lake.tables()), "row counts known from the Delta log"
    return ctx.lake


def _state(lake: Lake) -> dict:
    """Each table's Delta version and row count, and what a statement could change in the session."""
    spark = lake.spark
    jvm = spark._jvm  # type: ignore[attr-defined]
    return {"tables": {t.name: (t.version, t.rows) for t in lake.tables()},
            "conf": spark.conf.get(PROBE, None), "property": jvm.java.lang.System.getProperty(PROBE),
            "views": sorted(t.name for t in spark.catalog.listTables()),
            "cached": [spark.catalog.isCached(n) for n in ("runs", "user_clusters")],
            "jars": str(spark.sparkContext._jsc.sc().listJars())}  # type: ignore[attr-defined]


@pytest.mark.parametrize("statement", WRITES)
def test_sql_and_ask_refuse_statements_that_write_or_reach_outside(sql_lake, tmp_path, statement):
    statement = statement.format(out=tmp_path / "out", lake=sql_lake.root)
    before = _state(sql_lake)
    with pytest.raises(SqlError, match=REFUSED):
        run_query(sql_lake.spark, statement, {"runs", "user_clusters"}, 5, 60)
    with pytest.raises(SqlError, match=REFUSED):
        query(sql_lake, statement)
    assert _state(sql_lake) == before
    assert not (tmp_path / "out").exists()


def test_sql_still_answers_reads(sql_lake):
    """The checks refuse what they must, not everything: queries and metadata statements run."""
    joined = query(sql_lake, "WITH c AS (SELECT cluster, count(*) AS n FROM user_clusters GROUP BY 1) "
                             "SELECT r.stage, c.n FROM runs r CROSS JOIN c ORDER BY 1, 2;").collect()
    assert [tuple(r) for r in joined] == [("ingest", 2), ("ingest", 2), ("sessionize", 2), ("sessionize", 2)]
    assert {r["tableName"] for r in query(sql_lake, "SHOW TABLES").collect()} >= {"runs", "user_clusters"}
    assert "stage" in {r["col_name"] for r in query(sql_lake, "DESCRIBE runs").collect()}
    assert "runs" in query(sql_lake, "EXPLAIN SELECT count(*) FROM runs").first()[0].lower()
    described = query(sql_lake, "DESCRIBE QUERY SELECT stage FROM runs").collect()
    assert {r["col_name"] for r in described} == {"stage"}
    frame, more = run_query(sql_lake.spark, "SELECT user_id FROM user_clusters", {"user_clusters"}, 3, 60)
    assert len(frame) == 3 and more


# --- redaction ---------------------------------------------------------------------------------

LOWER = "abcdefghijklmnopqrstuvwxyz"
WORD = st.text(LOWER, min_size=1, max_size=8)
SECRET = "QSECRET"  # upper case: never produced by the generators below outside a secret
QUERY_CHARS = LOWER + "0123456789=&/.:_-"


def _encode(text: str, times: int) -> str:
    """``text`` percent-encoded ``times`` times, every reserved character included."""
    for _ in range(times):
        text = quote(text, safe="")
    return text


@st.composite
def urls(draw) -> tuple[str, str]:
    """A URL whose query string or fragment holds a secret, and that secret."""
    host = ".".join(draw(st.lists(WORD, min_size=2, max_size=3)))
    path = "".join("/" + w for w in draw(st.lists(WORD, max_size=3)))
    secret = SECRET + draw(st.text(QUERY_CHARS, max_size=12))
    around = st.text(QUERY_CHARS + "%@", max_size=10)
    space = draw(st.sampled_from(["", "+", "%20", "%2520"]))  # an encoded space, as in ?q=two%20words
    value = f"{draw(around)}{space}{secret}"
    query = f"?{draw(WORD)}={value}{draw(around)}"
    tail = draw(st.sampled_from([query, "#" + value, query + "#" + draw(WORD)]))
    tail = draw(st.sampled_from([tail, _encode(tail, 1), _encode(tail, 2)]))
    return f"https://{host}{path}{tail}", secret


@st.composite
def emails(draw) -> str:
    """``name@host``: the host with or without dots (``root@localhost``)."""
    local = ".".join(draw(st.lists(st.text(LOWER + "0123456789_+-", min_size=1, max_size=8), min_size=1,
                                   max_size=2)))
    domain = ".".join(draw(st.lists(st.text(LOWER + "0123456789-", min_size=1, max_size=8), min_size=1,
                                    max_size=3)))
    return f"{local}@{domain}"


def _place(draw, piece: str) -> str:
    """``piece`` in a path or in a title, among other words."""
    words = draw(st.lists(WORD, max_size=3))
    return draw(st.sampled_from([
        f"Visits: https://site.org/account/{piece}/orders (12s)",
        f"{' '.join(words)} {piece} {' '.join(words)}",
        f"/u/{piece}",
        f"Title: {piece.upper()}, page {draw(WORD)}",
    ]))


@given(st.data(), urls())
@PROPERTY
def test_no_query_string_or_fragment_survives(data, generated):
    url, secret = generated
    text = data.draw(st.sampled_from([f"Visits: {url} (10s) -> /next (2s)", url, f"{url} {url}"]))
    out = redact(text)
    assert SECRET not in out.upper(), out
    assert not re.search(r"\S[?#]", out), out
    assert redact(out) == out


@given(st.data(), emails())
@PROPERTY
def test_no_email_survives_in_paths_and_titles(data, address):
    text = _place(data.draw, data.draw(st.sampled_from([address, _encode(address, 1), _encode(address, 2)])))
    out = redact(text)
    assert not re.search(r"\w@\w", out) and "@" not in out, out
    assert address not in out.lower()
    assert redact(out) == out


@given(st.data(), st.text("0123456789", min_size=6, max_size=30))
@PROPERTY
def test_no_long_digit_run_survives(data, digits):
    out = redact(_place(data.draw, data.draw(st.sampled_from([digits, f"id{digits}x", f"{digits}.html"]))))
    assert not re.search(r"\d{6}", out), out
    assert redact(out) == out


@st.composite
def user_ids(draw) -> str:
    digits = st.text("0123456789", min_size=2, max_size=12)
    return draw(st.sampled_from([
        f"{draw(st.text(LOWER, min_size=2, max_size=8))}_{draw(digits)}",
        draw(digits).zfill(4),
        str(draw(st.uuids())),
    ]))


@given(st.data(), st.lists(user_ids(), min_size=1, max_size=3))
@PROPERTY
def test_no_known_user_id_survives(data, ids):
    forms = [str, str.upper, lambda i: _encode(i, 1), lambda i: _encode(i, 2), lambda i: f"{i}@mail.org"]
    pieces = [data.draw(st.sampled_from(forms))(i) for i in ids]
    text = " -> ".join(_place(data.draw, p) for p in pieces)
    out = redact(text, ids)
    assert not [i for i in ids if i.lower() in out.lower()] and "@" not in out, out
    assert redact(out, ids) == out


@given(st.text(), st.lists(user_ids(), max_size=2))
@PROPERTY
def test_redaction_is_idempotent_on_any_text(text, ids):
    once = redact(text, ids)
    assert redact(once, ids) == once
