"""Synthetic browsing data with planted personas, for demos, tests and scale benchmarks.

Two raw formats come out, the ones the ingest jobs read: a GA4 BigQuery export as ``bq extract``
writes it (one gzip NDJSON file per day) and a web-tracking panel log (one CSV per day). Every user
follows one persona, so clusters can be scored against ``truth_users.csv``, and
``truth_sessions.csv`` lets the sessionizer be checked.

How it stays fast, deterministic and bounded at 10M events:

* a *plan* (persona, ids and every session's start, page count and numbering) is drawn once from
  the seed with vectorised numpy; each worker process rebuilds the same plan from the arguments;
* the page views of the sessions that a block of users starts on a day are drawn from a generator
  seeded by ``(seed, day, block)``, so a day's file never depends on how work was split, and the
  file of day ``d`` redraws day ``d - 1`` to collect the sessions that ran past midnight;
* lines are assembled from pre-serialised JSON fragments, block by block, straight into gzip.

The site, its pages and the web's domains are fixed (the same for every seed); users differ.
"""

from __future__ import annotations

import functools
import gzip
import json
import multiprocessing
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

KINDS = ("ga4", "webtracking")
START = datetime(2024, 3, 1, tzinfo=UTC)
PAGEVIEWS_PER_USER_DAY = 1.5
BLOCK_USERS = 10_000

_SEC = 1_000_000
_HOUR = 3600 * _SEC
_DAY = 24 * _HOUR
_START_US = int(START.timestamp()) * _SEC
_MIN_GAP = 2 * _HOUR  # between session starts of one user: sessions are hours apart
_QUIET = 45 * 60 * _SEC  # a session's last page starts this long before the user's next session
_MAX_PAGES = 60
_DWELL_S = (3.0, 900.0)  # under the 30 min session gap, so a session never splits by accident
_RETURNING = 0.35  # users whose first visit predates the window (no first_visit event)
_NO_ENGAGEMENT = 0.04  # pages left without a user_engagement beacon (tab closed)
_EMPTY_ACTIVE = 0.05  # web-tracking rows without active_seconds
_QUERY_RATE = 0.12  # shop pages opened with a query string (sort, page, colour...)
_JITTER = 120 * _SEC  # light shuffle: events this close in time may swap places in a file
_PLAN, _USERS, _DRAW, _SHUFFLE = 1, 2, 3, 4  # generator stream tags, one per purpose

HOST = "shop.example.com"
STREAM_ID = "4178825601"
SECTIONS = (
    "home", "news_world", "news_business", "news_sports", "sale", "search",
    "cat_apparel", "cat_electronics", "cat_home", "cat_sports",
    "prod_apparel", "prod_electronics", "prod_home", "prod_sports",
    "reviews", "blog_business", "video", "live", "community", "account", "help",
    "cart", "checkout", "confirmation",
)
PRODUCT_SECTIONS = ("prod_apparel", "prod_electronics", "prod_home", "prod_sports")
CATEGORIES = (
    "news", "shopping", "deals", "tech", "sports", "streaming", "social", "business", "search",
    "longtail",
)
DEVICES = ("desktop", "mobile", "tablet")
# sections a user wanders into off-persona (the purchase funnel is reached only on purpose)
_WANDER = np.array([i for i, s in enumerate(SECTIONS)
                    if s not in ("cart", "checkout", "confirmation")])
_QUERY_SECTIONS = np.array([i for i, s in enumerate(SECTIONS)
                            if s == "sale" or s.startswith(("cat_", "prod_"))])
_PRODUCT_IDS = np.array([SECTIONS.index(s) for s in PRODUCT_SECTIONS])
_CHECKOUT = SECTIONS.index("checkout")
_LONGTAIL = CATEGORIES.index("longtail")
_LONGTAIL_NOISE = 0.4  # share of off-persona web visits that go to small, unlisted sites

Peaks = tuple[tuple[float, float, float], ...]


@dataclass(frozen=True)
class Persona:
    """One planted behaviour: what a user reads, at which hours, for how long, on which device.

    ``sections`` weighs the GA4 site's sections and ``categories`` the web's domain categories;
    ``hours``/``weekend_hours`` are (centre hour, width, weight) peaks; ``rate`` is relative
    sessions per day, scaled globally to hit the page-view target; ``weekend`` multiplies it on
    Saturdays and Sundays; ``pages`` is the mean pages per session, ``dwell`` the median seconds
    per page; ``purchase`` the chance a session ends in a purchase, ``cart`` the chance a product
    view adds to the cart, ``scroll`` the chance a page is read to 90%.
    """

    name: str
    sections: dict[str, float]
    categories: dict[str, float]
    hours: Peaks
    weekend_hours: Peaks
    weekend: float
    rate: float
    pages: float
    dwell: float
    dwell_sigma: float
    devices: tuple[float, float, float]
    purchase: float
    cart: float
    scroll: float


PERSONAS: tuple[Persona, ...] = (
    Persona(
        "news_junkie",
        {"news_world": .45, "news_business": .12, "news_sports": .08, "home": .12, "video": .06,
         "community": .05, "search": .04, "help": .02, "live": .02, "reviews": .04},
        {"news": .65, "search": .1, "social": .1, "business": .08, "sports": .07},
        ((7.0, 1.0, .35), (12.5, 1.0, .2), (21.0, 1.5, .3)), ((9.0, 2.0, .5), (20.0, 2.0, .4)),
        weekend=.8, rate=1.6, pages=4.0, dwell=45, dwell_sigma=.7, devices=(.3, .6, .1),
        purchase=.004, cart=.02, scroll=.65,
    ),
    Persona(
        "bargain_hunter",
        {"sale": .36, "search": .14, "cat_apparel": .06, "cat_electronics": .05, "cat_home": .05,
         "prod_apparel": .08, "prod_electronics": .06, "prod_home": .06, "cart": .07,
         "account": .04,
         "home": .03},
        {"shopping": .45, "deals": .3, "search": .15, "social": .1},
        ((12.5, 1.0, .3), (20.5, 1.5, .5)), ((11.0, 2.0, .5), (16.0, 2.0, .4)),
        weekend=1.5, rate=1.0, pages=8.0, dwell=18, dwell_sigma=.6, devices=(.35, .55, .1),
        purchase=.06, cart=.25, scroll=.3,
    ),
    Persona(
        "tech_researcher",
        {"prod_electronics": .3, "reviews": .3, "cat_electronics": .14, "search": .1,
         "community": .08, "help": .04, "news_business": .04},
        {"tech": .6, "search": .2, "streaming": .08, "shopping": .07, "news": .05},
        ((10.0, 1.5, .45), (15.0, 1.5, .4)), ((14.0, 3.0, .6),),
        weekend=.6, rate=.9, pages=7.0, dwell=110, dwell_sigma=.7, devices=(.8, .15, .05),
        purchase=.03, cart=.08, scroll=.55,
    ),
    Persona(
        "sports_fan",
        {"news_sports": .45, "cat_sports": .14, "prod_sports": .14, "live": .12, "video": .1,
         "community": .05},
        {"sports": .6, "streaming": .12, "social": .12, "search": .1, "news": .06},
        ((19.0, 1.5, .5), (22.0, 1.0, .3)), ((15.0, 2.0, .6), (20.0, 2.0, .3)),
        weekend=1.8, rate=1.1, pages=5.0, dwell=60, dwell_sigma=.7, devices=(.25, .65, .1),
        purchase=.01, cart=.05, scroll=.45,
    ),
    Persona(
        "night_streamer",
        {"video": .55, "live": .25, "community": .1, "home": .05, "search": .05},
        {"streaming": .75, "social": .12, "search": .08, "tech": .05},
        ((23.0, 1.5, .5), (1.5, 1.5, .4)), ((0.0, 2.0, .6), (22.0, 2.0, .3)),
        weekend=1.2, rate=.8, pages=3.0, dwell=320, dwell_sigma=.5, devices=(.3, .2, .5),
        purchase=.002, cart=.01, scroll=.15,
    ),
    Persona(
        "casual_shopper",
        {"cat_apparel": .2, "cat_home": .15, "prod_apparel": .2, "prod_home": .15, "home": .1,
         "cart": .08, "sale": .05, "account": .05, "help": .02},
        {"shopping": .5, "social": .22, "search": .1, "deals": .08, "streaming": .1},
        ((20.0, 1.5, .6), (13.0, 1.0, .2)), ((11.0, 2.0, .4), (16.0, 2.0, .4)),
        weekend=1.6, rate=.6, pages=6.0, dwell=40, dwell_sigma=.6, devices=(.4, .45, .15),
        purchase=.05, cart=.12, scroll=.4,
    ),
    Persona(
        "social_scroller",
        {"community": .6, "video": .15, "home": .1, "news_world": .1, "news_sports": .05},
        {"social": .7, "streaming": .12, "search": .08, "news": .05, "shopping": .05},
        ((8.0, 1.0, .2), (13.0, 1.0, .2), (17.5, 1.0, .2), (22.0, 1.0, .3)),
        ((11.0, 2.0, .3), (17.0, 2.0, .3), (22.5, 1.5, .3)),
        weekend=1.1, rate=2.0, pages=10.0, dwell=9, dwell_sigma=.6, devices=(.05, .9, .05),
        purchase=.003, cart=.02, scroll=.8,
    ),
    Persona(
        "business_reader",
        {"news_business": .45, "blog_business": .3, "news_world": .12, "help": .05, "account": .03,
         "home": .05},
        {"business": .6, "news": .22, "search": .12, "tech": .06},
        ((7.5, .7, .45), (12.5, .7, .2), (17.5, 1.0, .15)), ((9.0, 2.0, .4),),
        weekend=.3, rate=.9, pages=4.0, dwell=150, dwell_sigma=.6, devices=(.85, .1, .05),
        purchase=.005, cart=.01, scroll=.6,
    ),
)


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`synth` wrote: exact counts and the paths of the data and truth files."""

    kind: str
    users: int
    events: int
    sessions: int
    files: list[str]
    truth_users: str
    truth_sessions: str


@dataclass(frozen=True)
class _Spec:
    kind: str
    users: int
    days: int
    personas: int
    seed: int


# ---------------------------------------------------------------------------------------------
# Fixed vocabularies: the site's pages and the web's URLs.
# ---------------------------------------------------------------------------------------------

_WORDS = (
    "market", "climate", "summit", "budget", "storm", "court", "energy", "housing", "border",
    "festival", "museum", "transport", "chip", "space", "ocean", "wildfire", "trade", "tariff",
    "rates", "startup", "merger", "earnings", "policy", "garden", "recipe", "travel", "city",
    "river", "mountain", "coffee", "music", "film", "school", "health", "sleep", "running",
    "cloud", "python", "database", "privacy", "battery", "solar", "robot", "guide", "review",
    "winter", "spring", "island", "bridge", "harbor", "village", "league", "final", "record",
)
_ADJECTIVES = (
    "classic", "slim", "ultra", "pro", "eco", "smart", "vintage", "compact", "wireless",
    "premium", "lightweight", "urban", "trail", "cozy", "modern", "rugged", "mini", "deluxe",
    "everyday", "studio",
)
_PRODUCTS = {
    "apparel": (("t-shirt", "hoodie", "jeans", "sneakers", "rain-jacket", "chinos", "summer-dress",
                  "wool-scarf", "beanie", "denim-jacket", "polo", "cardigan", "leggings", "parka"),
                 45.0, .5),
    "electronics": (("headphones", "smartwatch", "laptop", "tablet", "4k-monitor", "keyboard",
                     "webcam", "bluetooth-speaker", "ssd", "router", "e-reader", "power-bank",
                     "drone", "action-camera", "earbuds"), 180.0, .8),
    "home": (("coffee-maker", "desk-lamp", "throw-pillow", "chef-knife", "dutch-oven",
              "bedding-set", "area-rug", "plant-pot", "air-purifier", "bookshelf", "kettle",
              "blender", "candle-set", "wall-clock"), 60.0, .6),
    "sports": (("running-shoes", "yoga-mat", "dumbbells", "tennis-racket", "football",
                "cycling-helmet", "water-bottle", "hiking-backpack", "swim-goggles", "jump-rope",
                "camping-tent", "ski-gloves", "golf-balls", "resistance-bands"), 50.0, .6),
}
_SUBJECTS = {
    "news_world": ("Storm", "Prime minister", "City council", "Coastal towns", "UN summit",
                   "Rail strike", "Wildfire", "Europe's capitals", "Court", "Zürich voters"),
    "news_business": ("Central bank", "Tech giant", "Retail sales", "Oil prices", "Start-up",
                      "Chipmaker", "Airline", "Housing market", "Shareholders", "Regulator"),
    "news_sports": ("Striker", "Home side", "Champions", "Coach", "Marathon runner", "Rookie",
                    "Title race", "Captain", "Grand prix", "Underdogs"),
}
_VERBS = ("warns over", "unveils", "delays", "wins", "faces", "backs", "cuts", "rejects",
          "braces for", "celebrates")
_OBJECTS = ("new budget plan", "rate cut", "record heatwave", "transfer deadline", "late comeback",
            "\"no U-turn\" pledge", "merger talks", "supply shortages", "cup final",
            "green energy push", "job cuts", "price war")
_QUERIES = ("", "sort=price_asc", "sort=newest", "page=2", "page=3", "color=black",
            "size=m", "ref=nav", "ref=home_banner")


@dataclass(frozen=True)
class _Source:
    """A traffic source: the user's first-touch ``traffic_source`` and a session's landing."""

    name: str
    medium: str
    source: str
    weight: float
    query: str
    referrer: str


_SOURCES = (
    _Source("(direct)", "(none)", "(direct)", .35, "", ""),
    _Source("(organic)", "organic", "google", .30, "", "https://www.google.com/"),
    _Source("(organic)", "organic", "bing", .04, "", "https://www.bing.com/"),
    _Source("spring_sale", "email", "newsletter", .08,
            "utm_source=newsletter&utm_medium=email&utm_campaign=spring_sale", ""),
    _Source("retargeting", "paid_social", "facebook", .06,
            "utm_source=facebook&utm_medium=paid_social&utm_campaign=retargeting"
            "&fbclid=IwAR2xQk7uVb3", "https://m.facebook.com/"),
    _Source("(referral)", "referral", "reddit.com", .05, "", "https://www.reddit.com/"),
    _Source("brand_search", "cpc", "google", .08,
            "gclid=Cj0KCQiA5rGuBhCnARIsAN11vgR&utm_source=google&utm_medium=cpc"
            "&utm_campaign=brand_search", "https://www.google.com/"),
    _Source("(organic)", "social", "instagram", .04, "", "https://l.instagram.com/"),
)
_SOURCE_CUM = np.cumsum([s.weight for s in _SOURCES]) / sum(s.weight for s in _SOURCES)

# (category, mobile_brand_name, mobile_model_name, operating_system, browser, browser_version)
_PROFILES = (
    ("desktop", "Google", "Chrome", "Windows", "Chrome", "122.0.6261.94"),
    ("desktop", "Apple", "Safari", "Macintosh", "Safari", "17.3"),
    ("desktop", "Microsoft", "Edge", "Windows", "Edge", "122.0.2365.66"),
    ("desktop", "Apple", "Chrome", "Macintosh", "Chrome", "122.0.6261.94"),
    ("desktop", "Mozilla", "Firefox", "Linux", "Firefox", "123.0"),
    ("mobile", "Apple", "iPhone", "iOS", "Safari", "17.3.1"),
    ("mobile", "Samsung", "SM-S918B", "Android", "Chrome", "122.0.6261.90"),
    ("mobile", "Google", "Pixel 7", "Android", "Chrome", "122.0.6261.90"),
    ("mobile", "Xiaomi", "Redmi Note 12", "Android", "Chrome", "121.0.6167.178"),
    ("mobile", "Apple", "iPhone", "iOS", "Chrome", "122.0.6261.89"),
    ("tablet", "Apple", "iPad", "iOS", "Safari", "17.2"),
    ("tablet", "Samsung", "SM-X700", "Android", "Chrome", "122.0.6261.90"),
    ("tablet", "Amazon", "Fire HD 10", "Android", "Silk", "120.3.1"),
)
_PROFILE_START = np.array([0, 5, 10])
_PROFILE_COUNT = np.array([5, 5, 3])

# (continent, country, region, city, language, weight)
_GEOS = (
    ("Americas", "United States", "California", "Los Angeles", "en-us", 6),
    ("Americas", "United States", "New York", "New York", "en-us", 6),
    ("Americas", "United States", "Texas", "Austin", "en-us", 3),
    ("Americas", "United States", "Illinois", "Chicago", "en-us", 3),
    ("Americas", "United States", "Washington", "Seattle", "en-us", 2),
    ("Americas", "Canada", "Ontario", "Toronto", "en-ca", 2),
    ("Americas", "Brazil", "State of São Paulo", "São Paulo", "pt-br", 2),
    ("Americas", "Mexico", "Mexico City", "Mexico City", "es-mx", 1),
    ("Europe", "United Kingdom", "England", "London", "en-gb", 5),
    ("Europe", "United Kingdom", "Scotland", "Edinburgh", "en-gb", 1),
    ("Europe", "Germany", "Berlin", "Berlin", "de-de", 2),
    ("Europe", "Germany", "Bavaria", "Munich", "de-de", 2),
    ("Europe", "France", "Île-de-France", "Paris", "fr-fr", 2),
    ("Europe", "Spain", "Community of Madrid", "Madrid", "es-es", 1),
    ("Europe", "Switzerland", "Zurich", "Zürich", "de-ch", 1),
    ("Europe", "Netherlands", "North Holland", "Amsterdam", "nl-nl", 1),
    ("Asia", "Japan", "Tokyo", "Tokyo", "ja-jp", 1),
    ("Asia", "India", "Maharashtra", "Mumbai", "en-in", 2),
    ("Asia", "Singapore", "(not set)", "Singapore", "en-sg", 1),
    ("Oceania", "Australia", "New South Wales", "Sydney", "en-au", 2),
)
_GEO_CUM = np.cumsum([g[5] for g in _GEOS]) / sum(g[5] for g in _GEOS)

# Web-tracking domains: (registrable domain, weight, "host/path" templates).
_Site = tuple[str, float, tuple[str, ...]]
_WEB: dict[str, tuple[_Site, ...]] = {
    "news": (
        ("bbc.co.uk", 3, ("www.bbc.co.uk/news/{w}-{n}", "news.bbc.co.uk/news/world-{n}",
                          "www.bbc.co.uk/news/articles/c{c}o")),
        ("nytimes.com", 2.5, ("www.nytimes.com/2024/{mm}/{dd}/{w}/{slug}.html",
                              "cooking.nytimes.com/recipes/{n}-{slug}")),
        ("theguardian.com", 2, ("www.theguardian.com/{w}/2024/{mon}/{dd}/{slug}",)),
        ("cnn.com", 2, ("edition.cnn.com/2024/{mm}/{dd}/{w}/{slug}/index.html",
                        "www.cnn.com/2024/{mm}/{dd}/{w}/{slug}/index.html")),
        ("reuters.com", 1.5, ("www.reuters.com/world/{w}/{slug}-2024-{mm}-{dd}/",)),
        ("apnews.com", 1, ("apnews.com/article/{slug}-{hex}",)),
        ("washingtonpost.com", 1, ("www.washingtonpost.com/{w}/2024/{mm}/{dd}/{slug}/",)),
    ),
    "shopping": (
        ("amazon.com", 4, ("www.amazon.com/dp/{asin}", "www.amazon.com/s?k={q}",
                           "www.amazon.com/{slug}/dp/{asin}")),
        ("amazon.co.uk", 1.5, ("www.amazon.co.uk/dp/{asin}", "www.amazon.co.uk/s?k={q}")),
        ("ebay.com", 2, ("www.ebay.com/itm/{n}{n}", "www.ebay.com/sch/i.html?_nkw={q}")),
        ("etsy.com", 1.5, ("www.etsy.com/listing/{n}/{slug}",)),
        ("walmart.com", 1.5, ("www.walmart.com/ip/{slug}/{n}",)),
        ("ikea.com", 1, ("www.ikea.com/us/en/p/{slug}-{n}/",)),
        ("zalando.de", 1, ("www.zalando.de/{slug}.html",)),
    ),
    "deals": (
        ("slickdeals.net", 2, ("slickdeals.net/f/{n}-{slug}",)),
        ("groupon.com", 1.5, ("www.groupon.com/deals/{slug}",)),
        ("retailmenot.com", 1.5, ("www.retailmenot.com/view/{w}.com",)),
        ("camelcamelcamel.com", 1, ("camelcamelcamel.com/product/{asin}",)),
        ("hotukdeals.com", 1, ("www.hotukdeals.com/deals/{slug}-{n}",)),
    ),
    "tech": (
        ("github.com", 3, ("github.com/{user}/{w}", "github.com/{user}/{w}/issues/{n3}",
                           "github.com/{user}/{w}/pull/{n3}", "gist.github.com/{user}/{hex}")),
        ("stackoverflow.com", 3, ("stackoverflow.com/questions/{n}/{slug}",)),
        ("arstechnica.com", 1, ("arstechnica.com/gadgets/2024/{mm}/{slug}/",)),
        ("theverge.com", 1, ("www.theverge.com/2024/{m}/{d}/{n}/{slug}",)),
        ("ycombinator.com", 1.5, ("news.ycombinator.com/item?id={n}",)),
        ("python.org", 1, ("docs.python.org/3/library/{w}.html",)),
        ("mozilla.org", 1, ("developer.mozilla.org/en-US/docs/Web/{W}/{W}",)),
    ),
    "sports": (
        ("espn.com", 3, ("www.espn.com/nba/story/_/id/{n}/{slug}",
                         "www.espn.com/soccer/match/_/gameId/{n}")),
        ("skysports.com", 2, ("www.skysports.com/football/news/{n3}/{n}/{slug}",)),
        ("nba.com", 1.5, ("www.nba.com/game/{w}-vs-{w}-{n}",)),
        ("bbc.co.uk", 1.5, ("www.bbc.co.uk/sport/football/{n}",)),
        ("uefa.com", 1, ("www.uefa.com/uefachampionsleague/news/{hex}--{slug}/",)),
        ("formula1.com", 1, ("www.formula1.com/en/latest/article/{slug}.{c}",)),
    ),
    "streaming": (
        ("youtube.com", 5, ("www.youtube.com/watch?v={code}", "m.youtube.com/watch?v={code}",
                            "www.youtube.com/results?search_query={q}", "www.youtube.com/@{user}")),
        ("netflix.com", 3, ("www.netflix.com/browse", "www.netflix.com/watch/{n}",
                            "www.netflix.com/title/{n}")),
        ("twitch.tv", 1.5, ("www.twitch.tv/{user}", "www.twitch.tv/videos/{n}")),
        ("spotify.com", 1.5, ("open.spotify.com/track/{code}{code}",
                              "open.spotify.com/playlist/{code}")),
        ("disneyplus.com", 1, ("www.disneyplus.com/series/{slug}/{c}",)),
        ("primevideo.com", 1, ("www.primevideo.com/detail/{c}/",)),
    ),
    "social": (
        ("reddit.com", 4, ("www.reddit.com/r/{w}/comments/{c}/{slug}/", "old.reddit.com/r/{w}/",
                           "www.reddit.com/r/{w}/")),
        ("facebook.com", 3, ("www.facebook.com/", "m.facebook.com/groups/{n}/",
                             "www.facebook.com/{user}/posts/{n}")),
        ("instagram.com", 2.5, ("www.instagram.com/p/{code}/", "www.instagram.com/{user}/")),
        ("x.com", 2, ("x.com/{user}/status/{n}{n}",)),
        ("tiktok.com", 2, ("www.tiktok.com/@{user}/video/{n}{n}",)),
        ("pinterest.com", 1, ("www.pinterest.com/pin/{n}/",)),
    ),
    "business": (
        ("ft.com", 2, ("www.ft.com/content/{hex}",)),
        ("bloomberg.com", 2, ("www.bloomberg.com/news/articles/2024-{mm}-{dd}/{slug}",)),
        ("wsj.com", 1.5, ("www.wsj.com/business/{slug}-{c}",)),
        ("linkedin.com", 2, ("www.linkedin.com/feed/", "www.linkedin.com/in/{user}/",
                             "www.linkedin.com/jobs/view/{n}/")),
        ("economist.com", 1, ("www.economist.com/{w}/2024/{mm}/{dd}/{slug}",)),
        ("cnbc.com", 1, ("www.cnbc.com/2024/{mm}/{dd}/{slug}.html",)),
        ("forbes.com", 1, ("www.forbes.com/sites/{user}/2024/{mm}/{dd}/{slug}/",)),
    ),
    "search": (
        ("google.com", 6, ("www.google.com/search?q={q}", "www.google.com/search?q={q}&hl=en",
                           "mail.google.com/mail/u/0/#inbox",
                           "docs.google.com/document/d/{code}/edit",
                           "www.google.com/maps/place/{W}")),
        ("bing.com", 1, ("www.bing.com/search?q={q}",)),
        ("duckduckgo.com", 1, ("duckduckgo.com/?q={q}",)),
        ("wikipedia.org", 2.5, ("en.wikipedia.org/wiki/{W}", "de.wikipedia.org/wiki/{W}")),
        ("live.com", 1, ("outlook.live.com/mail/0/inbox",)),
        ("weather.com", 1, ("weather.com/weather/today/l/{hex}",)),
    ),
}
_LONGTAIL_TLDS = ("com", "net", "org", "co.uk", "io", "de", "blog", "info")
_LONGTAIL_PATHS = ("/", "/blog/{slug}", "/{w}/{slug}", "/products/{w}", "/about")


@dataclass(frozen=True)
class _SiteVocab:
    """The GA4 site: every page's path and title, popularity, and its product if any."""

    paths: list[str]
    titles: list[str]  # JSON-encoded, quotes included
    section_of: np.ndarray
    product_of: np.ndarray  # product index, -1 for other pages
    cum: np.ndarray  # section s's pages cover (s, s + 1]: a page is searchsorted(cum, s + u)
    items: list[str]  # '{"item_id":...,"price_in_usd":P' of each product, without its close
    prices: np.ndarray
    product_cum: np.ndarray
    cart: int
    checkout: int
    confirmation: int


@dataclass(frozen=True)
class _WebVocab:
    """The web: full URLs, their registrable domains, popularity by category."""

    urls: list[str]
    domains: list[str]
    cum: np.ndarray  # category c's URLs cover (c, c + 1], like _SiteVocab.cum


def _popularity(n: int) -> np.ndarray:
    """Zipf-like weights: a few pages get most of the traffic, like real sites."""
    w = 1.0 / np.arange(1, n + 1) ** 0.9
    return w / w.sum()


def _stack_cum(groups: list[np.ndarray]) -> np.ndarray:
    """Cumulative weights of each group shifted by its index, its last entry exactly g + 1."""
    parts = []
    for g, w in enumerate(groups):
        c = g + np.cumsum(w / w.sum())
        c[-1] = g + 1.0
        parts.append(c)
    return np.concatenate(parts)


def _title(slug: str) -> str:
    return slug.replace("-", " ").capitalize()


@functools.cache
def _site() -> _SiteVocab:
    rng = np.random.default_rng(20240301)
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    pages: dict[str, list[tuple[str, str]]] = {s: [] for s in SECTIONS}
    items: list[str] = []
    prices: list[float] = []
    product_pages: dict[str, list[int]] = {}
    pages["home"].append(("/", "Example Shop – Everything for everyday life"))
    for section, subjects in _SUBJECTS.items():
        kind = section.split("_")[1]
        for k in range(300):
            headline = f"{pick(subjects)} {pick(_VERBS)} {pick(_OBJECTS)}"
            slug = re.sub(r"[^a-z0-9]+", "-", headline.lower().replace("ü", "u")).strip("-")
            pages[section].append((f"/news/{kind}/{slug}-{100000 + 7 * k}",
                                   f"{headline} | Example News"))
    for k, deal in enumerate(("spring-clearance", "flash-deals", "outlet", "bundle-offers",
                              "last-chance", "under-25", "student-discount", "weekend-deals",
                              "tech-week", "home-refresh", "outdoor-season", "members-only")):
        pages["sale"].append((f"/sale/{deal}", f"{_title(deal)} – up to {20 + 5 * k}% off"))
    for category, (nouns, median, sigma) in _PRODUCTS.items():
        pages[f"cat_{category}"].append(
            (f"/category/{category}", f"{category.title()} | Example Shop"))
        for sub in ("men", "women", "kids", "new-in", "bestsellers", "accessories"):
            pages[f"cat_{category}"].append(
                (f"/category/{category}/{sub}", f"{_title(sub)} {category} | Example Shop"))
        product_pages[category] = []
        for k in range(150):
            adjective, noun = pick(_ADJECTIVES), pick(nouns)
            name = f"{adjective.title()} {_title(noun).title()}"
            item_id = f"SKU-{category[0].upper()}{k:05d}"
            price = round(float(np.clip(median * rng.lognormal(0, sigma), 4, 3000))) - 0.01
            product_pages[category].append(len(items))
            items.append(json.dumps({"item_id": item_id, "item_name": name,
                                     "item_category": category.title(), "price_in_usd": price},
                                    separators=(",", ":"), ensure_ascii=False)[:-1])
            prices.append(price)
            pages[f"prod_{category}"].append(
                (f"/product/{adjective}-{noun}-{item_id.lower()}", f"{name} | Example Shop"))
        for _ in range(20):
            words = f"{pick(_ADJECTIVES)}+{pick(nouns)}".replace("-", "+")
            pages["search"].append((f"/search?q={words}",
                                    f'Search results for "{words.replace("+", " ")}"'))
    for k in range(120):
        noun = pick(_PRODUCTS["electronics"][0])
        slug = f"{pick(_ADJECTIVES)}-{noun}-{pick(_WORDS)}-test-{k}"
        pages["reviews"].append((f"/blog/reviews/{slug}",
                                 f"Review: the {_title(slug)} – is it worth it?"))
        slug = f"{pick(_WORDS)}-{pick(_WORDS)}-{pick(_WORDS)}-{k}"
        pages["blog_business"].append((f"/blog/business/{slug}",
                                       f"How small retailers handle {_title(slug).lower()}"))
    for k in range(150):
        slug = f"{pick(_WORDS)}-{pick(_WORDS)}-episode-{k % 12 + 1}"
        pages["video"].append((f"/video/{slug}", f"{_title(slug)} | Example TV"))
    for channel in ("news-24", "matchday", "studio-live", "gaming", "music-live", "kids",
                    "cooking-live", "market-watch", "late-night", "replay", "concerts", "esports"):
        pages["live"].append((f"/live/{channel}", f"Live: {_title(channel)}"))
    for k in range(200):
        slug = f"{pick(_WORDS)}-{pick(_WORDS)}-{pick(_WORDS)}"
        pages["community"].append((f"/community/t/{slug}/{4000 + 13 * k}",
                                   f"{_title(slug)} - Example Community"))
    for path in ("/account", "/account/orders", "/account/wishlist", "/account/settings",
                 "/account/addresses"):
        pages["account"].append((path, "My account | Example Shop"))
    for k in range(20):
        slug = f"{pick(_WORDS)}-{pick(('returns', 'shipping', 'warranty', 'payment', 'sizes'))}"
        pages["help"].append((f"/help/{slug}-{k}", f"Help: {_title(slug)}"))
    pages["cart"].append(("/cart", "Your cart | Example Shop"))
    for path, title in (("/checkout", "Checkout"), ("/checkout/shipping", "Shipping"),
                        ("/checkout/payment", "Payment")):
        pages["checkout"].append((path, f"{title} | Example Shop"))
    pages["confirmation"].append(("/checkout/confirmation", "Thank you for your order!"))

    paths, titles, section_of, product_of, weights = [], [], [], [], []
    for s, section in enumerate(SECTIONS):
        category = section[5:] if section in PRODUCT_SECTIONS else None
        for k, (path, title) in enumerate(pages[section]):
            paths.append(path)
            titles.append(json.dumps(title, ensure_ascii=False))
            section_of.append(s)
            product_of.append(product_pages[category][k] if category else -1)
        weights.append(_popularity(len(pages[section])))
    product_weights = np.concatenate([_popularity(len(v)) for v in product_pages.values()])
    return _SiteVocab(
        paths=paths, titles=titles, section_of=np.array(section_of),
        product_of=np.array(product_of), cum=_stack_cum(weights),
        items=items, prices=np.array(prices),
        product_cum=_stack_cum([product_weights]),
        cart=paths.index("/cart"), checkout=paths.index("/checkout"),
        confirmation=paths.index("/checkout/confirmation"),
    )


def _fill(template: str, rng: np.random.Generator) -> str:
    """A URL from a template: ``{slug}``, ``{n}``, ``{q}`` and the like become random parts."""
    def word() -> str:
        return _WORDS[int(rng.integers(len(_WORDS)))]

    alnum = "abcdefghijklmnopqrstuvwxyz0123456789"
    parts: dict[str, Callable[[], str]] = {
        "w": word,
        "W": lambda: word().title() + ("_" + word() if rng.random() < .4 else ""),
        "slug": lambda: "-".join(word() for _ in range(int(rng.integers(3, 7)))),
        "q": lambda: "+".join(word() for _ in range(int(rng.integers(1, 4)))),
        "n": lambda: str(int(rng.integers(10_000, 99_999_999))),
        "n3": lambda: str(int(rng.integers(1, 9999))),
        "c": lambda: "".join(alnum[i] for i in rng.integers(0, 36, 10)),
        "code": lambda: "".join(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[i]
            for i in rng.integers(0, 64, 11)),
        "hex": lambda: "".join("0123456789abcdef"[i] for i in rng.integers(0, 16, 16)),
        "asin": lambda: "B0" + "".join(alnum.upper()[i] for i in rng.integers(0, 36, 8)),
        "user": lambda: word() + str(int(rng.integers(1, 999))),
        "mm": lambda: "02",
        "m": lambda: "2",
        "mon": lambda: "feb",
        "dd": lambda: f"{int(rng.integers(1, 29)):02d}",
        "d": lambda: str(int(rng.integers(1, 29))),
    }
    return re.sub(r"\{(\w+)\}", lambda m: parts[m.group(1)](), template)


@functools.cache
def _web() -> _WebVocab:
    rng = np.random.default_rng(20240302)
    longtail: list[_Site] = []
    seen: set[str] = set()
    while len(longtail) < 400:
        first, second = rng.choice(len(_WORDS), 2, replace=False)
        domain = f"{_WORDS[first]}{_WORDS[second]}.{_LONGTAIL_TLDS[int(rng.integers(8))]}"
        if domain not in seen:
            seen.add(domain)
            host = f"www.{domain}" if rng.random() < .5 else domain
            longtail.append((domain, 1.0, tuple(host + p for p in _LONGTAIL_PATHS)))
    urls: list[str] = []
    domains: list[str] = []
    groups: list[np.ndarray] = []
    for category in CATEGORIES:
        sites = longtail if category == "longtail" else _WEB[category]
        per_site = 6 if category == "longtail" else 60
        weights: list[np.ndarray] = []
        total = sum(weight for _, weight, _ in sites)
        for domain, weight, templates in sites:
            host = templates[0].split("/", 1)[0]
            found = [f"https://{host}/"] + [
                "https://" + _fill(templates[int(rng.integers(len(templates)))], rng)
                for _ in range(per_site)]
            urls.extend(found)
            domains.extend([domain] * len(found))
            weights.append(_popularity(len(found)) * weight / total)
        groups.append(np.concatenate(weights))
    return _WebVocab(urls=urls, domains=domains, cum=_stack_cum(groups))


# ---------------------------------------------------------------------------------------------
# The plan: users and their sessions.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """Every user's persona and ids, and every session, sorted by (user, start)."""

    persona: np.ndarray
    client: np.ndarray  # unique random client number (user_pseudo_id / panelist_id)
    first_touch: np.ndarray  # µs
    user: np.ndarray  # per session from here on
    start: np.ndarray  # µs, also the first page view's timestamp
    day: np.ndarray
    pages: np.ndarray  # planned page views; the quiet time before the next session may cut them
    number: np.ndarray  # ga_session_number
    ordinal: np.ndarray  # session_no in the truth: 1.. within the window
    first_visit: np.ndarray
    bundle: np.ndarray  # event_bundle_sequence_id of the session's first page, minus one
    limit: np.ndarray  # µs: pages starting at or after this are not viewed
    blocks: np.ndarray  # session index where each block of BLOCK_USERS users starts


def _hour_weights(peaks: Peaks) -> np.ndarray:
    """Hour-of-day weights: circular Gaussian peaks over a small floor (nobody never browses)."""
    hours = np.arange(24) + 0.5
    w = np.full(24, 0.01)
    for centre, width, weight in peaks:
        dist = np.abs(hours - centre)
        dist = np.minimum(dist, 24 - dist)
        w += weight * np.exp(-0.5 * (dist / width) ** 2)
    return w


def _solve_scale(c: np.ndarray, m: np.ndarray, target: float) -> float:
    """Rate scale s with sum(m * (s c + exp(-s c))) == target: expected page views, counting
    the one session forced on a user who would otherwise have none."""
    if float(np.sum(m)) >= target:
        return 0.0
    lo, hi = 0.0, target / float(np.sum(m * c))
    for _ in range(50):
        mid = (lo + hi) / 2
        if float(np.sum(m * (mid * c + np.exp(-mid * c)))) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _plan(spec: _Spec) -> _Plan:
    rng = np.random.default_rng([spec.seed, _PLAN])
    n, n_days = spec.users, spec.days
    templates = PERSONAS[: spec.personas]
    persona = rng.permutation(np.arange(n) % spec.personas)
    activity = rng.lognormal(-0.18, 0.6, n)
    returning = rng.random(n) < _RETURNING
    prior = np.where(returning, rng.geometric(0.15, n), 0)
    prior_bundles = prior * rng.integers(3, 9, n)
    back = (rng.uniform(1, 400, n) * _DAY).astype(np.int64)
    client = rng.choice(2_000_000_000, n, replace=False).astype(np.int64) + 100_000_000

    weekend = np.array([(START + timedelta(days=d)).weekday() >= 5 for d in range(n_days)])
    rates = np.array([p.rate for p in templates])[:, None] * np.where(
        weekend[None, :], np.array([p.weekend for p in templates])[:, None], 1.0)
    mean_pages = np.array([p.pages for p in templates])
    scale = _solve_scale(activity * rates.sum(1)[persona], mean_pages[persona],
                         PAGEVIEWS_PER_USER_DAY * n * n_days)
    users, days = [], []
    total = np.zeros(n, dtype=np.int64)
    for d in range(n_days):
        count = rng.poisson(scale * activity * rates[persona, d])
        total += count
        users.append(np.repeat(np.arange(n), count))
        days.append(np.full(int(count.sum()), d))
    idle = np.flatnonzero(total == 0)
    day_cum = np.cumsum(rates / rates.sum(1, keepdims=True), axis=1)
    users.append(idle)
    days.append(np.minimum((day_cum[persona[idle]] < rng.random(len(idle))[:, None]).sum(1),
                           n_days - 1))
    user, day = np.concatenate(users), np.concatenate(days)

    hour_cum = _stack_cum([_hour_weights(peaks) for p in templates
                           for peaks in (p.hours, p.weekend_hours)])
    group = 2 * persona[user] + weekend[day]
    hour = np.searchsorted(hour_cum, group + rng.random(len(user)), side="right") - 24 * group
    start = (_START_US + day * _DAY + hour * _HOUR
             + rng.integers(0, _HOUR, len(user))).astype(np.int64)
    order = np.lexsort((start, user))
    user, day, start = user[order], day[order], start[order]
    same = user[1:] == user[:-1]
    keep = np.r_[True, ~(same & (start[1:] - start[:-1] < _MIN_GAP))]
    user, day, start = user[keep], day[keep], start[keep]

    pages = np.minimum(rng.geometric(1.0 / mean_pages[persona[user]]), _MAX_PAGES)
    index = np.arange(len(user))
    first = np.r_[True, user[1:] != user[:-1]]
    last = np.r_[user[1:] != user[:-1], True]
    head = np.maximum.accumulate(np.where(first, index, 0))
    rank = index - head
    before = np.cumsum(pages) - pages
    end = _START_US + n_days * _DAY
    limit = np.where(last, end, np.minimum(np.r_[start[1:], end] - _QUIET, end))
    first_touch = np.where(returning, _START_US - back, start[first])
    return _Plan(
        persona=persona, client=client, first_touch=first_touch, user=user, start=start, day=day,
        pages=pages, number=prior[user] + rank + 1, ordinal=rank + 1,
        first_visit=~returning[user] & first, bundle=prior_bundles[user] + before - before[head],
        limit=limit,
        blocks=np.searchsorted(user, np.arange(_n_blocks(n) + 1) * BLOCK_USERS),
    )


def _n_blocks(users: int) -> int:
    return -(-users // BLOCK_USERS)


def _user_id(kind: str, client: int, first_touch: int) -> str:
    """GA4's client id (``random.first-touch-seconds``) or an 8-hex-digit panelist id."""
    return f"{client}.{first_touch // _SEC}" if kind == "ga4" else f"{client:08x}"


# ---------------------------------------------------------------------------------------------
# Per block of users: traits, then the pages of the sessions started on one day.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Users:
    """Traits of one block of users, drawn from (seed, block) so every day agrees on them."""

    lo: int
    ids: list[str]
    cum: np.ndarray  # personal affinity over sections (ga4) or categories (webtracking)
    noise: np.ndarray  # share of visits to pages outside the persona
    dwell: np.ndarray  # personal dwell multiplier
    device: np.ndarray  # DEVICES index
    profile: np.ndarray  # _PROFILES index
    geo: np.ndarray
    source: np.ndarray


@functools.cache
def _affinity(kind: str, personas: int) -> np.ndarray:
    names = SECTIONS if kind == "ga4" else CATEGORIES
    rows = [[(p.sections if kind == "ga4" else p.categories).get(x, 0.0) for x in names]
            for p in PERSONAS[:personas]]
    w = np.array(rows)
    return w / w.sum(1, keepdims=True)


def _block_users(spec: _Spec, plan: _Plan, block: int) -> _Users:
    rng = np.random.default_rng([spec.seed, _USERS, block])
    lo = block * BLOCK_USERS
    hi = min(spec.users, lo + BLOCK_USERS)
    persona = plan.persona[lo:hi]
    m = hi - lo
    base = _affinity(spec.kind, spec.personas)[persona]
    w = rng.gamma(np.where(base > 0, base * 40, 1.0)) * (base > 0)  # personal, same support
    cum = np.cumsum(w / w.sum(1, keepdims=True), axis=1)
    cum[:, -1] = 1.0
    device_cum = np.cumsum([p.devices for p in PERSONAS[: spec.personas]], axis=1)
    device = np.minimum((device_cum[persona] < rng.random(m)[:, None]).sum(1), 2)
    profile = _PROFILE_START[device] + (rng.random(m) * _PROFILE_COUNT[device]).astype(np.int64)
    return _Users(
        lo=lo,
        ids=[_user_id(spec.kind, c, f) for c, f in
             zip(plan.client[lo:hi].tolist(), plan.first_touch[lo:hi].tolist(), strict=True)],
        cum=cum, noise=rng.uniform(0.2, 0.3, m), dwell=rng.lognormal(0, 0.25, m), device=device,
        profile=profile, geo=np.searchsorted(_GEO_CUM, rng.random(m), side="right"),
        source=np.searchsorted(_SOURCE_CUM, rng.random(m), side="right"),
    )


@dataclass(frozen=True)
class _Pages:
    """The pages (visits) of the sessions one block of users starts on one day, time ordered
    within each session and cut where the plan says the session stops."""

    sessions: np.ndarray  # plan session indices
    ps: np.ndarray  # per page: position in ``sessions``
    ordinal: np.ndarray
    ts: np.ndarray  # µs
    dwell: np.ndarray  # µs
    page: np.ndarray  # site page (ga4) or URL (webtracking)
    query: np.ndarray  # ga4: index into _query_strings(), 0 for none
    item: np.ndarray  # ga4: the product a page's ecommerce events carry
    extra_item: np.ndarray  # ga4: a second product in the purchase, -1 for none
    quantity: np.ndarray
    flags: dict[str, np.ndarray]
    engagement_ms: np.ndarray
    active: np.ndarray  # webtracking: active seconds, -1 for empty
    channel: np.ndarray  # per session: _SOURCES index of how it arrived
    device: np.ndarray  # per session: DEVICES index


@functools.cache
def _query_strings() -> tuple[str, ...]:
    return _QUERIES + tuple(s.query for s in _SOURCES)


def _segment_offsets(step: np.ndarray, first: np.ndarray, ps: np.ndarray) -> np.ndarray:
    """Exclusive cumulative sum of ``step`` restarted at each session's first page."""
    before = np.cumsum(step) - step
    return before - before[first][ps]


def _draw_pages(spec: _Spec, plan: _Plan, users: _Users, day: int, block: int) -> _Pages:
    """Everything random about the pages, drawn in one fixed order from (seed, day, block):
    the file of day ``d`` and the one of ``d + 1`` (for sessions past midnight) agree."""
    rng = np.random.default_rng([spec.seed, _DRAW, day, block])
    lo, hi = plan.blocks[block], plan.blocks[block + 1]
    sessions = lo + np.flatnonzero(plan.day[lo:hi] == day)
    n = plan.pages[sessions]
    ps = np.repeat(np.arange(len(sessions)), n)
    first = np.cumsum(n) - n
    ordinal = np.arange(len(ps)) - first[ps]
    local = plan.user[sessions][ps] - users.lo
    templates = PERSONAS[: spec.personas]
    persona = plan.persona[plan.user[sessions]]
    pp = persona[ps]
    size = len(ps)

    median = np.log([p.dwell for p in templates])
    sigma = np.array([p.dwell_sigma for p in templates])
    dwell_s = np.clip(np.exp(median[pp] + sigma[pp] * rng.standard_normal(size))
                      * users.dwell[local], *_DWELL_S)
    step = np.round((dwell_s + rng.uniform(0.3, 4.0, size)) * _SEC).astype(np.int64)
    ts = plan.start[sessions][ps] + _segment_offsets(step, first, ps)
    u = rng.random((10, size))
    us = rng.random((3, len(sessions)))

    noise = u[0] < users.noise[local]
    choice = (users.cum[local] < u[1][:, None]).sum(1)
    channel = np.where(us[1] < 0.5, users.source[plan.user[sessions] - users.lo],
                       np.searchsorted(_SOURCE_CUM, (us[1] - 0.5) * 2, side="right"))
    switch = us[2] < 0.2
    primary = users.device[plan.user[sessions] - users.lo]
    device = np.where(switch, (primary + 1 + (us[2] * 10).astype(np.int64)) % 3, primary)
    flags: dict[str, np.ndarray] = {}
    zeros = np.zeros(size, dtype=np.int64)
    query = item = extra_item = quantity = engagement_ms = active = zeros
    if spec.kind == "ga4":
        site = _site()
        section = np.where(noise, _WANDER[(u[1] * len(_WANDER)).astype(np.int64)], choice)
        buy = (us[0] < np.array([p.purchase for p in templates])[persona]) & (n >= 4)
        back = n[ps] - 1 - ordinal  # pages left to the end of the session
        funnel = buy[ps] & (back <= 3)  # product, cart, checkout, confirmation
        shop = _affinity("ga4", spec.personas)[:, _PRODUCT_IDS] + 0.05
        shop_cum = np.cumsum(shop / shop.sum(1, keepdims=True), axis=1)
        shop_pick = np.minimum((shop_cum[pp] < u[1][:, None]).sum(1), len(_PRODUCT_IDS) - 1)
        section = np.where(funnel & (back == 3), _PRODUCT_IDS[shop_pick], section)
        page = np.searchsorted(site.cum, section + u[2], side="right")
        for steps, special in ((2, site.cart), (1, site.checkout), (0, site.confirmation)):
            page = np.where(funnel & (back == steps), special, page)
        fallback = np.searchsorted(site.product_cum, u[8], side="right")
        item = site.product_of[page]
        funnel_item = item[np.arange(size) - np.where(funnel, 3 - back, 0)]
        item = np.where(item >= 0, item, np.where(funnel, funnel_item, fallback))
        on_query = (u[3] < _QUERY_RATE) & np.isin(site.section_of[page], _QUERY_SECTIONS)
        in_page = 1 + (u[3] / _QUERY_RATE * (len(_QUERIES) - 1)).astype(np.int64)
        query = np.where(on_query, in_page, 0)
        campaign = np.array([bool(s.query) for s in _SOURCES])[channel[ps]] & (ordinal == 0)
        query = np.where(campaign, len(_QUERIES) + channel[ps], query)
        is_product = site.product_of[page] >= 0
        scroll_p = np.array([p.scroll for p in templates])[pp]
        flags = {
            "view_item": is_product,
            "add_to_cart": is_product & ((u[5] < np.array([p.cart for p in templates])[pp])
                                         | (funnel & (back == 3))),
            "begin_checkout": site.section_of[page] == _CHECKOUT,
            "purchase": page == site.confirmation,
            "scroll": (u[4] < scroll_p) & (dwell_s > 8),
            "scroll_at": u[4] / scroll_p,  # uniform on [0, 1) where scroll is set
            "user_engagement": u[6] >= _NO_ENGAGEMENT,
        }
        extra_item = np.where(u[9] > 0.7, fallback, -1)
        quantity = 1 + (u[9] < 0.25)
        engagement_ms = (dwell_s * 1000 * (0.55 + 0.45 * u[7])).astype(np.int64)
    else:
        web = _web()
        listed = ((u[1] - _LONGTAIL_NOISE) / (1 - _LONGTAIL_NOISE) * _LONGTAIL).astype(np.int64)
        wander = np.where(u[1] < _LONGTAIL_NOISE, _LONGTAIL, listed)
        page = np.searchsorted(web.cum, np.where(noise, wander, choice) + u[2], side="right")
        active = np.where(u[6] < _EMPTY_ACTIVE, -1,
                          np.round(dwell_s * (0.3 + 0.7 * u[7])).astype(np.int64))

    keep = (ts < plan.limit[sessions][ps]) | (ordinal == 0)
    return _Pages(
        sessions=sessions, ps=ps[keep], ordinal=ordinal[keep], ts=ts[keep],
        dwell=np.round(dwell_s * _SEC).astype(np.int64)[keep], page=page[keep],
        query=query[keep], item=item[keep], extra_item=extra_item[keep], quantity=quantity[keep],
        flags={k: v[keep] for k, v in flags.items()}, engagement_ms=engagement_ms[keep],
        active=active[keep], channel=channel, device=device,
    )


# ---------------------------------------------------------------------------------------------
# Events and lines.
# ---------------------------------------------------------------------------------------------

_EVENTS = ("first_visit", "session_start", "page_view", "view_item", "scroll", "add_to_cart",
           "begin_checkout", "purchase", "user_engagement")
_FIRST_VISIT, _SESSION_START, _PAGE_VIEW, _VIEW_ITEM, _SCROLL, _ADD_TO_CART, _BEGIN_CHECKOUT, \
    _PURCHASE, _USER_ENGAGEMENT = range(len(_EVENTS))


@dataclass(frozen=True)
class _Events:
    """Events of a _Pages: the page each belongs to, its kind and its timestamp."""

    page: np.ndarray
    code: np.ndarray
    ts: np.ndarray


def _events(spec: _Spec, plan: _Plan, pages: _Pages) -> _Events:
    """GA4: the events each page view fires, timed within its dwell. Web tracking: a row a page."""
    if spec.kind != "ga4":
        return _Events(np.arange(len(pages.ts)), np.full(len(pages.ts), _PAGE_VIEW), pages.ts)
    first = pages.ordinal == 0
    f = pages.flags
    dwell = pages.dwell
    masks = (
        (_FIRST_VISIT, first & plan.first_visit[pages.sessions][pages.ps], 0),
        (_SESSION_START, first, 0),
        (_PAGE_VIEW, np.ones(len(dwell), dtype=bool), 0),
        (_VIEW_ITEM, f["view_item"], (dwell * 0.1).astype(np.int64)),
        (_SCROLL, f["scroll"], (dwell * (0.3 + 0.6 * f["scroll_at"])).astype(np.int64)),
        (_ADD_TO_CART, f["add_to_cart"], (dwell * 0.6).astype(np.int64)),
        (_BEGIN_CHECKOUT, f["begin_checkout"], (dwell * 0.1).astype(np.int64)),
        (_PURCHASE, f["purchase"], (dwell * 0.2).astype(np.int64)),
        (_USER_ENGAGEMENT, f["user_engagement"], dwell),
    )
    page, code, ts = [], [], []
    for c, mask, offset in masks:
        idx = np.flatnonzero(mask)
        page.append(idx)
        code.append(np.full(len(idx), c))
        ts.append(pages.ts[idx] + (offset[idx] if isinstance(offset, np.ndarray) else offset))
    return _Events(np.concatenate(page), np.concatenate(code), np.concatenate(ts))


def _take(events: _Events, mask: np.ndarray) -> _Events:
    return _Events(events.page[mask], events.code[mask], events.ts[mask])


@functools.cache
def _user_tail(profile: int, geo: int, source: int) -> str:
    """The user-level JSON fields after ``user_first_touch_timestamp``, shared by all events."""
    category, brand, model, system, browser, version = _PROFILES[profile]
    continent, country, region, city, language, _ = _GEOS[geo]
    s = _SOURCES[source]
    fields = {
        "device": {"category": category, "mobile_brand_name": brand, "mobile_model_name": model,
                   "operating_system": system, "language": language,
                   "web_info": {"browser": browser, "browser_version": version, "hostname": HOST}},
        "geo": {"continent": continent, "country": country, "region": region, "city": city},
        "traffic_source": {"name": s.name, "medium": s.medium, "source": s.source},
        "stream_id": STREAM_ID,
        "platform": "WEB",
    }
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)[1:-1]


def _param(key: str, kind: str, value: str) -> str:
    return f',{{"key":"{key}","value":{{"{kind}":{value}}}}}'


_ENGAGED = _param("session_engaged", "string_value", '"1"')
_SCROLLED = _param("percent_scrolled", "int_value", '"90"')
_CURRENCY = _param("currency", "string_value", '"USD"')


def _ga4_lines(plan: _Plan, users: _Users, pages: _Pages, events: _Events,
               ymd: str) -> list[str]:
    """One NDJSON line per event, as ``bq extract`` writes the GA4 export (INT64 as strings)."""
    site = _site()
    queries = _query_strings()
    needed = np.unique(np.concatenate([events.page, events.page - 1]))
    needed = needed[needed >= 0].tolist()
    session_kept = np.bincount(pages.ps, minlength=len(pages.sessions))
    first_dwell = np.zeros(len(pages.sessions), dtype=np.int64)
    first_dwell[pages.ps[pages.ordinal == 0]] = pages.dwell[pages.ordinal == 0]
    engaged = ((session_kept >= 2) | (first_dwell >= 10 * _SEC)).tolist()
    ps, ordinal, page_of, query = (pages.ps.tolist(), pages.ordinal.tolist(), pages.page.tolist(),
                                   pages.query.tolist())
    sessions = pages.sessions
    sid = (plan.start[sessions] // _SEC).tolist()
    number = plan.number[sessions].tolist()
    bundle0 = plan.bundle[sessions].tolist()
    local = (plan.user[sessions] - users.lo).tolist()
    channel = pages.channel.tolist()
    profile, geo, source = users.profile.tolist(), users.geo.tolist(), users.source.tolist()
    first_touch = plan.first_touch[users.lo:users.lo + len(users.ids)].tolist()
    engagement = pages.engagement_ms.tolist()

    location: dict[int, str] = {}
    for p in needed:
        q = queries[query[p]]
        path = site.paths[page_of[p]]
        location[p] = f"https://{HOST}{path}" + ((("&" if "?" in path else "?") + q) if q else "")
    base: dict[int, str] = {}
    view: dict[int, str] = {}
    tail: dict[int, str] = {}
    bundle: dict[int, str] = {}
    extra: dict[int, str] = {}
    for p in events.page.tolist():
        if p in base:
            continue
        s = ps[p]
        u = local[s]
        base[p] = (f'[{{"key":"page_location","value":{{"string_value":"{location[p]}"}}}}'
                   + _param("page_title", "string_value", site.titles[page_of[p]])
                   + _param("ga_session_id", "int_value", f'"{sid[s]}"')
                   + _param("ga_session_number", "int_value", f'"{number[s]}"'))
        referrer = location[p - 1] if ordinal[p] else _SOURCES[channel[s]].referrer
        extra[p] = _ENGAGED if engaged[s] else ""
        view[p] = (_param("page_referrer", "string_value", f'"{referrer}"') if referrer else "") \
            + extra[p]
        bundle[p] = str(bundle0[s] + ordinal[p] + 1)
        tail[p] = (f'"user_pseudo_id":"{users.ids[u]}","user_first_touch_timestamp":'
                   f'"{first_touch[u]}",' + _user_tail(profile[u], geo[u], source[u]))

    lines = []
    for p, c, t in zip(events.page.tolist(), events.code.tolist(), events.ts.tolist(), strict=True):
        ecommerce = ',"items":[]'
        if c == _PAGE_VIEW:
            params = view[p]
        elif c == _USER_ENGAGEMENT:
            params = _param("engagement_time_msec", "int_value",
                            f'"{engagement[p]}"') + extra[p]
        elif c == _SCROLL:
            params = _SCROLLED + extra[p]
        elif c in (_SESSION_START, _FIRST_VISIT):
            params = ""
        else:
            params, ecommerce = _ecommerce(site, pages, p, c, sid[ps[p]], users.ids[local[ps[p]]])
            params += extra[p]
        lines.append(f'{{"event_date":"{ymd}","event_timestamp":"{t}","event_name":"{_EVENTS[c]}",'
                     f'"event_params":{base[p]}{params}],"event_bundle_sequence_id":"{bundle[p]}",'
                     f'{tail[p]}{ecommerce}}}\n')
    return lines


def _ecommerce(site: _SiteVocab, pages: _Pages, p: int, code: int, session_id: int,
               user_id: str) -> tuple[str, str]:
    """Params and ``ecommerce``/``items`` fields of view_item, add_to_cart, begin_checkout and
    purchase: the page's product, and on checkout a quantity and sometimes a second product."""
    item = int(pages.item[p])
    quantity = int(pages.quantity[p]) if code in (_BEGIN_CHECKOUT, _PURCHASE) else 1
    lines = [(item, quantity)]
    second = int(pages.extra_item[p])
    if code == _PURCHASE and second >= 0 and second != item:
        lines.append((second, 1))
    revenue = [round(float(site.prices[i]) * q, 2) for i, q in lines]
    items = ",".join(f'{site.items[i]},"quantity":"{q}","item_revenue_in_usd":{r!r}}}'
                     for (i, q), r in zip(lines, revenue, strict=True))
    value = round(sum(revenue), 2)
    params = _CURRENCY + _param("value", "double_value", repr(value))
    ecommerce = f',"items":[{items}]'
    if code == _PURCHASE:
        transaction = f"T{session_id}-{user_id.split('.')[0][-5:]}"
        params += _param("transaction_id", "string_value", f'"{transaction}"')
        ecommerce = (f',"ecommerce":{{"transaction_id":"{transaction}","purchase_revenue_in_usd":'
                     f'{value!r},"total_item_quantity":"{sum(q for _, q in lines)}"}}' + ecommerce)
    return params, ecommerce


def _webtracking_lines(plan: _Plan, users: _Users, pages: _Pages, events: _Events) -> list[str]:
    """One CSV row per visit: ``panelist_id,used_at,url,domain,active_seconds,device``."""
    web = _web()
    idx = events.page
    ms = (events.ts // 1000).astype("datetime64[ms]")
    used_at = np.datetime_as_string(ms, unit="ms").tolist()
    ps = pages.ps[idx]
    user = (plan.user[pages.sessions][ps] - users.lo).tolist()
    device = pages.device[ps].tolist()
    active = pages.active[idx].tolist()
    urls, domains, ids = web.urls, web.domains, users.ids
    return [f"{ids[u]},{t},{urls[v]},{domains[v]},{'' if a < 0 else a},{DEVICES[d]}\n"
            for u, t, v, a, d in zip(user, used_at, pages.page[idx].tolist(), active, device,
                                     strict=True)]


def _iso(us: np.ndarray) -> list[str]:
    return np.datetime_as_string(us.astype("datetime64[us]"), unit="us", timezone="UTC").tolist()


def _truth_rows(spec: _Spec, plan: _Plan, users: _Users, pages: _Pages, events: _Events) -> str:
    """truth_sessions.csv rows of the sessions in ``pages``, counting what falls in the window."""
    window_end = _START_US + spec.days * _DAY
    inside = events.ts < window_end
    ps = pages.ps[events.page[inside]]
    end = np.zeros(len(pages.sessions), dtype=np.int64)
    np.maximum.at(end, ps, events.ts[inside])
    views = np.bincount(pages.ps[pages.ts < window_end], minlength=len(pages.sessions))
    s = pages.sessions
    ids = [users.ids[u] for u in (plan.user[s] - users.lo).tolist()]
    sid = (plan.start[s] // _SEC).tolist() if spec.kind == "ga4" else [""] * len(s)
    return "".join(
        f"{i},{o},{g},{a},{b},{v}\n"
        for i, o, g, a, b, v in zip(ids, plan.ordinal[s].tolist(), sid, _iso(plan.start[s]),
                                    _iso(end), views.tolist(), strict=True))


# ---------------------------------------------------------------------------------------------
# Files.
# ---------------------------------------------------------------------------------------------


def _day_name(kind: str, day: int) -> str:
    ymd = (START + timedelta(days=day)).strftime("%Y%m%d")
    return f"events_{ymd}.json.gz" if kind == "ga4" else f"tracking_{ymd}.csv"


@dataclass(frozen=True)
class _DayResult:
    """What a (possibly remote) day task hands back: its file, event count and truth rows."""

    path: str
    events: int
    truth: str


def _day_blocks(spec: _Spec, plan: _Plan, day: int) -> Iterator[tuple[list[bytes], str]]:
    """Per block of users: the day's lines (lightly shuffled, encoded one by one, which is far
    cheaper than encoding a joined string that mixes ASCII and other text) and its sessions'
    truth rows."""
    day_start = _START_US + day * _DAY
    ymd = (START + timedelta(days=day)).strftime("%Y%m%d")
    for block in range(_n_blocks(spec.users)):
        users = _block_users(spec, plan, block)
        lines: list[str] = []
        keys: list[np.ndarray] = []
        truth = ""
        for d in (day - 1, day) if day else (day,):
            pages = _draw_pages(spec, plan, users, d, block)
            events = _events(spec, plan, pages)
            if d == day:
                truth = _truth_rows(spec, plan, users, pages, events)
            chosen = _take(events, (events.ts >= day_start) & (events.ts < day_start + _DAY))
            if spec.kind == "ga4":
                lines += _ga4_lines(plan, users, pages, chosen, ymd)
            else:
                lines += _webtracking_lines(plan, users, pages, chosen)
            keys.append(chosen.ts)
        key = np.concatenate(keys)
        rng = np.random.default_rng([spec.seed, _SHUFFLE, day, block])
        order = np.argsort(key + rng.integers(0, _JITTER, len(key)), kind="stable")
        yield [lines[i].encode() for i in order.tolist()], truth


def _write_day(spec: _Spec, plan: _Plan, out: Path, day: int) -> _DayResult:
    """Write one day's file (via a hidden temporary name, so readers never see half a file)."""
    path = out / _day_name(spec.kind, day)
    tmp = out / f".{path.name}.tmp"
    count = 0
    truth: list[str] = []
    with open(tmp, "wb") as raw:
        sink = (gzip.GzipFile(filename="", mode="wb", compresslevel=1, fileobj=raw, mtime=0)
                if spec.kind == "ga4" else raw)
        if spec.kind != "ga4":
            sink.write(b"panelist_id,used_at,url,domain,active_seconds,device\n")
        for lines, rows in _day_blocks(spec, plan, day):
            sink.write(b"".join(lines))
            count += len(lines)
            truth.append(rows)
        if sink is not raw:
            sink.close()
    os.replace(tmp, path)
    return _DayResult(str(path), count, "".join(truth))


_WORKER: tuple[_Spec, _Plan] | None = None


def _init_worker(spec: _Spec) -> None:
    """Process-pool initializer: rebuild the plan once per worker process."""
    global _WORKER
    _WORKER = (spec, _plan(spec))


def _worker_day(job: tuple[str, int]) -> _DayResult:
    assert _WORKER is not None
    spec, plan = _WORKER
    return _write_day(spec, plan, Path(job[0]), job[1])


def _integer(name: str, value: object, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return int(value)


def _check(kind: str, users: int, days: int, personas: int, seed: int, workers: int) -> _Spec:
    """Validated arguments, before anything is written."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}")
    spec = _Spec(kind, _integer("users", users, 1), _integer("days", days, 1),
                 _integer("personas", personas, 1), _integer("seed", seed, 0))
    _integer("workers", workers, 1)
    if spec.personas > len(PERSONAS):
        raise ValueError(f"personas must be at most {len(PERSONAS)} (the persona templates: "
                         f"{', '.join(p.name for p in PERSONAS)}), got {personas}")
    return spec


TRUTH_DIR = "_truth"


def synth(kind: str, users: int, days: int, personas: int, seed: int, out: str | Path,
          workers: int = 1) -> SynthSummary:
    """Write synthetic ``kind`` data for ``users`` users over ``days`` days from 2024-03-01 UTC
    into ``out`` (created if missing); the same arguments always give the same bytes.

    * ``ga4``: ``events_YYYYMMDD.json.gz``, the GA4 export as ``bq extract`` writes
      newline-delimited JSON (INT64 as strings, FLOAT64 as numbers, nulls left out);
    * ``webtracking``: ``tracking_YYYYMMDD.csv`` with
      ``panelist_id,used_at,url,domain,active_seconds,device``;
    * both, in ``out/_truth/``: ``truth_users.csv`` (user_id, persona) and
      ``truth_sessions.csv`` (user_id, session_no counted within the window, ga_session_id
      (ga4 only), start_ts and end_ts as the session's first and last event in ISO UTC,
      n_pageviews).

    The truth folder starts with ``_``, so ingesting the whole ``out`` folder skips it.
    Files of other runs in ``out`` are left alone. ``workers`` > 1 writes day files in parallel
    processes (spawned, so safe anywhere); the output does not change.
    """
    spec = _check(kind, users, days, personas, seed, workers)
    users, days = spec.users, spec.days
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    plan = _plan(spec)

    (folder / TRUTH_DIR).mkdir(exist_ok=True)
    truth_users = folder / TRUTH_DIR / "truth_users.csv"
    with open(truth_users, "w", encoding="utf-8", newline="") as f:
        f.write("user_id,persona\n")
        ids = (_user_id(kind, c, t) for c, t in zip(plan.client.tolist(), plan.first_touch.tolist(),
                                                    strict=True))
        f.writelines(f"{i},{PERSONAS[p].name}\n" for i, p in zip(ids, plan.persona.tolist(),
                                                                 strict=True))

    truth_sessions = folder / TRUTH_DIR / "truth_sessions.csv"
    files: list[str] = []
    events = 0
    with open(truth_sessions, "w", encoding="utf-8", newline="") as f:
        f.write("user_id,session_no,ga_session_id,start_ts,end_ts,n_pageviews\n")
        pool = None
        if workers > 1 and days > 1:
            pool = ProcessPoolExecutor(min(workers, days), multiprocessing.get_context("spawn"),
                                       initializer=_init_worker, initargs=(spec,))
            results = pool.map(_worker_day, [(str(folder), d) for d in range(days)])
        else:
            results = (_write_day(spec, plan, folder, d) for d in range(days))
        try:
            for result in results:
                files.append(result.path)
                events += result.events
                f.write(result.truth)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    return SynthSummary(kind=kind, users=users, events=events, sessions=len(plan.user),
                        files=files, truth_users=str(truth_users),
                        truth_sessions=str(truth_sessions))
