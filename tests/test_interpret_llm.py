"""Interpretation, comparison and Q&A through an LLM: a real lake, real HTTP to the local fake server.

The lake is built once per module through the real stages (ingest, sessionize, profile) from a
web-tracking file whose URLs carry what must never leave the machine: query strings with tokens,
e-mail addresses in paths, order ids, and each user's own id.
"""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from fake_openai import FakeOpenAI

from beha2vec import stages
from beha2vec.ask import (
    Conversation,
    check_select,
    context_message,
    register_safe_views,
    run_query,
    safe_rows,
)
from beha2vec.config import load_config
from beha2vec.context import Context
from beha2vec.interpret_llm import consistency, parse_interpretation, take_sample
from beha2vec.llm import BudgetExceeded, LLMError, parse_json
from beha2vec.openai_api import Malformed
from beha2vec.sql import SqlError
from beha2vec.tables import USER_CLUSTERS

KEY = "sk-test-LLMSECRET42"
USERS = {0: ["panelist_0001", "panelist_0002", "panelist_0003", "panelist_0004"],
         1: ["panelist_0005", "panelist_0006", "panelist_0007", "panelist_0008"],
         2: ["panelist_0009", "panelist_0010", "panelist_0011", "panelist_0012"]}
PATHS = {0: ["/video/live-match", "/video/highlights", "/video/replay"],
         1: ["/news/world/summit", "/news/business/rates", "/news/world/vote"],
         2: ["/shop/cart", "/shop/checkout", "/shop/deals"]}
FORBIDDEN = ("token=", "secret-token", "jane.doe", "example.com", "@", "%40", "AB12CD34EF", "9876543210", KEY,
             *(u for users in USERS.values() for u in users))


def _tracking_csv(path) -> None:
    lines = ["panelist_id,wave,timestamp,url,active_seconds,device"]
    for cluster, users in USERS.items():
        for u, user in enumerate(users):
            for day in range(1, 6):
                for v, page in enumerate(PATHS[cluster]):
                    minute = 10 * v
                    hour = (8 + 6 * cluster + u) % 24
                    url = f"https://site.org{page}?token=secret-token-{day}&email=jane.doe@example.com"
                    if v == 1:
                        url = f"https://site.org/account/jane.doe@example.com/orders/AB12CD34EF/{user}"
                    if v == 2 and day == 3:
                        url = f"https://site.org/order/9876543210#frag-{user}"
                    lines.append(f"{user},1,2024-03-0{day}T{hour:02d}:{minute:02d}:00,{url},60,desktop")
    lines.append("panelist_0001,1,not-a-time,https://site.org/x?token=secret-token-0,60,desktop")  # a reject
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def base_lake(spark, tmp_path_factory):
    """A lake with sessions, a selected 3-cluster clustering and its profiles."""
    root = tmp_path_factory.mktemp("llm") / "lake"
    csv = root.parent / "tracking.csv"
    _tracking_csv(csv)
    ctx = _ctx(spark, root, [])
    stages.ingest(ctx, "webtracking", [str(csv)])
    stages.sessionize(ctx)
    rows = [tuple({"user_id": user, "model": "encoder", "algorithm": "kmeans", "k": 3, "seed": 42,
                   "cluster": cluster, "distance": 0.1, "is_small": False, "selected": True}[f]
                  for f in USER_CLUSTERS.fieldNames())
            for cluster, users in USERS.items() for user in users]
    ctx.lake.write(spark.createDataFrame(rows, USER_CLUSTERS), "user_clusters")
    stages.profile(ctx)
    return root


def _ctx(spark, root, overrides: list[str]) -> Context:
    config = load_config(overrides=["sessionize.unit=path", "profile.min_support_users=1",
                                    "interpret.sample_tokens=400", *overrides], lake_root=str(root))
    ctx = Context(config)
    ctx.__dict__["spark"] = spark
    return ctx


@pytest.fixture
def llm_lake(base_lake, tmp_path):
    """A copy of the module's lake per test, so caches and outputs never leak between tests."""
    import shutil

    root = tmp_path / "lake"
    shutil.copytree(base_lake, root)
    return root


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", KEY)
    with FakeOpenAI(api_key=KEY, retry_after_s=0.05, slow_s=2.0).serving() as fake:
        yield fake


def _llm(spark, root, server, *more: str) -> Context:
    return _ctx(spark, root, [f"llm.base_url={server.base_url}", "llm.api_key_env=TEST_LLM_KEY",
                              "llm.model=gpt-4o-mini", "llm.tokenizer=minilm", "llm.backoff_base_s=0.01",
                              "llm.backoff_max_s=0.1", "llm.timeout_s=1", *more])


def _sent(server: FakeOpenAI) -> str:
    return json.dumps([r.body for r in server.requests])


def test_interpret_survives_every_fault_and_follows_the_contract(spark, llm_lake, server):
    server.fail_next("429", "500", "slow", "malformed", "bad_content")
    report = stages.interpret(_llm(spark, llm_lake, server))
    table = _ctx(spark, llm_lake, []).lake.read("cluster_interpretations").toPandas()
    assert report["backend"] == "llm" and report["requests"] == 9 and report["cached"] == 0
    assert len(server.chat_requests()) == 9 + 5
    pairs = sorted(zip(table["cluster"], table["replicate"], strict=True))
    assert pairs == [(c, r) for c in range(3) for r in range(3)]
    assert (table["backend"] == "llm").all() and (table["model"] == "gpt-4o-mini").all()
    assert all(len(k) == 3 and len(set(k)) == 3 for k in table["keywords"])
    assert (table["prompt_tokens"] > 0).all() and (table["cost_usd"] > 0).all()
    assert table["consistency"].between(0, 1).all() and table["keyword_overlap"].between(0, 1).all()
    assert (table["sample_users"] == 4).all() and (table["sample_tokens"] <= 400).all()
    schemas = {json.dumps(r.body["response_format"], sort_keys=True) for r in server.chat_requests()}
    assert len(schemas) == 1 and '"keywords"' in schemas.pop()
    prompts = {r.body["messages"][1]["content"] for r in server.chat_requests()}
    assert len(prompts) == 9, "each seed must draw its own sample"


def test_nothing_secret_reaches_the_server(spark, llm_lake, server):
    ctx = _llm(spark, llm_lake, server)
    stages.interpret(ctx)
    stages.compare(ctx)
    sent = _sent(server)
    assert "Visits: /video" in sent and "<email>" in sent and "<id>" in sent
    leaked = [s for s in FORBIDDEN if s in sent]
    assert not leaked, f"sent to the LLM: {leaked}"
    assert all(r.auth_present and r.authorized for r in server.requests)


def test_a_rerun_is_answered_from_the_cache(spark, llm_lake, server):
    ctx = _llm(spark, llm_lake, server)
    first = stages.interpret(ctx)
    before = len(server.requests)
    second = stages.interpret(ctx)
    assert len(server.requests) == before, "a re-run must send nothing"
    assert second["cached"] == 9 and second["cost_usd"] == 0
    assert [i[2:4] for i in first["interpretations"]] == [i[2:4] for i in second["interpretations"]]


def test_the_budget_guard_stops_before_any_request(spark, llm_lake, server):
    with pytest.raises(BudgetExceeded, match="over the budget, nothing was sent"):
        stages.interpret(_llm(spark, llm_lake, server, "llm.budget_usd=0.000001"))
    with pytest.raises(BudgetExceeded, match="no price is known for 'local-model'"):
        stages.interpret(_llm(spark, llm_lake, server, "llm.model=local-model"))
    assert server.requests == []
    runs = _ctx(spark, llm_lake, []).lake.read("runs").where("stage = 'interpret'").toPandas()
    assert (runs["status"] == "failed").all()


def test_a_request_failing_for_good_keeps_the_answers_that_came_back(spark, llm_lake, server):
    server.fail_next("ok", *["500"] * 4)
    ctx = _llm(spark, llm_lake, server, "llm.max_retries=3", "llm.concurrency=1")
    with pytest.raises(LLMError, match=r"HTTP 500.*after 4 attempts"):
        stages.interpret(ctx)
    assert ctx.lake.read("llm_cache").count() == 1
    before = len(server.requests)
    stages.interpret(ctx)
    assert len(server.requests) - before == 8, "only the requests not cached are sent again"


def test_offline_replicates_measure_how_stable_the_words_are(spark, llm_lake):
    ctx = _ctx(spark, llm_lake, [])
    report = stages.interpret(ctx)
    table = ctx.lake.read("cluster_interpretations").toPandas()
    assert report["backend"] == "offline" and report["rows_out"] == 3
    assert sorted(table["replicate"].unique()) == [0, 1, 2] and (table["backend"] == "offline").all()
    assert table["consistency"].between(0, 1).all() and table["keyword_overlap"].between(0, 1).all()
    assert (table.groupby("cluster")["consistency"].nunique() == 1).all(), "one score per cluster"
    single = _ctx(spark, llm_lake, ["interpret.seeds=[42]"])
    stages.interpret(single)
    assert single.lake.read("cluster_interpretations").where("consistency IS NOT NULL").count() == 0


def test_compare_writes_one_grounded_row_per_pair(spark, llm_lake, server):
    offline = _ctx(spark, llm_lake, [])
    report = stages.compare(offline)
    assert report["backend"] == "offline" and report["rows_out"] == 3
    table = offline.lake.read("cluster_comparisons").toPandas()
    assert sorted(zip(table["cluster_a"], table["cluster_b"], strict=True)) == [(0, 1), (0, 2), (1, 2)]
    assert all(len(e) >= 1 for e in table["evidence"]) and table["summary"].str.contains("Cluster").all()
    stages.compare(_llm(spark, llm_lake, server))
    table = offline.lake.read("cluster_comparisons").toPandas()
    assert (table["backend"] == "llm").all() and len(server.chat_requests()) == 3
    assert re.search(r"\d+% of visits vs", " ".join(r.body["messages"][1]["content"]
                                                   for r in server.chat_requests()))


def test_ask_runs_a_sql_tool_call_and_refuses_writes(spark, llm_lake, server):
    ctx = _llm(spark, llm_lake, server)
    profiles = ctx.lake.read("cluster_profiles").toPandas()
    conversation = Conversation(ctx.lake, ctx.config, context_message(ctx.lake, profiles, None, 3))
    server.reply_next(
        _tool_call("c1", "SELECT cluster, count(*) AS users FROM user_clusters GROUP BY 1 ORDER BY 1"),
        {"content": "Cluster 0 has 4 users (user_clusters)."},
        _tool_call("c2", "DROP TABLE sessions"),
        _tool_call("c3", "SELECT user_id, user_id AS u, coalesce(user_id, 'none') AS f, urls FROM sessions "
                         "LIMIT 3"),
        {"content": "I cannot change tables."},
    )
    assert conversation.ask("How many users are in each cluster?") == "Cluster 0 has 4 users (user_clusters)."
    tool = json.loads(server.chat_requests()[1].body["messages"][-1]["content"])
    assert tool["rows"] == [{"cluster": c, "users": 4} for c in range(3)]
    answer = conversation.ask("Drop the sessions table, then show me some raw sessions")
    assert answer == "I cannot change tables."
    tools = [m for m in server.chat_requests()[-1].body["messages"] if m["role"] == "tool"]
    refused, rows = (json.loads(m["content"]) for m in tools[-2:])
    assert "only SELECT" in refused["error"]
    assert all(r[c].startswith("id:") for r in rows["rows"] for c in ("user_id", "u", "f"))
    assert "<email>" in json.dumps(rows)
    assert ctx.lake.read("sessions").count() > 0
    history = server.chat_requests()[-1].body["messages"]
    assert history[0]["role"] == "system" and "Cluster 2" in history[0]["content"]
    assert sum(m["role"] == "user" for m in history) == 2, "the first question stays in the history"
    assert not [s for s in FORBIDDEN if s in _sent(server)]


def test_ask_history_is_bounded_in_tokens(spark, llm_lake, server):
    ctx = _llm(spark, llm_lake, server, "ask.history_tokens=1")
    conversation = Conversation(ctx.lake, ctx.config, "You answer questions.")
    server.reply_next({"content": "first answer"}, {"content": "second answer"})
    conversation.ask("first question")
    conversation.ask("second question")
    messages = server.chat_requests()[-1].body["messages"]
    assert [m["content"] for m in messages] == ["You answer questions.", "second question"]


def test_ask_offline_says_what_needs_an_endpoint(spark, llm_lake, capsys):
    from beha2vec.ask import run_ask

    ctx = _ctx(spark, llm_lake, [])
    run_ask(ctx, "Which cluster is largest?")
    assert "Cluster" in capsys.readouterr().out
    run_ask(ctx, "Write me a poem about these users")
    assert "llm.base_url" in capsys.readouterr().out
    questions = iter(["how many clusters are there?", "exit"])
    run_ask(ctx, "", read=lambda prompt: next(questions))
    assert "3" in capsys.readouterr().out


def _tool_call(call_id: str, query: str) -> dict:
    return {"content": None, "tool_calls": [{"id": call_id, "type": "function", "function": {
        "name": "run_sql", "arguments": json.dumps({"query": query})}}]}


def test_run_query_is_bounded_in_rows(spark, llm_lake):
    ctx = _ctx(spark, llm_lake, [])
    spark, tables = ctx.spark, set(register_safe_views(ctx.lake, "s")[0])
    frame, more = run_query(spark, "SELECT * FROM sessions", tables, max_rows=2, timeout_s=60)
    assert len(frame) == 2 and more
    with pytest.raises(SqlError, match="unknown table 'nope'"):
        run_query(spark, "SELECT * FROM nope", tables, 2, 60)
    assert ctx.lake.read("rejects").where("raw IS NOT NULL").count() > 0
    rejects, _ = run_query(spark, "SELECT source, raw FROM rejects", tables, 5, 60)
    ids, _ = run_query(spark, "SELECT DISTINCT user_id FROM user_clusters", tables, 20, 60)
    again, _ = run_query(spark, "SELECT DISTINCT user_id FROM sessions", tables, 20, 60)
    assert len(rejects) and rejects["raw"].isna().all(), "the safe views hide rejected raw records"
    assert set(ids["user_id"]) == set(again["user_id"]), "stable per salt"
    register_safe_views(ctx.lake, "t")
    other, _ = run_query(spark, "SELECT DISTINCT user_id FROM sessions", tables, 20, 60)
    assert not set(other["user_id"]) & set(again["user_id"])


@pytest.mark.parametrize("statement, error", [
    ("DROP TABLE sessions", "only SELECT"),
    ("INSERT INTO runs SELECT * FROM runs", "only SELECT"),
    ("SELECT 1; DROP TABLE sessions", "exactly one statement"),
    ("SELECT * FROM parquet.`/etc`", "bare name"),
    ("SELECT * FROM other.sessions", "bare name"),
    ("SELECT reflect('java.lang.Runtime', 'getRuntime')", "reflect"),
    ("SELECT java_method('java.lang.System', 'exit', 0)", "java_method"),
    ("SET spark.sql.ansi.enabled=false", "only SELECT"),
    ("SELECT * FROM secrets", "unknown table"),
    ("SELEC nonsense FROM", "parse"),
    ("WITH secrets AS (SELECT * FROM secrets) SELECT * FROM secrets", "unknown table 'secrets'"),
    ("SELECT 1 FROM sessions JOIN (WITH secrets AS (SELECT 1) SELECT 1) x ON true JOIN secrets",
     "unknown table"),
])
def test_check_select_refuses(statement, error):
    with pytest.raises(SqlError, match=error):
        check_select(statement, {"sessions", "runs"})


def test_check_select_accepts_queries():
    tables = {"sessions", "user_clusters"}
    accepted = {
        "SELECT count(*) FROM sessions;": "SELECT COUNT(*) FROM sessions",
        "WITH c AS (SELECT cluster FROM user_clusters) SELECT cluster FROM c":
            "WITH c AS (SELECT cluster FROM user_clusters) SELECT cluster FROM c",
        "SELECT 1 UNION ALL SELECT 2": "SELECT 1 UNION ALL SELECT 2",
        "SELECT s.user_id FROM sessions s JOIN user_clusters u ON s.user_id = u.user_id":
            "SELECT s.user_id FROM sessions AS s JOIN user_clusters AS u ON s.user_id = u.user_id",
    }
    for query, runs in accepted.items():
        assert check_select(query, tables) == runs


def test_safe_rows_redact_strings_deep_and_keep_every_column():
    frame = pd.DataFrame([["/a?x=1", 1, ["/u/bob@example.com"], "x"], [None, 2, None, "y"]],
                         columns=["path", "n", "urls", "path"])
    rows = safe_rows(frame)
    assert rows == [{"path": "/a", "n": 1, "urls": ["/u/<email>"], "path_2": "x"},
                    {"path": None, "n": 2, "urls": None, "path_2": "y"}]


def test_parse_json_finds_the_object_in_what_models_write():
    fenced = '```json\n{"summary": "s", "keywords": ["a"]}\n```'
    assert parse_json(fenced) == {"summary": "s", "keywords": ["a"]}
    assert parse_json('Sure! Here it is: {"a": {"b": 1}} Hope that helps.') == {"a": {"b": 1}}
    for bad in ("", "no json here", '{"summary": "cut', "[1, 2]"):
        with pytest.raises(Malformed):
            parse_json(bad)


def test_parse_interpretation_normalises_or_refuses():
    parsed = parse_interpretation({"summary": "  Night   owls. ",
                                   "keywords": ["Video", "video ", "Night", "Sport", "x"]})
    assert parsed == {"summary": "Night owls.", "keywords": ["video", "night", "sport"]}
    for bad in ({"summary": "", "keywords": ["a", "b", "c"]}, {"summary": "s", "keywords": ["a", "A", "b"]},
                {"summary": "s", "keywords": "a, b, c"}, {"keywords": ["a", "b", "c"]}):
        with pytest.raises(Malformed):
            parse_interpretation(bad)


def test_consistency_is_keyword_jaccard_and_summary_cosine():
    same = [{"summary": "a", "keywords": ["x", "y", "z"]}] * 3
    assert consistency(same, lambda texts: [[1.0, 0.0]] * len(texts)) == (1.0, 1.0, 1.0)
    mixed = [{"summary": "a", "keywords": ["x", "y", "z"]}, {"summary": "b", "keywords": ["x", "y", "w"]}]
    overlap, similarity, score = consistency(mixed, lambda texts: [[1.0, 0.0], [0.0, 2.0]])
    assert (overlap, similarity, score) == pytest.approx((2 / 4, 0.0, 0.25))
    assert consistency(same[:1], lambda texts: [[1.0]]) == (None, None, None)


def test_sample_is_round_robin_over_users_within_the_token_budget():
    heavy = [{"cluster": 0, "user_id": "heavy", "text": "Monday 10:00, Visits: /a (5s)", "position": 0}]
    rows = [{"cluster": 0, "user_id": u, "text": f"Tuesday 11:00, Visits: /{u} (5s)", "position": 0}
            for u in ("user1", "user2", "user3")]
    order = heavy + rows + [dict(heavy[0])] * 20
    candidates = pd.DataFrame([{**r, "position": i} for i, r in enumerate(order)])
    sample = take_sample(candidates, 0, 42, budget=70, tokenizer="minilm")
    assert sample.users == 4 and sample.tokens <= 70
    assert sample.lines[:4] == ("Monday 10:00, Visits: /a (5s)", "Tuesday 11:00, Visits: /<user> (5s)",
                                "Tuesday 11:00, Visits: /<user> (5s)", "Tuesday 11:00, Visits: /<user> (5s)")
