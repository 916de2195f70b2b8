import pandas as pd

from beha2vec.urls import registrable_domain, split_url, split_urls


def test_registrable_domain_uses_public_suffix_list():
    assert registrable_domain("bbc.co.uk") == "bbc.co.uk"
    assert registrable_domain("news.bbc.co.uk") == "bbc.co.uk"
    assert registrable_domain("WWW.Example.COM.") == "example.com"
    assert registrable_domain("outlook.live.com") == "live.com"
    assert registrable_domain("192.168.0.1") == "192.168.0.1"
    assert registrable_domain("localhost") == "localhost"


def test_split_url_drops_query_and_fragment():
    assert split_url("https://shop.example.co.uk:8443/a/b?email=x@y.z#top") == (
        "shop.example.co.uk", "example.co.uk", "/a/b")
    assert split_url("www.google.com/search?q=1") == ("www.google.com", "google.com", "/search")
    assert split_url(None, "news.bbc.co.uk") == ("news.bbc.co.uk", "bbc.co.uk", None)
    assert split_url("https://example.com") == ("example.com", "example.com", "/")
    assert split_url("http://[::1", None) == (None, None, None)


def test_split_urls_keeps_row_order_and_nulls():
    urls = pd.Series(["https://a.com/x", None, "https://a.com/x", "https://b.org/y?q"])
    domains = pd.Series([None, "c.net", None, None])
    out = split_urls(urls, domains)
    assert out["domain"].tolist() == ["a.com", "c.net", "a.com", "b.org"]
    assert out["path"].tolist() == ["/x", None, "/x", "/y"]
