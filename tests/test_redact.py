"""What the redaction leaves of texts bound for an LLM (pure functions)."""

from __future__ import annotations

import pytest

from beha2vec.redact import redact


@pytest.mark.parametrize("text, expected", [
    ("Monday 14:15, Visits: shop.com/cart?email=a@b.com&x=1 (10s) -> x.com/u/123456/p#frag (2s)",
     "Monday 14:15, Visits: shop.com/cart (10s) -> x.com/u/<id>/p (2s)"),
    ("/search%3Fq%3Dsecret", "/search"),
    ("/r%23token=abc", "/r"),
    ("john%2540gmail.com wrote", "<email> wrote"),
    ("john.doe%40example%2Ecom", "<email>"),
    ("/account/jane.doe@example.com/orders", "/account/<email>/orders"),
    ("/order/AB12CD34EF.html", "/order/<id>.html"),
    ("[/order/AB12CD34EF]", "[/order/<id>]"),
    ("/u/5f3a9b2c1d4e6f7a8b9c0d1e.json", "/u/<id>.json"),
    ("/p/550e8400-e29b-41d4-a716-446655440000", "/p/<id>"),
    ("call 0123456789 now", "call <num> now"),
    ("cluster #2?", "cluster #2"),
    ("/best-laptops-2024 and /2024/05/article", "/best-laptops-2024 and /2024/05/article"),
])
def test_redact(text, expected):
    assert redact(text) == expected


def test_known_ids_in_any_case_and_encoding():
    assert redact("USER-12345 at /u/user%2D12345/x", ["user-12345"]) == "<user> at /u/<user>/x"
    assert redact("abc visited", ["abc"]) == "abc visited", "too short to mask without masking words"
