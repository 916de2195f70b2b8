"""``beha2vec ask`` with an LLM: answers from the profiles and interpretations, plus read-only SQL.

The model gets, once in the system message, every lake table's columns, each cluster's numbers
(:func:`beha2vec.interpret_llm.profile_facts`) and its description, and one tool, ``run_sql``. A
tool call runs only when :func:`check_select` accepts it: exactly one ``SELECT`` (or ``WITH`` /
set operation) over lake tables by their bare names, with no function that reaches outside the
query (``reflect``, ``java_method``, file readers). At most ``ask.max_rows`` rows come back, the
query is cancelled after ``ask.query_timeout_s``, and at most ``ask.max_tool_calls`` calls run per
question. Queries run over views in which id columns hold salted pseudonyms and rejected raw
records are empty (:func:`register_safe_views`), and results are redacted like prompts, so no raw
user id reaches the model. The history kept for the next question is cut, oldest turns
first, to ``ask.history_tokens``.
"""

from __future__ import annotations

import functools
import json
import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from pyspark.sql import functions as F

from beha2vec.config import Config
from beha2vec.lake import Lake
from beha2vec.llm import policy, prompt_tokens, validate
from beha2vec.openai_api import Malformed, api_key, call_with_retries, client
from beha2vec.redact import redact
from beha2vec.sql import SqlError, failure, first_line, readable_tables

BLOCKED_FUNCTIONS = {"reflect", "java_method", "try_reflect", "read_files", "input_file_name"}
ID_COLUMNS = {"user_id", "session_id", "event_id", "panelist_id", "transaction_id", "ga_session_id",
              "first_event_id"}
HIDDEN_COLUMNS = {"raw"}
TOOL = {
    "type": "function",
    "function": {
        "name": "run_sql",
        "description": "Run one read-only Spark SQL SELECT over the lake tables (by bare name) and get at "
                       "most a bounded number of rows back as JSON. Id columns come back pseudonymised.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "one Spark SQL SELECT statement"}},
            "required": ["query"],
            "additionalProperties": False,
        },
    },
}
SYSTEM = (
    "You answer questions about segments (clusters) of website users found by Beha2Vec. Answer from the "
    "cluster numbers and descriptions below; when you need other numbers, call run_sql with one Spark SQL "
    "SELECT over the lake tables listed. Cite every number you use with where it came from (a table and "
    "column, or 'cluster numbers'). Say so when the data cannot answer the question. Be brief."
)


def check_select(statement: str, tables: set[str]) -> str:
    """The query as Spark SQL if it is one read-only query over ``tables``, else SqlError.

    What runs is the parsed query written back out, so what was checked is what Spark sees. Every
    table a scope reads must be a lake table: a CTE may not stand in for another table's name.
    """
    import sqlglot
    from sqlglot import exp
    from sqlglot.optimizer.scope import traverse_scope

    text = statement.strip().rstrip(";").strip()
    try:
        parsed = [p for p in sqlglot.parse(text, read="spark") if p is not None]
    except sqlglot.errors.SqlglotError as exc:
        raise SqlError(f"the query does not parse: {first_line(exc)}") from None
    if len(parsed) != 1:
        raise SqlError("exactly one statement is allowed")
    tree = parsed[0]
    if not isinstance(tree, exp.Query):
        raise SqlError(f"only SELECT queries are allowed, not {tree.key.upper()}")
    named = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
    for table in tree.find_all(exp.Table):
        if table.args.get("db") or table.args.get("catalog") or not isinstance(table.this, exp.Identifier):
            raise SqlError(f"'{table.sql(dialect='spark')}': only lake tables, by bare name, can be read")
        if table.name not in tables and table.name not in named:
            raise SqlError(f"unknown table '{table.name}'; lake tables: {', '.join(sorted(tables))}")
    for scope in traverse_scope(tree):
        for source in scope.sources.values():
            if isinstance(source, exp.Table) and source.name not in tables:
                raise SqlError(f"unknown table '{source.name}'; lake tables: {', '.join(sorted(tables))}")
    for func in tree.find_all(exp.Func):
        name = (func.name if isinstance(func, exp.Anonymous) else func.sql_name()).lower()
        if name in BLOCKED_FUNCTIONS:
            raise SqlError(f"function {name}() is not allowed: it reaches outside the lake")
    return tree.sql(dialect="spark")


def register_safe_views(lake: Lake, salt: str) -> tuple[list[str], dict[str, str]]:
    """Every readable lake table as a temporary view in which no raw id or raw record can be
    selected, and why each other table cannot be read (as :func:`beha2vec.sql.readable_tables`).

    Id columns hold ``id:`` + 12 hex digits of a salted SHA-256 instead (stable within one salt, so
    joins and counts still work, and not guessable from the id without the salt); ``raw`` (the
    rejected input records) is empty. Done in Spark, before any query, so no alias or aggregate
    can bring an id back.
    """
    frames, damaged = readable_tables(lake)
    for name, df in frames.items():
        hidden = {c: F.concat(F.lit("id:"), F.substring(F.sha2(F.concat(F.lit(salt), F.col(c).cast("string")),
                                                              256), 1, 12))
                  for c in df.columns if c.lower() in ID_COLUMNS}
        hidden |= {c: F.lit(None).cast("string") for c in df.columns if c.lower() in HIDDEN_COLUMNS}
        df.withColumns(hidden).createOrReplaceTempView(name)
    return list(frames), damaged


def safe_rows(frame: pd.DataFrame) -> list[dict]:
    """Rows fit to send: every string redacted (also in arrays and structs), column names unique."""
    out = frame.copy()
    seen: dict[str, int] = {}
    columns = []
    for name in out.columns:
        seen[name] = seen.get(name, 0) + 1
        columns.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    out.columns = columns
    for column in out.columns:
        if out[column].dtype == object:
            out[column] = [_redacted(v) for v in out[column]]
    return json.loads(out.to_json(orient="records", date_format="iso", default_handler=str))


def _redacted(value: Any) -> Any:
    """Strings redacted, also inside arrays and structs (``urls``, ``items``)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        items = value.tolist() if hasattr(value, "tolist") else value
        return [_redacted(v) for v in items] if isinstance(items, list) else items
    if hasattr(value, "asDict"):
        return _redacted(value.asDict(recursive=True))
    return value


def run_query(spark: Any, statement: str, tables: set[str], max_rows: int, timeout_s: float,
              damaged: dict[str, str] | None = None) -> tuple[pd.DataFrame, bool]:
    """At most ``max_rows`` rows of a query checked against ``tables`` (views registered by
    :func:`register_safe_views`), and whether more existed; cancelled after the timeout. A query
    of a ``damaged`` table fails with why that table cannot be read."""
    damaged = damaged or {}
    text = check_select(statement, tables | set(damaged))
    sc = spark.sparkContext
    group = f"beha2vec-ask-{uuid.uuid4().hex[:8]}"
    fired = threading.Event()

    def cancel() -> None:
        fired.set()
        sc.cancelJobGroup(group)

    sc.setJobGroup(group, "beha2vec ask query", interruptOnCancel=True)
    timer = threading.Timer(timeout_s, cancel)
    timer.start()
    try:
        frame = spark.sql(text).limit(max_rows + 1).toPandas()
    except Exception as exc:
        if fired.is_set():
            raise SqlError(f"the query ran past ask.query_timeout_s={timeout_s:g} s; cancelled") from None
        raise SqlError(failure(exc, damaged)) from None
    finally:
        timer.cancel()
        sc.setLocalProperty("spark.jobGroup.id", None)
    return frame.head(max_rows), len(frame) > max_rows


@dataclass
class Conversation:
    """One chat with the model: a fixed system message and a history bounded in tokens."""

    lake: Lake
    config: Config
    context: str
    history: list[dict] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    salt: str = field(default_factory=lambda: secrets.token_hex(16), repr=False)
    tables: set[str] | None = None
    damaged: dict[str, str] = field(default_factory=dict)

    def ask(self, question: str) -> str:
        """The model's answer; tool calls run in between, at most ``ask.max_tool_calls`` of them."""
        conf, bounds = self.config.llm, self.config.ask
        validate(conf)
        key = api_key(conf.api_key_env, "llm.api_key_env")
        api = client(conf.base_url, key, conf.timeout_s)
        turn = [{"role": "user", "content": redact(question)}]
        calls = 0
        while True:
            self._trim(turn)
            messages = [{"role": "system", "content": self.context}, *self.history, *turn]
            offer_tool = calls < bounds.max_tool_calls
            message = call_with_retries(functools.partial(_reply, api, conf, messages, offer_tool),
                                        policy(conf), key)
            tool_calls = list(message.tool_calls or []) if offer_tool else []
            turn.append(_assistant(message, tool_calls))
            if not tool_calls:
                self.history.extend(turn)
                return message.content or (f"(no answer: the model wanted more than ask.max_tool_calls="
                                           f"{bounds.max_tool_calls} queries for this question)")
            for call in tool_calls:
                calls += 1
                over = {"error": f"not run: ask.max_tool_calls={bounds.max_tool_calls} queries per question"}
                result = self._tool(call) if calls <= bounds.max_tool_calls else json.dumps(over)
                turn.append({"role": "tool", "tool_call_id": call.id, "content": result})

    def _tool(self, call: Any) -> str:
        bounds = self.config.ask
        if call.function.name != "run_sql":
            return json.dumps({"error": f"unknown tool {call.function.name}; the only tool is run_sql"})
        try:
            query = json.loads(call.function.arguments or "{}").get("query", "")
            self.queries.append(query)
            if self.tables is None:  # once per conversation: the views stay for its later queries
                names, self.damaged = register_safe_views(self.lake, self.salt)
                self.tables = set(names)
            frame, more = run_query(self.lake.spark, query, self.tables, bounds.max_rows,
                                    bounds.query_timeout_s, self.damaged)
            rows = safe_rows(frame)
        except Exception as exc:  # the model gets the reason and may try another query
            return json.dumps({"error": redact(first_line(exc))})
        return json.dumps({"columns": list(rows[0]) if rows else list(frame.columns), "rows": rows,
                           "truncated": more, "note": f"at most {bounds.max_rows} rows are returned"},
                          default=str)

    def _trim(self, turn: list[dict]) -> None:
        """Drop the oldest whole questions (with their answers and tool results) past the token bound."""
        def size(messages: list[dict]) -> int:
            return prompt_tokens(self.config.llm, [json.dumps(m) for m in messages])

        limit = self.config.ask.history_tokens
        while self.history and size([{"content": self.context}, *self.history, *turn]) > limit:
            starts = [i for i, m in enumerate(self.history) if m["role"] == "user"]
            cut = starts[1] if len(starts) > 1 else len(self.history)
            del self.history[:cut]


def _reply(api: Any, conf: Any, messages: list[dict], offer_tool: bool) -> Any:
    kwargs: dict[str, Any] = {"model": conf.model, "messages": messages, "temperature": conf.temperature,
                              "max_tokens": conf.max_completion_tokens}
    if offer_tool:
        kwargs["tools"] = [TOOL]
    response = api.chat.completions.create(**kwargs)
    if not response.choices or response.choices[0].message is None:
        raise Malformed("the answer has no message")
    message = response.choices[0].message
    if not message.content and not message.tool_calls:
        raise Malformed("the answer is empty")
    return message


def _assistant(message: Any, tool_calls: list) -> dict:
    out: dict[str, Any] = {"role": "assistant", "content": message.content or ""}
    if tool_calls:
        out["tool_calls"] = [{"id": c.id, "type": "function",
                              "function": {"name": c.function.name, "arguments": c.function.arguments}}
                             for c in tool_calls]
    return out


def context_message(lake: Lake, profiles: pd.DataFrame, interpretations: pd.DataFrame | None,
                    top_n: int) -> str:
    """The system message: instructions, table columns, and every cluster's numbers and description."""
    from beha2vec.interpret_llm import profile_facts

    frames, damaged = readable_tables(lake)
    tables = [f"- {name}({', '.join(df.columns)})" for name, df in frames.items()]
    tables += [f"- {name}: cannot be read now ({redact(why)})" for name, why in damaged.items()]
    lines = [SYSTEM, "", "Lake tables (Spark SQL names and columns):", *tables, "", "Cluster numbers:"]
    clusters = sorted(int(c) for c in profiles["cluster"].unique() if c >= 0)
    for cluster in clusters:
        users = profiles.loc[(profiles["cluster"] == cluster), "users"].iloc[0]
        small = bool(profiles.loc[profiles["cluster"] == cluster, "is_small"].fillna(False).iloc[0])
        lines.append(f"Cluster {cluster}: {int(users):,} users{' (small)' if small else ''}")
        if interpretations is not None and len(interpretations):
            mine = interpretations[(interpretations["cluster"] == cluster)
                                   & (interpretations["replicate"] == 0)]
            for row in mine.itertuples():
                lines.append(f"  description ({row.backend}): {redact(row.summary)} "
                             f"[{', '.join(redact(k) for k in row.keywords)}]")
        lines += [f"  - {fact}" for fact in profile_facts(profiles, cluster, top_n)]
    return "\n".join(lines)


def run_ask(ctx: Any, question: str, read: Callable[[str], str] = input,
            write: Callable[[str], None] = print) -> None:
    """One answer to ``question``, or a prompt loop (until an empty line, ``exit`` or end of input).

    With ``llm.base_url`` set the model answers (and may query); otherwise :mod:`beha2vec.ask_offline`
    answers what the tables answer directly and says what needs an endpoint.
    """
    from beha2vec.ask_offline import answer as answer_offline

    lake = ctx.lake
    if not lake.exists("cluster_profiles"):
        raise ValueError("no cluster_profiles table in the lake yet; run the pipeline through profile first "
                         "(beha2vec run --to profile)")
    profiles = lake.read("cluster_profiles").toPandas()
    interpretations = (lake.read("cluster_interpretations").toPandas()
                       if lake.exists("cluster_interpretations") else None)
    comparisons = lake.read("cluster_comparisons").toPandas() if lake.exists("cluster_comparisons") else None
    if ctx.config.llm.base_url.strip():
        conversation = Conversation(lake, ctx.config, context_message(lake, profiles, interpretations,
                                                                      ctx.config.interpret.top_n))
        respond = conversation.ask
    else:
        def respond(text: str) -> str:
            found = answer_offline(text, profiles, interpretations, comparisons)
            return found.text + (f"\n(from {'; '.join(found.sources)})" if found.sources else "")

    if question:
        write(respond(question))
        return
    write("Ask about the clusters; an empty line, 'exit' or Ctrl-D ends."
          + ("" if ctx.config.llm.base_url.strip() else " (offline: no llm.base_url is set)"))
    while True:
        try:
            text = read("ask> ").strip()
        except EOFError:
            return
        if not text or text.lower() in ("exit", "quit"):
            return
        write(respond(text))
