"""The HTML report: pure figure/context functions, the page over a hand-made lake, and the page in
headless Chromium (no console error, no request beyond file: and data: URLs)."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from beha2vec.lake import Lake
from beha2vec.report import (
    STAGE_OF,
    build_report,
    comparisons_context,
    interpretations_context,
    ordered,
    render,
    score_curves,
    to_svg,
)
from beha2vec.tables import CLUSTER_PROFILES, CLUSTER_SCORES, EVALUATION, USER_CLUSTERS, USER_VECTORS

CHROMIUM = shutil.which("chromium")  # Debian's package: `make browser` installs it
EVIL = "<script>alert('x')</script>"
# a URL in an attribute or in CSS that would make the browser fetch something from the network
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:[a-z]+:)?//|url\(\s*["']?\s*(?:[a-z]+:)?//""", re.I)
SIZES = {0: 30, 1: 26, 2: 4}  # cluster 2 is small


def users() -> list[tuple[str, int]]:
    return [(f"u{c}_{i:02d}", c) for c, n in SIZES.items() for i in range(n)]


def vector_rows() -> list[tuple]:
    rng = np.random.default_rng(0)
    return [(u, "minilm", 4, [float(x) for x in np.eye(4)[c] * 5 + rng.normal(0, 0.3, 4)], 3)
            for u, c in users()]


def score_rows() -> list[tuple]:
    rows = []
    for algorithm, best in (("kmeans", 0.6), ("bisecting", 0.5)):
        for k in (2, 3, 4):
            for seed in (1, 2):
                silhouette = best - 0.1 * abs(k - 3) + 0.02 * seed
                swept_and_chosen = k == 3 and seed == 1 and algorithm == "bisecting"
                rows.append(("r1", "minilm", algorithm, k, seed, silhouette, 0.9 - 0.1 * abs(k - 3), 10.0, 5,
                             0.1, 40, 4, 30, k == 3, swept_and_chosen, False, False))
    # kmeans swept a sample of 40 users; its chosen k=3, seed 1 scored on all 60
    rows.append(("r1", "minilm", "kmeans", 3, 1, 0.432, 0.9, 10.0, 5, 0.2, 60, 6, 40, True, True, True, True))
    return rows


def cluster_rows() -> list[tuple]:
    selected = [(u, "minilm", "kmeans", 3, 1, c, 0.5, c == 2, True) for u, c in users()]
    other = [(u, "minilm", "bisecting", 3, 1, (c + 1) % 3, 0.5, False, False) for u, c in users()]
    return selected + other


def profile_rows() -> list[tuple]:
    rows = []
    for cluster, n in {-1: 60, **SIZES}.items():
        def add(facet: str, key: str, share: float, rank: int, lift: float = 1.0, c=cluster, n=n) -> None:
            rows.append(("minilm", "kmeans", 3, c, c == 2, n, facet, key, share * 10, share, 0.2, lift, rank))

        add("summary", "sessions_per_user", 3.0 + cluster, 1)
        add("domain", "news.example" if cluster else EVIL, 0.5, 1)
        add("domain", "shop.example", 0.3, 2)
        add("domain_distinctive", f"rare{cluster}.example", 0.1, 1, lift=4.0 + cluster)
        for hour in (9, 13, 21):
            add("hour", str(hour), 1 / 3, hour)
        for day in ("Monday", "Sunday"):
            add("weekday", day, 0.5, 1)
        add("device_category", "mobile", 0.7, 1)
        add("browser", "Firefox", 0.4, 1)
        add("country", "NZ", 0.2, 1)
    return rows


def evaluation_rows() -> list[tuple]:
    return [("r1", model, metric, value, 60, 180, "{}")
            for model, scale in (("minilm", 1.0), (f"tfidf{EVIL}", 0.5))
            for metric, value in (("silhouette_cosine", 0.31 * scale), ("id_accuracy", 0.8 * scale))]


def write(spark, lake: Lake, rows: list[tuple], schema, name: str) -> None:
    lake.write(spark.createDataFrame(rows, schema), name)


@pytest.fixture(scope="module")
def full_report(spark, tmp_path_factory) -> Path:
    """A report over every table but cluster_interpretations, built once for the module."""
    lake = Lake(spark, str(tmp_path_factory.mktemp("report") / "lake"))
    for rows, schema, name in ((vector_rows(), USER_VECTORS, "user_vectors"),
                               (score_rows(), CLUSTER_SCORES, "cluster_scores"),
                               (cluster_rows(), USER_CLUSTERS, "user_clusters"),
                               (profile_rows(), CLUSTER_PROFILES, "cluster_profiles"),
                               (evaluation_rows(), EVALUATION, "evaluation")):
        write(spark, lake, rows, schema, name)
    return build_report(lake)


# -- pure functions ------------------------------------------------------------------------------

def test_score_curves_min_max_over_seeds():
    scores = pd.DataFrame({"model": "m", "algorithm": "kmeans", "k": [3, 3, 4],
                           "silhouette": [0.2, 0.4, np.nan]})
    curves = score_curves(scores, "silhouette")
    assert len(curves) == 1
    assert curves.iloc[0][["k", "min", "max"]].tolist() == pytest.approx([3, 0.2, 0.4])


def test_ordered_hours_numerically_and_weekdays_from_monday():
    hours = pd.DataFrame({"key": ["10", "9", "23"], "rank": [1, 2, 3]})
    days = pd.DataFrame({"key": ["Sunday", "Monday", "Wed"], "rank": [1, 2, 3]})
    other = pd.DataFrame({"key": ["b", "a"], "rank": [2, 1]})
    assert ordered(hours)["key"].tolist() == ["9", "10", "23"]
    assert ordered(days)["key"].tolist() == ["Monday", "Wed", "Sunday"]
    assert ordered(other)["key"].tolist() == ["a", "b"]


def test_to_svg_is_an_inline_element_with_escaped_text():
    from matplotlib.figure import Figure

    fig = Figure()
    fig.subplots().set_title("<b>&</b> costs $5")
    svg = to_svg(fig)
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert "<metadata" not in svg and "DOCTYPE" not in svg
    assert "&lt;b&gt;&amp;&lt;/b&gt; costs $5" in svg


def test_interpretations_of_replicate_zero_are_shown_escaped():
    frame = pd.DataFrame({
        "cluster": [1, 1, 0], "replicate": [1, 0, 0], "backend": ["offline", "offline", "openai"],
        "model": [None, None, "gpt-x"], "summary": ["other", f"night owls {EVIL}", "shoppers"],
        "keywords": [["x"], ["news", "late"], None], "consistency": [0.7, 0.7, 0.9]})
    rows = interpretations_context(frame)
    assert [(r["cluster"], r["summary"], r["keywords"], r["backend"]) for r in rows] == [
        (0, "shoppers", [], "openai gpt-x"), (1, f"night owls {EVIL}", ["news", "late"], "offline")]
    empty = dict.fromkeys(["evaluation", "scores", "clusters", "projection", "profiles", "comparisons"])
    html = render(empty | {"lake": "/l", "generated": "now", "versions": [], "stages": STAGE_OF,
                           "max_points": 1, "sample_seed": 1, "interpretations": rows})
    assert "night owls &lt;script&gt;" in html and "<script" not in html
    assert '<span class="tag">late</span>' in html and "no interpretations yet" not in html
    assert "no comparisons yet (run beha2vec compare)" in html


def test_comparisons_are_listed_by_pair_with_their_evidence_escaped():
    frame = pd.DataFrame({
        "cluster_a": [1, 0], "cluster_b": [2, 1], "backend": ["offline", "llm"], "model": ["rules", "gpt-x"],
        "summary": ["Cluster 1 reads news", f"Cluster 0 {EVIL}"],
        "evidence": [["news: 41% vs 3%"], ["video: 32% vs 4%", "median session: 15 min vs 3 min"]]})
    rows = comparisons_context(frame)
    assert [(r["a"], r["b"], r["backend"]) for r in rows] == [(0, 1, "llm gpt-x"), (1, 2, "offline rules")]
    empty = dict.fromkeys(["evaluation", "scores", "clusters", "projection", "profiles", "interpretations"])
    html = render(empty | {"lake": "/l", "generated": "now", "versions": [], "stages": STAGE_OF,
                           "max_points": 1, "sample_seed": 1, "comparisons": rows})
    assert "Cluster 0 &lt;script&gt;" in html and "<script" not in html
    assert "video: 32% vs 4%<br>median session: 15 min vs 3 min" in html and "0 vs 1" in html


# -- the page over a lake ------------------------------------------------------------------------

def test_report_is_offline_complete_and_escaped(full_report):
    assert full_report.name == "index.html" and full_report.parent.name == "report"
    assert [p.name for p in full_report.parent.iterdir()] == ["index.html"]  # no temp file left
    html = full_report.read_text("utf-8")
    assert EXTERNAL.findall(html) == []
    assert "<script" not in html.lower() and "<link" not in html.lower() and "@import" not in html
    assert "&lt;script&gt;alert(" in html
    for title in ("Evaluation of the embedding models", "Choice of k", "Cluster sizes",
                  "Users in two dimensions", "Cluster profiles", "Interpretations", "silhouette_cosine",
                  "id_accuracy", "PCA (scikit-learn)", "60 users", "rare1.example", "Firefox"):
        assert title in html, title
    for cluster in SIZES:
        assert f'id="cluster-{cluster}"' in html
    assert '<details id="cluster-2" class="small">' in html and "small cluster" in html
    assert '<details id="cluster-0" open>' in html
    assert html.count("<svg") == 1 + 1 + 1 + 3 * 3  # k plot, sizes, projection, 3 per cluster
    assert "no interpretations yet (run beha2vec interpret)" in html
    assert "<td><code>cluster_interpretations</code></td><td class=\"n\">absent</td>" in html
    chosen = html.split("<th>selected</th>")[1].split("</table>")[0]
    assert chosen.count("<tr>") == 2 and ">0.432<" in chosen and ">60<" in chosen  # scored on all users


def test_report_with_some_tables_only(spark, lake, tmp_path):
    write(spark, lake, cluster_rows(), USER_CLUSTERS, "user_clusters")
    write(spark, lake, evaluation_rows()[:2], EVALUATION, "evaluation")
    path = build_report(lake, tmp_path / "out")
    assert path == tmp_path / "out" / "index.html"
    html = path.read_text("utf-8")
    assert "No <code>cluster_scores</code> table yet (run <code>beha2vec cluster</code>)" in html
    assert "No <code>cluster_profiles</code> table yet (run <code>beha2vec profile</code>)" in html
    assert "the <code>user_vectors</code> table is absent" in html
    assert "no interpretations yet (run beha2vec interpret)" in html
    assert "Selected clustering: model <code>minilm</code>, kmeans, k=3, seed 1" in html
    assert "Small clusters (grey, hatched):\n  2." in html
    assert html.count("<svg") == 1


# -- the page in a browser -----------------------------------------------------------------------

def _above_four(fd: int) -> int:
    """The same pipe end on a descriptor >= 10, so moving it to 3 or 4 cannot clobber the other."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class DevTools:
    """Chrome DevTools protocol over ``--remote-debugging-pipe``: NUL-terminated JSON on fds 3 and 4."""

    def __init__(self, profile: Path) -> None:
        to_browser, self._commands = map(_above_four, os.pipe())
        self._replies, from_browser = map(_above_four, os.pipe())
        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--no-first-run", "--remote-debugging-pipe",
                f"--user-data-dir={profile}", "about:blank"]
        redirect = f'exec "$@" 3<&{to_browser} 4>&{from_browser}'
        self.process = subprocess.Popen(["bash", "-c", redirect, "bash", *args],
                                        pass_fds=(to_browser, from_browser),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)
        self.events: list[dict] = []
        self._buffer = b""
        self._id = 0

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        reply = self.wait(lambda m, i=self._id: m.get("id") == i)
        assert "error" not in reply, reply
        return reply["result"]

    def wait(self, done, timeout: float = 30) -> dict:
        """Read messages, keeping every event, until one satisfies ``done``."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                self.events.append(message)
                if done(message):
                    return message
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._replies], [], [], left)[0]:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._replies, 1 << 16)
            if not chunk:
                raise EOFError("chromium closed the DevTools pipe")
            self._buffer += chunk

    def close(self) -> None:
        try:
            os.write(self._commands, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
            self.process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        os.close(self._commands)
        os.close(self._replies)


def load_in_chromium(page: Path, profile: Path) -> dict:
    """Open ``page`` in headless Chromium; return its DOM, requested URLs and console/log errors."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (no /usr/bin/chromium): run `make browser` as root with apt "
                    "to load the report in a headless browser")
    browser = DevTools(profile)
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Network", "Runtime", "Log", "Page"):
            browser.call(f"{domain}.enable", session=session)
        browser.call("Page.navigate", {"url": page.as_uri()}, session)
        browser.wait(lambda m: m.get("method") == "Page.loadEventFired")
        dom = browser.call("Runtime.evaluate", {"expression": "document.documentElement.outerHTML",
                                                "returnByValue": True}, session)["result"]["value"]
    finally:
        browser.close()
    params = [(e["method"], e["params"]) for e in browser.events if "method" in e]
    return {
        "dom": dom,
        "requests": [p["request"]["url"] for m, p in params if m == "Network.requestWillBeSent"],
        "errors": [p for m, p in params if m in ("Runtime.exceptionThrown",)
                   or m == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert")
                   or m == "Log.entryAdded" and p["entry"]["level"] == "error"],
    }


def test_chromium_check_sees_errors_and_external_requests(tmp_path):
    """The browser check itself: a page that fetches and logs an error must be caught."""
    page = tmp_path / "bad.html"
    page.write_text('<!doctype html><img src="https://example.invalid/x.png">'
                    '<script>console.error("boom")</script>')
    seen = load_in_chromium(page, tmp_path / "profile")
    assert "https://example.invalid/x.png" in seen["requests"]
    assert any("boom" in json.dumps(e) for e in seen["errors"])


def test_report_renders_in_chromium_without_errors_or_requests(full_report, tmp_path):
    seen = load_in_chromium(full_report, tmp_path / "profile")
    assert [url for url in seen["requests"] if not url.startswith(("file:", "data:"))] == []
    assert full_report.as_uri() in seen["requests"]
    assert seen["errors"] == []
    assert seen["dom"].count("<svg") == 12
    assert "Cluster 2: 4 users" in seen["dom"]
