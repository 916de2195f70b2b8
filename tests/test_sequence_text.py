"""Session text and its token cap, with the real MiniLM tokenizer."""

import datetime as dt
from zoneinfo import ZoneInfo

from beha2vec.models import load_tokenizer
from beha2vec.sequence_text import cap_pieces, prefix, visit_piece


def _count(texts):
    tok = load_tokenizer("minilm")
    return [len(e.ids) for e in tok.encode_batch(list(texts), add_special_tokens=False)]


def _true_tokens(text):
    return len(load_tokenizer("minilm").encode(text).ids)


def test_exact_format():
    start = dt.datetime(2024, 3, 4, 14, 15, 59, tzinfo=dt.UTC)
    head = prefix(start, ZoneInfo("UTC"))
    text, tokens, cut = cap_pieces(head, [visit_piece("google.com", 10.4), visit_piece("youtube.com", 89)],
                                   256, _count)
    assert text == "Monday 14:15, Visits: google.com (10s) -> youtube.com (89s)"
    assert tokens == _true_tokens(text) and not cut


def test_time_zone_moves_weekday_and_time():
    start = dt.datetime(2024, 3, 4, 23, 30, tzinfo=dt.UTC)
    assert prefix(start, ZoneInfo("Europe/Berlin")) == "Tuesday 00:30, Visits: "


def test_cap_keeps_both_ends_and_fits_budget():
    pieces = [visit_piece(f"/page/{i}-item", i) for i in range(300)]
    text, tokens, cut = cap_pieces("Friday 08:00, Visits: ", pieces, 64, _count)
    assert cut and tokens <= 64
    assert tokens == _true_tokens(text)
    assert text.startswith("Friday 08:00, Visits: /page/0-item (0s) -> ")
    assert text.endswith("-> /page/299-item (299s)")
    assert " -> ... -> " in text


def test_empty_session_and_nan_dwell():
    text, tokens, cut = cap_pieces("Sunday 01:00, Visits: ", [], 64, _count)
    assert text == "Sunday 01:00, Visits: (no page views)" and not cut
    assert visit_piece("/a", float("nan")) == "/a (0s)"


def test_word_cached_counts_equal_full_encodes():
    from beha2vec.sessionize import _counter

    texts = ["Monday 14:15, Visits: ", " -> ", "...", "/books/some-title (20s)", "news.bbc.co.uk (1800s)",
             "/product/ünïcode–dash?x=1 (3s)", "Tuesday 00:30, Visits: google.com (10s) -> youtube.com (89s)"]
    assert _counter("minilm")(texts) == _count(texts)
