"""Page theme and page type labels: the rules, the labeller's cache and modes, zero-shot with MiniLM."""

from __future__ import annotations

import pytest

from beha2vec.config import EnrichConfig
from beha2vec.enrich import OFF, Labeller, describe_page, page_theme_rule, page_type_rule
from beha2vec.features import load_categories

STORE = "https://shop.googlemerchandisestore.com"

TYPE_CASES = [
    ("bbc.co.uk", None, "site"),
    ("(not set)", None, "unknown"),
    ("/", None, "home"),
    ("example.com", "https://example.com", "home"),
    ("example.com", "https://www.example.com/?utm_source=mail", "home"),
    ("example.com", "https://example.com/?q=shoes", "search"),
    ("/search?q=red+shoe", None, "search"),
    ("amazon.com", "https://www.amazon.com/s?k=shoes", "search"),
    ("example.com", "https://example.com/results?Query=x", "search"),
    ("/Cart/", None, "cart"),
    ("/basket.html", None, "cart"),
    ("/scart", None, "page"),
    ("/checkout/shipping", None, "checkout"),
    ("/checkout/order-confirmation?id=42", None, "checkout"),
    ("/help/payment", None, "support"),
    ("/account/payment-methods", None, "account"),
    ("/My-Orders", None, "account"),
    ("/sign-in", None, "account"),
    ("/Terms-And-Conditions", None, "info"),
    ("/blog/reviews/best-cart-apps", None, "article"),
    ("nytimes.com", "https://www.nytimes.com/2024/05/12/world/storm-hits-coast.html", "article"),
    ("theguardian.com", "https://www.theguardian.com/world/2024/feb/12/some-slug", "article"),
    ("amazon.com", "https://www.amazon.com/dp/B0ABCDEFGH", "product"),
    ("ikea.com", "https://www.ikea.com/us/en/p/billy-bookcase-12345678/", "product"),
    ("/shop/apparel/Google+Tee+Blue", None, "product"),
    ("/products/linen-shirt", None, "product"),
    ("/collections/summer", None, "category"),
    ("/category/electronics/new-in", None, "category"),
    ("/Google+Redesign/Apparel", f"{STORE}/Google+Redesign/Apparel", "category"),
    ("/Google+Redesign/Apparel", None, "page"),
    ("bbc.co.uk", "https://www.bbc.co.uk/sport/football", "page"),
]


@pytest.mark.parametrize(("unit", "url", "expected"), TYPE_CASES)
def test_page_type_rule(unit, url, expected):
    assert page_type_rule(unit, url) == expected


@pytest.fixture(scope="module")
def categories():
    mapping = load_categories()
    assert mapping["bbc.co.uk"] == "news" and mapping["espn.com"] == "sports"
    assert "no-such-site-xyz.org" not in mapping
    return mapping


@pytest.mark.parametrize(("unit", "expected"), [
    ("bbc.co.uk", "news"),
    ("espn.com", "sports"),
    ("no-such-site-xyz.org", "other"),
    ("/Apparel/Mens", "apparel"),
    ("/Google+Redesign/Apparel", "google redesign"),
    ("/%C3%9Cber_Uns?x=1", "über uns"),
    ("/jane.doe@mail.com/inbox", "inbox"),
    ("/", "home"),
    ("(not set)", "unknown"),
])
def test_page_theme_rule(categories, unit, expected):
    assert page_theme_rule(unit, None, categories) == expected


def test_theme_of_a_long_segment_is_cut_to_40_characters(categories):
    theme = page_theme_rule("/" + "-".join(["word"] * 20), None, categories)
    assert len(theme) <= 40 and theme.startswith("word word") and not theme.endswith(" ")


def test_description_never_holds_query_fragment_or_email():
    text = describe_page("x.com", "https://x.com/u/jane.doe@mail.com/inbox?token=abc#frag")
    assert text == "x.com u inbox"
    assert describe_page("x.com", "https://x.com/u/jane.doe%40mail.com/inbox") == "x.com u inbox"
    assert describe_page("/Google+Redesign/Apparel", None) == "google redesign apparel"
    assert describe_page("bbc.co.uk", None) == "bbc.co.uk"
    assert describe_page("bbc.co.uk", "https://www.bbc.co.uk/") == "bbc.co.uk home"


def test_off_streams_label_every_visit_off():
    units, urls = ["bbc.co.uk", "/cart", "(not set)"], [None, None, None]
    assert Labeller(EnrichConfig(theme="off", page_type="off")).label(units, urls) == ([OFF] * 3, [OFF] * 3)
    themes, types = Labeller(EnrichConfig(theme="off", page_type="rules")).label(units, urls)
    assert themes == [OFF] * 3 and types == ["site", "cart", "unknown"]


class CountingLabeller(Labeller):
    """Records every page that is labelled, to show that the cache labels each page once."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.labelled: list[tuple[str, str | None]] = []

    def _label_pages(self, pages):
        self.labelled.extend(pages)
        return super()._label_pages(pages)


def test_cache_labels_each_distinct_page_once(categories):
    labeller = CountingLabeller(EnrichConfig(), categories)
    units = ["bbc.co.uk", "bbc.co.uk", "/cart", "/cart", "example.com", "example.com"]
    urls = ["https://www.bbc.co.uk/news?a=1", "https://www.bbc.co.uk/news?a=2#top", None, None,
            "https://example.com/", "https://example.com/?q=shoes"]
    themes, types = labeller.label(units, urls)
    assert themes == ["news", "news", "cart", "cart", "other", "other"]
    assert types == ["article", "article", "cart", "cart", "home", "search"]
    assert len(labeller.labelled) == 4
    assert labeller.label(units[::-1], urls[::-1]) == (themes[::-1], types[::-1])
    assert len(labeller.labelled) == 4


@pytest.mark.parametrize("key", ["theme", "page_type"])
def test_unknown_mode_names_the_key_and_the_allowed_values(key):
    with pytest.raises(ValueError, match=rf"encoder\.enrich\.{key} must be one of off, rules, zero-shot"):
        Labeller(EnrichConfig(**{key: "zeroshot"}))


def test_zero_shot_without_candidate_labels_names_the_labels_key():
    with pytest.raises(ValueError, match=r"encoder\.enrich\.type_labels is empty"):
        Labeller(EnrichConfig(page_type="zero-shot", type_labels=[]))


def test_label_rejects_lists_of_different_lengths():
    with pytest.raises(ValueError, match="differ in length"):
        Labeller(EnrichConfig(theme="off", page_type="off")).label(["a.com"], [])


class RecordingModel:
    """The real model, recording every text it is asked to encode."""

    def __init__(self, model):
        self.model, self.texts = model, []

    def encode(self, texts, **kwargs):
        self.texts.extend(texts)
        return self.model.encode(texts, **kwargs)


@pytest.fixture(scope="module")
def zero_shot():
    return Labeller(EnrichConfig(theme="zero-shot", page_type="zero-shot"))


def test_zero_shot_with_minilm(zero_shot):
    pages = [
        ("espn.com", "https://www.espn.com/nba/scores"),
        ("bbc.co.uk", "https://www.bbc.co.uk/news/world-12345"),
        ("example.com", "https://shop.example.com/cart"),
        ("example.com", "https://example.com/checkout/payment"),
        ("github.com", "https://github.com/login"),
        ("example.com", "https://example.com/"),
    ]
    themes, types = zero_shot.label([u for u, _ in pages], [url for _, url in pages])
    assert themes[:3] == ["sports", "news", "shopping"]
    assert types[2:] == ["shopping cart", "checkout", "account or login", "home page"]
    conf = EnrichConfig()
    assert set(themes) <= set(conf.theme_labels) and set(types) <= set(conf.type_labels)


def test_zero_shot_model_sees_descriptions_only(zero_shot):
    zero_shot._model = recording = RecordingModel(zero_shot._model)
    zero_shot.label(["x.com", "x.com"], ["https://x.com/u/jane.doe@mail.com/inbox?token=abc",
                                         "https://x.com/u/jane.doe@mail.com/inbox?token=xyz"])
    assert recording.texts == ["x.com u inbox"]
