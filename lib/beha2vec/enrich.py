"""Page theme and page type per visit: extra token streams for the sequence encoder.

A session's visits are their units (a registrable domain such as ``bbc.co.uk``, or a page path such
as ``/Google+Redesign/Apparel/Mens`` for one-site data). Units alone say little about what a
visitor was doing: two users who read news on different sites, or who both went from a product
page to the cart, look unrelated. Two coarse labels per visit give the encoder that signal:

* the *theme*: what the page is about (``news``, ``commerce``...; for one-site data its section);
* the *type*: what kind of page it is (``home``, ``product``, ``cart``...).

Each stream is ``off`` (every visit is :data:`OFF`), ``rules`` (below) or ``zero-shot`` (the
candidate label nearest to an embedding of the page's description, see :func:`describe_page`).

Theme rules: a domain unit gets its category from the domain→category map (``other`` when the map
lacks it); a path unit gets its first path segment, decoded and normalised (``home`` for ``/``);
``(not set)`` is ``unknown``.

Type rules look at the URL path (the unit's own path when there is no URL), decoded and
lower-cased, split into segments on ``/`` and into words on ``-``, ``_``, ``+``, ``.`` and other
punctuation. Words match whole (``scart`` is not ``cart``); the query string is ignored except for
a ``q=`` / ``query=`` parameter. A path of two segments or more whose last segment has three words
or more ends in a *title slug* (``/blog/best-cart-apps``): free text, so its words name no type.
The first row that matches wins:

=========  ==============================================================================
unknown    unit ``(not set)`` and no URL: nothing is known of the page
site       domain unit and no URL: the site is known, the page is not
home       no path segment (``/`` or an empty path), and no search parameter
checkout   checkout, order confirmation
cart       cart, basket, bag
search     search, find, a segment ``s`` (``/s?k=``), a ``q=`` or ``query=`` parameter
account    account, login, log in, signin, sign in, register, profile, a ``my-…`` segment
support    help, faq, support, returns, shipping
checkout   payment (after support: ``/help/payment`` is a help page)
info       about, contact, privacy, terms, careers
article    blog, news, article, story, post, or a date such as ``/2024/05/`` or ``-2024-05-``
product    product, item, sku, dp, a segment ``p``, ``products/<name>``, a last segment ending in
           an id (``-12345``, ``-sku00042``), a title slug two levels below a listing segment
category   category, collection, shop, catalog, products; or, on a site that the map calls
           commerce, any other path of one or two segments
page       anything else
=========  ==============================================================================

A segment containing ``@`` (an e-mail address) is dropped before any rule or description sees it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from urllib.parse import parse_qsl, unquote_plus, urlsplit

import numpy as np

from beha2vec.config import EnrichConfig
from beha2vec.features import NOT_SET, load_categories
from beha2vec.features import UNKNOWN as OTHER
from beha2vec.urls import registrable_domain

OFF = "(off)"
MODES = ("off", "rules", "zero-shot")
THEME_TEMPLATE = "a web page about {}"
TYPE_TEMPLATE = "a {}"
THEME_MAX_CHARS = 40
BATCH_SIZE = 64

_SEARCH_PARAMS = frozenset({"q", "query"})
_CHECKOUT = frozenset({"checkout", "orderconfirmation", "order confirmation"})
_CART = frozenset({"cart", "basket", "bag"})
_SEARCH = frozenset({"search", "find"})
_ACCOUNT = frozenset({"account", "accounts", "myaccount", "login", "log in", "signin", "sign in",
                      "register", "profile"})
_SUPPORT = frozenset({"help", "faq", "faqs", "support", "returns", "shipping"})
_PAYMENT = frozenset({"payment", "payments"})
_INFO = frozenset({"about", "contact", "privacy", "terms", "careers"})
_ARTICLE = frozenset({"blog", "news", "article", "articles", "story", "stories", "post", "posts"})
_PRODUCT = frozenset({"product", "item", "sku", "dp"})
_LISTING = frozenset({"category", "categories", "collection", "collections", "shop", "catalog",
                      "catalogue", "products"})
_MONTHS = frozenset({"jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"})
_YEAR = re.compile(r"(19|20)\d\d")
_WORD = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class _Page:
    """A visit's page as the rules see it: host, decoded path segments, and whether it searched."""

    host: str
    segments: tuple[str, ...]
    searched: bool

    @functools.cached_property
    def words(self) -> list[list[str]]:
        return [_words(s) for s in self.segments]

    @functools.cached_property
    def grams(self) -> set[str]:
        """Words and word pairs of the segments that may name a type: all but a title slug."""
        named = self.words[:-1] if _is_title_slug(self.words) else self.words
        return {g for words in named for g in (*words, *(f"{a} {b}" for a, b in pairwise(words)))}


def _words(segment: str) -> list[str]:
    return _WORD.findall(segment)


def _is_title_slug(words: list[list[str]]) -> bool:
    """A last segment of three words or more below another segment is a title, not a section name."""
    return len(words) >= 2 and len(words[-1]) >= 3


def _is_domain(unit: str) -> bool:
    return bool(unit) and unit != NOT_SET and not unit.startswith("/")


def _segments(path: str) -> tuple[str, ...]:
    """Decoded, lower-cased, non-empty path segments; any with an ``@`` (e-mail addresses) dropped."""
    decoded = (unquote_plus(s).strip().lower() for s in path.split("/"))
    return tuple(s for s in decoded if s and "@" not in s)


def _split_path(path: str) -> tuple[str, str, str]:
    """``("", path, query)`` of a path unit such as ``/search?q=x``."""
    path, _, query = path.partition("#")[0].partition("?")
    return "", path, query


def _split(url: str) -> tuple[str, str, str] | None:
    """``(host, path, query)`` of a URL, a scheme-less ``host/path`` or a bare path; None if unparsable."""
    text = url.strip()
    if text.startswith("/") and not text.startswith("//"):
        return _split_path(text)
    if "://" not in text and not text.startswith("//"):
        text = f"//{text}"
    try:
        parts = urlsplit(text)
    except ValueError:
        return None
    return (parts.hostname or "").removeprefix("www."), parts.path, parts.query


def _searched(query: str) -> bool:
    """Whether a query string holds a search parameter (``q=`` or ``query=``, even empty)."""
    return any(k.lower() in _SEARCH_PARAMS for k, _ in parse_qsl(query, keep_blank_values=True))


def _parse(unit: str, url: str | None) -> _Page | None:
    """The page of a visit: from its URL, else from a path unit; None when only a domain (or nothing)
    is known."""
    parts = _split(url) if url and url.strip() and url.strip() != NOT_SET else None
    if parts is None and unit.startswith("/"):
        parts = _split_path(unit)
    if parts is None:
        return None
    host, path, query = parts
    return _Page(host, _segments(path), _searched(query))


# --- page type rules --------------------------------------------------------------------------

def _is_dated(page: _Page) -> bool:
    """A year followed by a month anywhere in the path: ``/2024/05/``, ``/2024/feb/``, ``-2024-05-``."""
    words = [w for ws in page.words for w in ws]
    return any(_YEAR.fullmatch(y) and (m in _MONTHS or (m.isdigit() and 1 <= int(m) <= 12))
               for y, m in pairwise(words))


def _is_id(word: str) -> bool:
    """An identifier-like word: five characters or more, three of them digits (not a year)."""
    return len(word) >= 5 and sum(c.isdigit() for c in word) >= 3


def _is_product(page: _Page) -> bool:
    segments, words = page.segments, page.words
    listed = [i for i, ws in enumerate(words) if _LISTING.intersection(ws)]
    return bool(
        page.grams & _PRODUCT or "p" in segments or "products" in segments[:-1]
        or (words and len(words[-1]) >= 2 and _is_id(words[-1][-1]))
        or (_is_title_slug(words) and listed and listed[0] <= len(segments) - 3)
    )


def _is_account(page: _Page) -> bool:
    return bool(page.grams & _ACCOUNT) or any(len(ws) >= 2 and ws[0] == "my" for ws in page.words)


_TYPE_RULES: tuple[tuple[str, Callable[[_Page], bool]], ...] = (
    ("checkout", lambda p: bool(p.grams & _CHECKOUT)),
    ("cart", lambda p: bool(p.grams & _CART)),
    ("search", lambda p: p.searched or "s" in p.segments or bool(p.grams & _SEARCH)),
    ("account", _is_account),
    ("support", lambda p: bool(p.grams & _SUPPORT)),
    ("checkout", lambda p: bool(p.grams & _PAYMENT)),
    ("info", lambda p: bool(p.grams & _INFO)),
    ("article", lambda p: bool(p.grams & _ARTICLE) or _is_dated(p)),
    ("product", _is_product),
    ("category", lambda p: bool(p.grams & _LISTING)),
)


@functools.cache
def _bundled_categories() -> dict[str, str]:
    return load_categories()


def _page_type(unit: str, url: str | None, categories: dict[str, str]) -> str:
    page = _parse(unit, url)
    if page is None:
        return "site" if _is_domain(unit) else "unknown"
    if not page.segments and not page.searched:
        return "home"
    for label, applies in _TYPE_RULES:
        if applies(page):
            return label
    site = registrable_domain(page.host) if page.host else unit if _is_domain(unit) else ""
    if len(page.segments) <= 2 and categories.get(site) == "commerce":
        return "category"
    return "page"


def page_type_rule(unit: str, url: str | None) -> str:
    """The page type by the rules of the module docstring; shops are known by the bundled map."""
    return _page_type(unit, url, _bundled_categories())


# --- page theme rules -------------------------------------------------------------------------

def _normalise(segment: str) -> str:
    return " ".join(re.sub(r"[-_+]", " ", segment).split())[:THEME_MAX_CHARS].strip()


def page_theme_rule(unit: str, url: str | None, categories: dict[str, str]) -> str:
    """The domain's category, or a path unit's first segment. The unit alone decides (``url`` is
    not read), so that every visit of one unit has one theme."""
    if _is_domain(unit):
        return categories.get(registrable_domain(unit), OTHER)
    if not unit.startswith("/"):
        return "unknown"
    segments = _segments(_split_path(unit)[1])
    return _normalise(segments[0]) if segments else "home"


# --- zero-shot --------------------------------------------------------------------------------

def describe_page(unit: str, url: str | None) -> str:
    """What the model reads of a page: its host (or domain unit) and path words (``home`` for a root
    path), never the query string, the fragment or a segment with an ``@``."""
    page = _parse(unit, url)
    site = page.host if page and page.host else unit if _is_domain(unit) else ""
    words = [w for ws in page.words for w in ws] or ["home"] if page else []
    return " ".join([site, *words]).strip()


def _encode(model, texts: list[str]) -> np.ndarray:
    return model.encode(texts, batch_size=BATCH_SIZE, normalize_embeddings=True,
                        convert_to_numpy=True, show_progress_bar=False)


class _ZeroShot:
    """The nearest candidate label by cosine similarity; labels are embedded once."""

    def __init__(self, model, labels: list[str], template: str):
        self.labels = list(labels)
        self.vectors = _encode(model, [template.format(label) for label in labels])

    def classify(self, pages: np.ndarray) -> list[str]:
        return [self.labels[i] for i in (pages @ self.vectors.T).argmax(axis=1)]


# --- the labeller -----------------------------------------------------------------------------

def _check(key: str, mode: str, labels_key: str, labels: list[str]) -> None:
    """Fail on construction, naming the key, rather than labelling with a mistyped mode."""
    if mode not in MODES:
        raise ValueError(f"encoder.enrich.{key} must be one of {', '.join(MODES)}, got '{mode}'")
    if mode == "zero-shot" and not labels:
        raise ValueError(f"encoder.enrich.{key} is zero-shot but encoder.enrich.{labels_key} is empty")


def _cache_key(unit: str, url: str | None) -> tuple[str, str | None, bool]:
    """The unit, the URL without query string and fragment, and whether the query searched (the
    only part of a query that a rule reads)."""
    if not url:
        return unit, url, False
    base, _, query = url.partition("#")[0].partition("?")
    return unit, base, _searched(query)


class Labeller:
    """Labels (theme, type) for visits; caches per distinct (unit, url-without-query) so each is
    labelled once."""

    def __init__(self, conf: EnrichConfig, categories: dict[str, str] | None = None):
        _check("theme", conf.theme, "theme_labels", conf.theme_labels)
        _check("page_type", conf.page_type, "type_labels", conf.type_labels)
        self.conf = conf
        rules = "rules" in (conf.theme, conf.page_type)
        self.categories = categories if categories is not None else load_categories() if rules else {}
        self._cache: dict[tuple[str, str | None, bool], tuple[str, str]] = {}
        self._model = self._themes = self._types = None
        if "zero-shot" in (conf.theme, conf.page_type):
            import torch

            from beha2vec.embed import load_sentence_transformer

            # The loader sets torch's thread count for the whole process: keep the caller's.
            self._model, _ = load_sentence_transformer(conf.zero_shot_model, "auto", torch.get_num_threads())
            if conf.theme == "zero-shot":
                self._themes = _ZeroShot(self._model, conf.theme_labels, THEME_TEMPLATE)
            if conf.page_type == "zero-shot":
                self._types = _ZeroShot(self._model, conf.type_labels, TYPE_TEMPLATE)

    def label(self, units: list[str], urls: list[str | None]) -> tuple[list[str], list[str]]:
        """``(themes, types)``, one of each per visit."""
        if len(units) != len(urls):
            raise ValueError(f"units and urls differ in length: {len(units)} and {len(urls)}")
        keys = [_cache_key(u, url) for u, url in zip(units, urls, strict=True)]
        pending = {}
        for key, unit, url in zip(keys, units, urls, strict=True):
            if key not in self._cache:
                pending.setdefault(key, (unit, url))
        if pending:
            self._cache.update(zip(pending, self._label_pages(list(pending.values())), strict=True))
        return [self._cache[k][0] for k in keys], [self._cache[k][1] for k in keys]

    def _label_pages(self, pages: list[tuple[str, str | None]]) -> list[tuple[str, str]]:
        """``(theme, type)`` of distinct pages, with one model call for all their descriptions."""
        vectors = _encode(self._model, [describe_page(u, url) for u, url in pages]) if self._model else None
        themes = self._stream(self.conf.theme, self._themes, vectors, pages,
                              lambda u, url: page_theme_rule(u, url, self.categories))
        types = self._stream(self.conf.page_type, self._types, vectors, pages,
                             lambda u, url: _page_type(u, url, self.categories))
        return list(zip(themes, types, strict=True))

    @staticmethod
    def _stream(mode: str, zero_shot: _ZeroShot | None, vectors: np.ndarray | None,
                pages: list[tuple[str, str | None]], rule: Callable[[str, str | None], str]) -> list[str]:
        if mode == "off":
            return [OFF] * len(pages)
        if zero_shot is not None and vectors is not None:
            return zero_shot.classify(vectors)
        return [rule(u, url) for u, url in pages]
