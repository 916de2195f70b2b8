"""End to end through the command line, as a user runs it: synth, run twice, sql, tables, errors."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

BIN = Path(sys.executable).parent
# MiniLM through the stage is covered by test_embed.py; the encoder trains for 2 epochs here, and
# the k sweep is 3..5 with 2 seeds; offline replicates are tested in test_interpret_llm.py
FAST = ("--set", "embed.models=[tfidf,features,encoder]", "--set", "encoder.epochs=2",
        "--set", "cluster.k_max=5", "--set", "cluster.seeds=[1,2]", "--set", "interpret.seeds=[42]")


def cli(*args: str, check: bool = True, tool: str = "beha2vec") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    proc = subprocess.run([str(BIN / tool), *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data, lake = root / "ga4", root / "lake"
    cli("synth", "--kind", "ga4", "--users", "40", "--days", "28", "--personas", "3", "--seed", "3",
        "--out", str(data))
    first = cli("--conf", "conf/local.yaml", *FAST, "--lake", str(lake), "run", "--source",
                "ga4", str(data), "--truth", str(data / "_truth" / "truth_users.csv"))
    return data, lake, first


def _counts(lake):
    out = cli("--lake", str(lake), "sql", "SELECT (SELECT count(*) FROM events) AS e, "
              "(SELECT count(*) FROM sessions) AS s, (SELECT count(*) FROM rejects) AS r, "
              "(SELECT count(*) FROM session_embeddings) AS v, (SELECT count(*) FROM user_clusters) AS c, "
              "(SELECT count(*) FROM cluster_profiles WHERE cluster < 0) AS p",
              "--format", "json").stdout
    return json.loads(out)[0]


def test_run_prints_tables_and_example_queries(pipeline):
    _, lake, first = pipeline
    for stage in ("ingest:", "sessionize:", "features:", "train-encoder: v1", "embed tfidf:",
                  "embed features:", "embed encoder:", "user-vectors:", "cluster encoder/kmeans: k=",
                  "selected for profiles and interpretation: encoder/", "evaluate:", "profile:",
                  "interpret (offline):", "compare (offline):", "report:"):
        assert stage in first.stdout
    assert "\nencoder " in first.stdout  # a row of the comparison table
    for table in ("events", "rejects", "sessions", "runs", "session_features", "session_embeddings",
                  "evaluation", "encoder_runs", "user_vectors", "cluster_scores", "user_clusters",
                  "cluster_profiles", "cluster_interpretations", "cluster_comparisons"):
        assert table in first.stdout
    assert "persona_purity" in first.stdout and "id_accuracy" in first.stdout
    assert "persona_ari" in first.stdout and "\nencoder/bisecting " in first.stdout
    assert (lake / "report" / "index.html").is_file()
    assert first.stdout.count('sql "SELECT') == 3
    assert str(lake) in first.stdout


def test_second_run_same_counts_new_versions(pipeline):
    data, lake, _ = pipeline
    before = _counts(lake)
    assert before["e"] > 0 and before["s"] > 0
    # ingest and sessionize again: features and the later stages run again in
    # test_run_from_to_and_resume, a second encoder version in test_encoder.py
    cli("--conf", "conf/local.yaml", *FAST, "--lake", str(lake), "run", "--to", "sessionize",
        "--source", "ga4", str(data))
    assert _counts(lake) == before
    history = cli("--lake", str(lake), "tables", "--history", "sessions").stdout
    assert "WRITE" in history or "CREATE" in history
    listing = cli("--lake", str(lake), "tables").stdout
    sessions_line = next(line for line in listing.splitlines() if line.startswith("sessions"))
    assert sessions_line.split("|")[2].strip() == "1"
    runs = json.loads(cli("--lake", str(lake), "sql",
                          "SELECT stage, status, rows_in, rows_out, rows_rejected FROM runs",
                          "--format", "json").stdout)
    # the first run: ingest, sessionize, features, train-encoder, embed x 3 models, user-vectors, cluster,
    # evaluate, profile, interpret, compare, report; the second ingest and sessionize
    assert len(runs) == 14 + 2 and all(r["status"] == "ok" for r in runs)
    assert all(r["rows_in"] == r["rows_out"] + r["rows_rejected"] for r in runs)


def test_sql_formats(pipeline):
    _, lake, _ = pipeline
    query = "SELECT user_id, count(*) FROM sessions GROUP BY user_id ORDER BY 2 DESC LIMIT 5"
    table = cli("--lake", str(lake), "sql", query).stdout
    assert table.splitlines()[0].split("|")[0].strip() == "user_id"
    assert table.strip().endswith("(5 rows)")
    rows = list(csv.DictReader(io.StringIO(cli("--lake", str(lake), "sql", query, "--format", "csv").stdout)))
    data = json.loads(cli("--lake", str(lake), "sql", query, "--format", "json").stdout)
    assert len(rows) == len(data) == 5
    assert [r["user_id"] for r in rows] == [d["user_id"] for d in data]
    assert [int(r["count(1)"]) for r in rows] == [d["count(1)"] for d in data]


def test_user_errors_exit_2_with_a_message(pipeline):
    _, lake, _ = pipeline
    bad = cli("--lake", str(lake), "--set", "sessionize.gapminutes=3", "sessionize", check=False)
    assert bad.returncode == 2
    assert "unknown key 'sessionize.gapminutes' (did you mean 'sessionize.gap_minutes'?)" in bad.stderr
    write = cli("--lake", str(lake), "sql", "DROP TABLE events", check=False)
    assert write.returncode == 2 and "read-only" in write.stderr
    typo = cli("--lake", str(lake), "sql", "SELECT secs FROM runs", check=False)
    assert typo.returncode == 2 and "UNRESOLVED_COLUMN" in typo.stderr
    assert "SQLQueryContextLogger" not in typo.stderr and "Py4JJavaError" not in typo.stderr
    missing = cli("--lake", str(lake), "ingest", "--source", "ga4", "/nonexistent/dir", check=False)
    assert missing.returncode == 2 and "no input matches '/nonexistent/dir'" in missing.stderr
    unknown = cli("--lake", str(lake), "embed", "--model", "encoder:v99", check=False)
    assert unknown.returncode == 2 and "encoder version 'v99' not found" in unknown.stderr
    broken = cli("--lake", str(lake), "--set", "spark.master=nonsense://x", "tables", check=False)
    assert broken.returncode == 1 and "Traceback" not in broken.stderr
    assert "(run with -v for the traceback)" in broken.stderr


def test_spark_submit_job_entry_point(pipeline):
    _, lake, _ = pipeline
    before = _counts(lake)
    proc = cli("--master", "local[2]", str(ROOT / "jobs" / "sessionize.py"), "--lake", str(lake),
               tool="spark-submit")
    assert "sessionize:" in proc.stdout
    assert _counts(lake) == before


def test_run_from_to_and_resume(pipeline):
    data, lake, _ = pipeline
    cli("--lake", str(lake), "sessionize")  # now every later stage ran on older sessions
    resumed = cli("--conf", "conf/local.yaml", *FAST, "--lake", str(lake), "run", "--resume",
                  "--to", "features", "--source", "ga4", str(data))
    # features, or ingest when an earlier test left a failed ingest run (a missing input)
    start = resumed.stdout.split("run --resume: starting at ")[1].split()[0]
    assert start in ("ingest", "features")
    assert "features:" in resumed.stdout and ("sessionize:" in resumed.stdout) == (start == "ingest")
    before = _counts(lake)
    partial = cli("--conf", "conf/local.yaml", *FAST, "--lake", str(lake), "run", "--from", "cluster",
                  "--to", "profile", "--truth", str(data / "_truth" / "truth_users.csv"))
    assert "cluster encoder/" in partial.stdout and "profile:" in partial.stdout
    assert _counts(lake) == before, "the later stages run again give the same row counts"
    assert "ingest:" not in partial.stdout and "report:" not in partial.stdout
    needs_input = cli("--lake", str(lake), "run", "--to", "sessionize", check=False)
    assert needs_input.returncode == 2 and "ingest needs --source" in needs_input.stderr


def test_ask_offline_and_interpret_by_llm(pipeline, monkeypatch):
    from fake_openai import FakeOpenAI

    _, lake, _ = pipeline
    largest = cli("--lake", str(lake), "ask", "which cluster is largest?").stdout
    assert largest.startswith("Cluster ") and "users" in largest
    poem = cli("--lake", str(lake), "ask", "write a poem about these users").stdout
    assert "needs an LLM endpoint" in poem and "llm.base_url" in poem
    monkeypatch.setenv("B2V_TEST_KEY", "sk-test-CLI")
    with FakeOpenAI(api_key="sk-test-CLI").serving() as server:
        llm = ("--lake", str(lake), "--set", f"llm.base_url={server.base_url}", "--set",
               "llm.api_key_env=B2V_TEST_KEY", "--set", "llm.tokenizer=minilm",
               "--set", "interpret.sample_tokens=300")
        first = cli(*llm, "interpret").stdout
        assert "interpret: gpt-4o-mini:" in first and "(0 answered from the cache)" in first
        assert "interpret (llm):" in first and "consistency" in first
        sent = len(server.requests)
        again = re.search(r"(\d+) requests \((\d+) cached\), \$0\.0000", cli(*llm, "interpret").stdout)
        assert again and again[1] == again[2] and len(server.requests) == sent
        assert cli(*llm, "--set", "llm.budget_usd=0", "compare", check=False).returncode == 2
        assert len(server.requests) == sent


def test_notebook_runs_on_the_pipeline_outputs(pipeline):
    import nbformat
    from nbclient import NotebookClient

    _, lake, _ = pipeline
    notebook = nbformat.read(ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    os.environ["BEHA2VEC_LAKE"] = str(lake)
    try:
        client = NotebookClient(notebook, timeout=300,
                                resources={"metadata": {"path": str(ROOT / "notebooks")}})
        client.execute()
    finally:
        del os.environ["BEHA2VEC_LAKE"]
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                     for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "persona_ari" in text and "encoder" in text and "cluster_profiles" in text
    assert "no interpretations yet" not in text and "consistency" in text
    assert not any(o.get("output_type") == "error" for c in notebook.cells for o in c.get("outputs", []))


def test_job_names_do_not_shadow_the_standard_library():
    shadowing = [p.name for p in (ROOT / "jobs").glob("*.py") if p.stem in sys.stdlib_module_names]
    assert not shadowing, f"spark-submit puts jobs/ first on sys.path; rename {shadowing}"
