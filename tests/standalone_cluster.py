"""A Spark standalone cluster on 127.0.0.1 from the installed pyspark, for tests and benchmarks.

``standalone(root)`` starts a master and 1-core workers with ``spark-class`` (each daemon in its own
process group, so stopping it also stops the executors and Python workers it started), waits until
the workers have registered, and stops everything on exit. Every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 90


def spark_class() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "bin" / "spark-class"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_env() -> dict[str, str]:
    return {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def wait_for(log: Path, text: str, count: int = 1, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists() and log.read_text(errors="replace").count(text) >= count:
            return
        time.sleep(0.5)
    raise TimeoutError(f"'{text}' x{count} not in {log} after {timeout_s} s:\n{log.read_text()[-2000:]}")


@dataclass
class Cluster:
    url: str
    root: Path
    workers: list[subprocess.Popen]


def _start(args: list[str], log: Path) -> subprocess.Popen:
    """A daemon in its own process group, so it can be killed with every process it started."""
    with log.open("w") as out:
        return subprocess.Popen([str(spark_class()), *args], stdout=out, stderr=subprocess.STDOUT,
                                env=cluster_env(), start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


@contextmanager
def standalone(root: Path, workers: int = 2, memory: str = "2g") -> Iterator[Cluster]:
    """A master and ``workers`` workers of 1 core and ``memory`` each, logs and work dirs in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"spark://127.0.0.1:{port}"
    master = _start(["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                     "--webui-port", "0"], root / "master.log")
    started: list[subprocess.Popen] = []
    try:
        wait_for(root / "master.log", "ALIVE")
        for i in range(1, workers + 1):
            started.append(_start(["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                                   "--cores", "1", "--memory", memory, "--webui-port", "0",
                                   "--work-dir", str(root / f"work{i}"), url], root / f"worker{i}.log"))
        wait_for(root / "master.log", "Registering worker", count=workers)
        yield Cluster(url, root, started)
    finally:
        for proc in [*started, master]:
            stop(proc)
