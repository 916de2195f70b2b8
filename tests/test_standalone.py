"""The pipeline on a real Spark standalone cluster: a master and two 1-core workers on 127.0.0.1.

The cluster is started from the installed pyspark (``spark-class``), the code is shipped the way
docs/cluster.md says (``make package``, ``spark-submit --py-files dist/beha2vec.zip``), and jobs
run in client mode. The last test kills one worker, with its executor, while the embedding job runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from standalone_cluster import Cluster, cluster_env, standalone

from conftest import ROOT

BIN = Path(sys.executable).parent
JOB_TIMEOUT_S = 900
SMALL = ("--set", "embed.models=[minilm,tfidf,features]", "--set", "user_vectors.combine={}",
         "--set", "user_vectors.min_sessions=2", "--set", "cluster.models=[minilm]",
         "--set", "cluster.select_model=minilm", "--set", "cluster.algorithms=[kmeans]",
         "--set", "cluster.k_max=4", "--set", "cluster.seeds=[1,2]", "--set", "evaluate.min_sessions=2",
         "--set", "spark.shuffle_partitions=4")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    with standalone(tmp_path_factory.mktemp("standalone")) as running:
        yield running


@pytest.fixture(scope="module")
def package() -> Path:
    """``make package``, as a user runs it before submitting."""
    proc = subprocess.run(["make", "package"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    zipped = ROOT / "dist" / "beha2vec.zip"
    assert zipped.is_file() and list((ROOT / "dist").glob("beha2vec-*.whl"))
    return zipped


def _submit(cluster: Cluster, package: Path, job: str, *args: str) -> list[str]:
    return [str(BIN / "spark-submit"), "--master", cluster.url, "--deploy-mode", "client",
            "--executor-memory", "1g", "--py-files", str(package), str(ROOT / "jobs" / job),
            "--conf", str(ROOT / "conf" / "cluster.yaml"), *SMALL, *args]


def _table(lake: Path, name: str):
    from deltalake import DeltaTable

    return DeltaTable(str(lake / name)).to_pandas()


def _synth(out: Path, users: int, days: int) -> None:
    proc = subprocess.run([str(BIN / "beha2vec"), "synth", "--kind", "ga4", "--users", str(users), "--days",
                           str(days), "--personas", "3", "--seed", "5", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_pipeline_runs_on_a_standalone_cluster(cluster, package, tmp_path):
    data, lake = tmp_path / "ga4", tmp_path / "lake"
    _synth(data, 40, 14)
    command = _submit(cluster, package, "run.py", "--lake", str(lake), "--source", "ga4", str(data))
    proc = subprocess.run(command, capture_output=True, text=True, timeout=JOB_TIMEOUT_S, env=cluster_env(),
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for stage in ("ingest:", "sessionize:", "embed minilm:", "user-vectors:", "cluster minilm/kmeans: k=",
                  "profile:", "interpret (offline):", "compare (offline):", "report:"):
        assert stage in proc.stdout, stage
    assert "Executor added" in proc.stderr and cluster.url in proc.stderr
    runs = _table(lake, "runs")
    assert (runs["status"] == "ok").all()
    assert (runs["rows_in"] == runs["rows_out"] + runs["rows_rejected"]).all()
    assert runs.loc[runs["stage"] == "ingest", "rows_out"].item() == len(_table(lake, "events")) > 0
    sessions = _table(lake, "sessions")
    embeddings = _table(lake, "session_embeddings")
    minilm = embeddings.loc[embeddings["model"] == "minilm", "session_id"]
    assert sorted(minilm) == sorted(sessions["session_id"])
    assert _table(lake, "user_clusters")["selected"].any() and len(_table(lake, "cluster_interpretations"))
    shipped = list(cluster.root.glob("work*/app-*/*/beha2vec.zip"))
    assert len({p.parent.parent.parent for p in shipped}) == 2, "both workers' executors got the package"


def _daemons_of(group: int) -> list[int]:
    """Processes of a process group that run PySpark's Python worker daemon."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            pgid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2])
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if pgid == group and "pyspark" in cmdline and "daemon" in cmdline:
            found.append(int(proc.name))
    return found


def test_losing_a_worker_during_embedding_loses_and_duplicates_nothing(cluster, package, spark, tmp_path):
    from beha2vec import stages
    from beha2vec.config import load_config
    from beha2vec.context import Context

    data, lake = tmp_path / "ga4", tmp_path / "lake"
    _synth(data, 150, 28)
    ctx = Context(load_config(lake_root=str(lake)))
    ctx.__dict__["spark"] = spark
    stages.ingest(ctx, "ga4", [str(data)])
    stages.sessionize(ctx)
    sessions = sorted(_table(lake, "sessions")["session_id"])
    command = _submit(cluster, package, "embed.py", "--lake", str(lake), "--set", "embed.batch_size=8",
                      "--set", "embed.arrow_batch_size=64", "--model", "minilm")
    victim = cluster.workers[1]
    with (tmp_path / "job.log").open("w") as log:
        job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=cluster_env(),
                               cwd=tmp_path)
        try:
            deadline = time.monotonic() + JOB_TIMEOUT_S
            while not _daemons_of(victim.pid) and job.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert job.poll() is None, "the embedding job ended before the worker could be killed"
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait(timeout=30)
            out, _ = job.communicate(timeout=JOB_TIMEOUT_S)
        finally:
            if job.poll() is None:
                job.kill()
    assert job.returncode == 0, out[-2000:] + (tmp_path / "job.log").read_text()[-3000:]
    assert "embed minilm:" in out
    rows = _table(lake, "session_embeddings")
    assert sorted(rows["session_id"]) == sessions, "every session once, none lost, none twice"
    assert rows["embedding"].map(len).eq(384).all()
    log_text = (tmp_path / "job.log").read_text()
    assert "lost" in log_text.lower() or "removed" in log_text.lower()
    runs = _table(lake, "runs")
    embed_run = runs[runs["stage"] == "embed"].iloc[-1]
    assert embed_run["status"] == "ok" and json.loads(embed_run["details"])


def test_cluster_docs_name_the_commands_they_promise():
    text = (ROOT / "docs" / "cluster.md").read_text()
    for needed in ("make package", "--py-files dist/beha2vec.zip", "io.delta:delta-spark_2.13:4.4.1",
                   "spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension",
                   "spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog",
                   "--master yarn", "--master k8s://", "Databricks", "--archives"):
        assert needed in text, needed
    assert shutil.which("spark-submit", path=str(BIN))
