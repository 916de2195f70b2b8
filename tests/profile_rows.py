"""Hand-made ``cluster_profiles`` rows for the offline interpreter, comparison and answerer tests.

Shares and base shares are given per key; lift and rank follow as the profile stage computes them.
"""

from __future__ import annotations

import pandas as pd

COLUMNS = ["model", "algorithm", "k", "cluster", "is_small", "users", "facet", "key", "value", "share",
           "base_share", "lift", "rank"]
WEEK = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def row(cluster: int, facet: str, key: str, *, value=None, share=None, base=None, rank=None,
        users: int = 100, small: bool = False) -> dict:
    lift = share / base if share is not None and base else None
    return dict(model="combined", algorithm="kmeans", k=4, cluster=cluster, is_small=small, users=users,
                facet=facet, key=key, value=value, share=share, base_share=base, lift=lift, rank=rank)


def visits(cluster: int, facet: str, keys: dict[str, tuple[float, float]], **kw) -> list[dict]:
    """Rows of ``facet`` (share, base share per key) and of ``facet_distinctive``, ranked as profile ranks."""
    by_share = sorted(keys, key=lambda k: (-keys[k][0], k))
    by_lift = sorted(keys, key=lambda k: (-keys[k][0] / keys[k][1], -keys[k][0], k))
    return ([row(cluster, facet, k, share=keys[k][0], base=keys[k][1], rank=i + 1, **kw)
             for i, k in enumerate(by_share)]
            + [row(cluster, f"{facet}_distinctive", k, share=keys[k][0], base=keys[k][1], rank=i + 1, **kw)
               for i, k in enumerate(by_lift)])


def hours(cluster: int, peaks: dict[int, float], **kw) -> list[dict]:
    """Hour rows against a flat baseline: ``peaks`` hours get their share, the others share the rest."""
    rest = (1 - sum(peaks.values())) / (24 - len(peaks))
    return [row(cluster, "hour", str(h), share=peaks.get(h, rest), base=1 / 24, rank=h + 1, **kw)
            for h in range(24)]


def weekdays(cluster: int, weekend: float, **kw) -> list[dict]:
    """Weekday rows with ``weekend`` as the Saturday + Sunday share, against a flat baseline."""
    shares = [(1 - weekend) / 5] * 5 + [weekend / 2] * 2
    return [row(cluster, "weekday", day, share=s, base=1 / 7, rank=i + 1, **kw)
            for i, (day, s) in enumerate(zip(WEEK, shares, strict=True))]


def shares(cluster: int, facet: str, values: dict[str, float], base: dict[str, float], **kw) -> list[dict]:
    """Rows of a facet of shares of users (device, country), ranked by share."""
    ranked = sorted(values, key=lambda k: (-values[k], k))
    return [row(cluster, facet, k, share=values[k], base=base.get(k), rank=i + 1, **kw)
            for i, k in enumerate(ranked)]


def summary(cluster: int, values: dict[str, float], **kw) -> list[dict]:
    return [row(cluster, "summary", k, value=v, **kw) for k, v in values.items()]


def frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS)
