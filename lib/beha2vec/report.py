"""Report: one self-contained HTML page over whatever tables the lake holds.

The page makes no request of its own, so it can be mailed, archived or opened offline: the CSS is
inline, every plot is an inline SVG drawn by matplotlib (``Figure`` objects, never pyplot, so no GUI
backend and no global figure state), and there is no script. Each section reads one table and shows
a short note when it is absent, because stages run separately. jinja2 autoescapes everything from
data; the only markup passed through is matplotlib's SVG, whose text matplotlib escapes itself.

Pure functions turn small pandas frames into figures and template context; :func:`build_report` is
the only part that reads the lake, and it brings only small tables, aggregates and a bounded sample
to the driver.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from jinja2 import Environment, StrictUndefined
from markupsafe import Markup
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from pyspark.sql import functions as F

from beha2vec.evaluate import comparison_table, split_comparison
from beha2vec.lake import Lake

BASELINE = -1  # cluster_profiles' all-users rows
MAX_POINTS = 5_000  # users in the 2-D projection: enough to see shapes, small for the driver
SAMPLE_SEED = 42
TOP_KEYS = 10
TOP_FACETS = ("domain", "unit")  # the first one present is drawn as bars
RHYTHM_FACETS = ("hour", "weekday")
SHARE_FACETS = ("device_category", "browser", "country")  # as cluster_profiles names them
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# table -> the stage that writes it, for the note shown when it is absent
STAGE_OF = {
    "evaluation": "evaluate", "cluster_scores": "cluster", "user_clusters": "cluster",
    "user_vectors": "user-vectors", "cluster_profiles": "profile",
    "cluster_interpretations": "interpret", "cluster_comparisons": "compare",
}
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)


# -- figures: pandas in, inline SVG out ---------------------------------------------------------

def to_svg(fig: Figure) -> Markup:
    """The figure as an inline ``<svg>`` element: no XML prolog, DOCTYPE or RDF metadata.

    Text stays text (``svg.fonttype: none``), so labels are searchable and no glyph definitions
    repeat from plot to plot; the browser draws it with a local sans-serif font.
    """
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    return Markup(_METADATA.sub("", text[text.index("<svg"):]))


def _label(value: Any) -> str:
    """Data as matplotlib text: a ``$`` would start mathtext."""
    return str(value).replace("$", r"\$")


def cluster_color(cluster: int) -> str:
    """One colour per cluster, the same in every plot."""
    return f"C{int(cluster) % 10}"


def score_curves(scores: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Min and max of ``metric`` over seeds, per model, algorithm and k."""
    return (scores.dropna(subset=[metric]).groupby(["model", "algorithm", "k"])[metric]
            .agg(["min", "max"]).reset_index())


def scores_figure(scores: pd.DataFrame) -> Markup:
    """Silhouette and stability against k for one model: a line per algorithm, chosen k dashed.

    The line is the best seed's value (what the rule for k ranks), the band every seed's. The
    sweep's fits only: a sampled sweep's chosen fit scored on every user is in the chosen table.
    """
    scores = scores[~scores["all_users"].fillna(False).astype(bool)]
    fig = Figure(figsize=(9, 3.2))
    colors = {a: f"C{i}" for i, a in enumerate(sorted(scores["algorithm"].unique()))}
    chosen = scores[scores["chosen_k"].fillna(False).astype(bool)]
    for ax, metric, title in zip(fig.subplots(1, 2), ("silhouette", "stability"),
                                 ("silhouette (best seed; band: all seeds)",
                                  "stability (ARI across seeds)"), strict=True):
        for algorithm, curve in score_curves(scores, metric).groupby("algorithm"):
            color = colors[algorithm]
            ax.plot(curve["k"], curve["max"], marker="o", color=color, label=_label(algorithm))
            ax.fill_between(curve["k"], curve["min"], curve["max"], color=color, alpha=0.2)
            for k in chosen.loc[chosen["algorithm"] == algorithm, "k"].unique():
                ax.axvline(k, color=color, linestyle="--", linewidth=1)
        ax.set(title=title, xlabel="k")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize="small")
    return to_svg(fig)


def sizes_figure(sizes: pd.DataFrame) -> Markup:
    """Users per cluster; small clusters grey, hatched and labelled so nobody reads them as segments."""
    sizes = sizes.sort_values("cluster")
    clusters, users = sizes["cluster"].tolist(), sizes["users"].tolist()
    small = sizes["is_small"].astype(bool).tolist()
    fig = Figure(figsize=(7, 3))
    ax = fig.subplots()
    bars = ax.bar([str(c) for c in clusters], users,
                  color=["#cccccc" if s else cluster_color(c) for c, s in zip(clusters, small, strict=True)])
    for bar, s in zip(bars, small, strict=True):
        bar.set_hatch("//" if s else "")
    labels = [f"{u:,}" + (" small" if s else "") for u, s in zip(users, small, strict=True)]
    ax.bar_label(bars, labels=labels, fontsize="small")
    ax.set(xlabel="cluster", ylabel="users")
    ax.margins(y=0.12)
    return to_svg(fig)


def projection_figure(points: pd.DataFrame) -> Markup:
    """Users' vectors projected to 2-D by PCA (scikit-learn), one colour per cluster."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2, random_state=SAMPLE_SEED)
    xy = pca.fit_transform(np.vstack(points["vector"].to_numpy()).astype(float))
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    for cluster in sorted(points["cluster"].unique()):
        mask = (points["cluster"] == cluster).to_numpy()
        ax.scatter(xy[mask, 0], xy[mask, 1], s=6, alpha=0.6, color=cluster_color(cluster), label=str(cluster))
    ratio = pca.explained_variance_ratio_
    ax.set(xlabel=f"PC1 ({ratio[0]:.0%} of variance)", ylabel=f"PC2 ({ratio[1]:.0%} of variance)")
    ax.legend(title="cluster", fontsize="small", markerscale=2)
    return to_svg(fig)


def share_bars(rows: pd.DataFrame, title: str) -> Markup:
    """Top keys by share in the cluster, each against its share among all users."""
    rows = rows.nlargest(TOP_KEYS, "share").iloc[::-1]
    fig = Figure(figsize=(6, 0.3 * len(rows) + 1))
    ax = fig.subplots()
    y = np.arange(len(rows))
    ax.barh(y + 0.2, rows["share"], height=0.4, label="cluster")
    ax.barh(y - 0.2, rows["base_share"], height=0.4, color="#aaaaaa", label="all users")
    ax.set_yticks(y, [_label(k) for k in rows["key"]])
    ax.set(title=_label(title), xlabel="share")
    ax.legend(fontsize="small")
    return to_svg(fig)


def ordered(rows: pd.DataFrame) -> pd.DataFrame:
    """Hours numerically, weekdays Monday first, anything else by rank."""
    keys = rows["key"].astype(str)
    if keys.str.fullmatch(r"-?\d+").all():
        order = keys.astype(int)
    elif keys.str[:3].str.lower().isin(WEEKDAYS).all():
        order = keys.str[:3].str.lower().map(WEEKDAYS.index)
    else:
        order = rows["rank"]
    return rows.iloc[np.argsort(order.to_numpy(), kind="stable")]


def rhythm_figure(rows: pd.DataFrame, facet: str) -> Markup:
    """A time distribution (hour or weekday) of the cluster as bars, all users as a line."""
    rows = ordered(rows)
    fig = Figure(figsize=(4.5, 2.6))
    ax = fig.subplots()
    x = np.arange(len(rows))
    ax.bar(x, rows["share"], label="cluster")
    ax.plot(x, rows["base_share"], color="black", marker=".", label="all users")
    ax.set_xticks(x, [_label(k) for k in rows["key"]], fontsize="x-small")
    ax.set(title=facet, ylabel="share")
    ax.legend(fontsize="x-small")
    return to_svg(fig)


# -- template context: pandas in, plain values out ----------------------------------------------

def evaluation_context(evaluation: pd.DataFrame) -> list[dict]:
    """Model x metric as ``beha2vec evaluate`` prints it (session embeddings, then clusterings
    against personas); one value per pair even after appends."""
    table = comparison_table(evaluation.drop_duplicates(["model", "metric"], keep="last"))
    titles = ("Session embeddings", "Clusterings against the planted personas")
    return [{"title": title, "columns": list(part.columns),
             "rows": [(m, list(v)) for m, v in part.iterrows()]}
            for title, part in zip(titles, split_comparison(table), strict=True) if len(part)]


def scores_context(scores: pd.DataFrame) -> dict:
    """One figure per model and the chosen fit of each algorithm."""
    chosen = scores[scores["chosen"].fillna(False).astype(bool)].sort_values(["model", "algorithm"])
    columns = ["model", "algorithm", "k", "seed", "n_users", "silhouette", "stability", "smallest",
               "largest", "selected"]
    return {"figures": [(m, scores_figure(s)) for m, s in scores.groupby("model")],
            "chosen": chosen[columns].to_dict("records")}


def sizes_context(sizes: pd.DataFrame) -> dict:
    """The selected clustering (the first, if several are flagged) and its cluster sizes."""
    key = ["model", "algorithm", "k", "seed"]
    values, mine = next(iter(sizes.groupby(key)))
    selection = dict(zip(key, values, strict=True))
    return {"selection": selection, "figure": sizes_figure(mine), "users": int(mine["users"].sum()),
            "small": sorted(int(c) for c in mine.loc[mine["is_small"].astype(bool), "cluster"])}


def projection_context(points: pd.DataFrame) -> dict | None:
    """The PCA plot, or None when there are too few users or dimensions for two components."""
    if len(points) < 3 or min(len(v) for v in points["vector"]) < 2:
        return None
    return {"figure": projection_figure(points), "users": len(points)}


def _shares(rows: pd.DataFrame, n: int) -> list[dict]:
    return rows.nlargest(n, "share")[["key", "share", "base_share"]].to_dict("records")


def _distinctive(rows: pd.DataFrame) -> list[dict]:
    """Keys of every ``*_distinctive`` facet, most over-represented first."""
    top = rows[rows["facet"].str.endswith("_distinctive")].nlargest(TOP_KEYS, "lift")
    top = top.assign(facet=top["facet"].str.removesuffix("_distinctive"))
    return top[["facet", "key", "share", "base_share", "lift"]].to_dict("records")


def cluster_section(rows: pd.DataFrame, baseline: pd.DataFrame) -> dict:
    """Everything shown for one cluster, from its profile rows and the all-users rows."""
    facets = rows.groupby("facet")
    has = set(facets.groups)
    base_summary = baseline.loc[baseline["facet"] == "summary"].set_index("key")["value"]
    summary = rows.loc[rows["facet"] == "summary", ["key", "value"]].itertuples(index=False)
    top = next((f for f in TOP_FACETS if f in has), None)
    total = baseline["users"].max() if len(baseline) else None
    users = int(rows["users"].max())
    return {
        "cluster": int(rows["cluster"].iloc[0]), "users": users,
        "share": users / total if total else None, "is_small": bool(rows["is_small"].any()),
        "summary": [(k, v, base_summary.get(k)) for k, v in summary],
        "top": (top, share_bars(facets.get_group(top), f"top {top}s by share")) if top else None,
        "distinctive": _distinctive(rows),
        "rhythm": [rhythm_figure(facets.get_group(f), f) for f in RHYTHM_FACETS if f in has],
        "shares": [(f, _shares(facets.get_group(f), 5)) for f in SHARE_FACETS if f in has],
    }


def profiles_context(profiles: pd.DataFrame) -> dict:
    """Sections for every cluster but the baseline: regular clusters first, then small ones."""
    baseline = profiles[profiles["cluster"] == BASELINE]
    clusters = [cluster_section(rows, baseline)
                for _, rows in profiles[profiles["cluster"] != BASELINE].groupby("cluster")]
    first = profiles.iloc[0]
    return {"clustering": f"{first['model']} / {first['algorithm']} / k={first['k']}",
            "clusters": sorted(clusters, key=lambda c: (c["is_small"], c["cluster"]))}


def interpretations_context(interpretations: pd.DataFrame) -> list[dict]:
    """Replicate 0 of each cluster: its summary, keywords and the consistency across replicates."""
    first = interpretations[interpretations["replicate"] == 0].sort_values("cluster")
    replicates = interpretations.groupby("cluster")["replicate"].nunique()
    return [{"cluster": int(r.cluster), "summary": r.summary, "consistency": r.consistency,
             "keyword_overlap": getattr(r, "keyword_overlap", None),
             "summary_similarity": getattr(r, "summary_similarity", None),
             "replicates": int(replicates.get(r.cluster, 1)),
             "backend": " ".join(str(v) for v in (r.backend, r.model) if pd.notna(v)),
             "keywords": [str(k) for k in (r.keywords if r.keywords is not None else [])]}
            for r in first.itertuples()]


def comparisons_context(comparisons: pd.DataFrame) -> list[dict]:
    """Each compared pair: its sentence and the differences it rests on."""
    ordered = comparisons.sort_values(["cluster_a", "cluster_b"])
    return [{"a": int(r.cluster_a), "b": int(r.cluster_b), "summary": r.summary,
             "evidence": [str(e) for e in (r.evidence if r.evidence is not None else [])],
             "backend": " ".join(str(v) for v in (r.backend, r.model) if pd.notna(v))}
            for r in ordered.itertuples()]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def number(value: Any) -> str:
    """A table cell: a dash for missing, separators for counts and large values, 3 digits otherwise."""
    if _missing(value):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def render(context: dict) -> str:
    """The page from its context; autoescape on, and a missing key is an error, not a blank."""
    env = Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = number
    env.filters["pct"] = lambda v: "–" if _missing(v) else f"{v:.1%}"
    template = resources.files("beha2vec").joinpath("data", "report.html.j2").read_text("utf-8")
    return env.from_string(template).render(context)


# -- I/O: the lake in, index.html out -------------------------------------------------------------

def _sizes(lake: Lake) -> pd.DataFrame:
    return (lake.read("user_clusters").where(F.col("selected"))
            .groupBy("model", "algorithm", "k", "seed", "cluster")
            .agg(F.count("*").alias("users"), F.max("is_small").alias("is_small")).toPandas())


def _points(lake: Lake, selection: dict) -> pd.DataFrame:
    """A seeded sample of the selected model's users: the first by a hash of user_id, in Spark."""
    model = F.col("model") == selection["model"]
    clusters = (lake.read("user_clusters")
                .where(F.col("selected") & model & (F.col("algorithm") == selection["algorithm"]))
                .select("user_id", "cluster"))
    vectors = lake.read("user_vectors").where(model & F.col("vector").isNotNull())
    return (vectors.join(clusters, "user_id")
            .orderBy(F.xxhash64(F.lit(SAMPLE_SEED), F.col("user_id")), "user_id")
            .limit(MAX_POINTS).select("cluster", "vector").toPandas())


def report_context(lake: Lake) -> dict:
    """Read what exists and build every section; an absent or empty table leaves its section None."""
    present = {name for name in STAGE_OF if lake.exists(name)}
    small_tables = ("evaluation", "cluster_scores", "cluster_profiles", "cluster_interpretations",
                    "cluster_comparisons")
    frames = {name: lake.read(name).toPandas() for name in small_tables if name in present}
    frames = {name: frame for name, frame in frames.items() if len(frame)}
    sizes = _sizes(lake) if "user_clusters" in present else pd.DataFrame()
    clusters = sizes_context(sizes) if len(sizes) else None
    points = (_points(lake, clusters["selection"]) if clusters and "user_vectors" in present
              else pd.DataFrame())
    return {
        "lake": lake.root,
        "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "versions": [(name, lake.version(name) if name in present else None) for name in STAGE_OF],
        "stages": STAGE_OF, "max_points": MAX_POINTS, "sample_seed": SAMPLE_SEED,
        "evaluation": evaluation_context(frames["evaluation"]) if "evaluation" in frames else None,
        "scores": scores_context(frames["cluster_scores"]) if "cluster_scores" in frames else None,
        "clusters": clusters,
        "projection": projection_context(points) if len(points) else None,
        "profiles": profiles_context(frames["cluster_profiles"]) if "cluster_profiles" in frames else None,
        "interpretations": (interpretations_context(frames["cluster_interpretations"])
                            if "cluster_interpretations" in frames else None),
        "comparisons": (comparisons_context(frames["cluster_comparisons"])
                        if "cluster_comparisons" in frames else None),
    }


def build_report(lake: Lake, out_dir: str | Path | None = None) -> Path:
    """Write ``index.html`` into ``out_dir`` (default ``<lake root>/report``) and return its path.

    The page is written to a temporary file beside it and renamed, so a reader never sees half a
    report and a failed run leaves the previous one in place.
    """
    if out_dir is None and "://" in lake.root:
        raise ValueError(f"the lake at {lake.root} is not a local folder; give the report an out_dir")
    out = Path(out_dir if out_dir is not None else Path(lake.root) / "report")
    out.mkdir(parents=True, exist_ok=True)
    html = render(report_context(lake))
    index = out / "index.html"
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".index-", suffix=".html.tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(html)
        os.chmod(tmp, 0o644)
        os.replace(tmp, index)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return index
