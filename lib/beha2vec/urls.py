"""URL parts and registrable domains (Public Suffix List, bundled offline snapshot).

``bbc.co.uk`` stays ``bbc.co.uk``; ``news.bbc.co.uk`` becomes ``bbc.co.uk``. Query strings and
fragments are never kept in the path. Work is done once per distinct value in a batch, which is
what makes it cheap: GA4 data has a handful of hosts, panel data a few thousand.
"""

from __future__ import annotations

import functools
from urllib.parse import urlsplit

import pandas as pd


@functools.cache
def _extractor():
    import tldextract

    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


@functools.lru_cache(maxsize=200_000)
def registrable_domain(host: str) -> str:
    """The registrable domain of a host (eTLD+1), or the host itself for IPs and bare names."""
    host = host.strip().lower().rstrip(".")
    if not host:
        return ""
    parts = _extractor()(host)
    return parts.top_domain_under_public_suffix or parts.domain or host


def split_url(url: str | None, domain: str | None = None) -> tuple[str | None, str | None, str | None]:
    """``(host, registrable domain, path)`` of a URL; a bare ``domain`` stands in for a missing URL."""
    host = path = None
    if url:
        text = url.strip()
        try:
            parts = urlsplit(text if "://" in text or text.startswith("//") else f"//{text}")
            host = parts.hostname
            path = parts.path or "/"
        except ValueError:
            host = path = None
    if not host and domain:
        host = domain.strip().lower()
    if not host:
        return None, None, path
    return host, registrable_domain(host), path


def split_urls(urls: pd.Series, domains: pd.Series) -> pd.DataFrame:
    """Vectorised :func:`split_url` over two aligned Series, computed once per distinct pair."""
    keys = pd.DataFrame({"url": urls, "domain": domains})
    unique = keys.drop_duplicates()
    parts = [split_url(u, d) for u, d in zip(unique["url"], unique["domain"], strict=True)]
    table = pd.DataFrame(parts, columns=["host", "domain_out", "path"], index=unique.index)
    table = pd.concat([unique, table], axis=1)
    merged = keys.merge(table, on=["url", "domain"], how="left", sort=False)
    return pd.DataFrame(
        {"host": merged["host"].values, "domain": merged["domain_out"].values, "path": merged["path"].values}
    )
