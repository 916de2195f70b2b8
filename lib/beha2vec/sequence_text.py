"""The text form of a session, capped to a token budget by a real tokenizer.

``"Monday 14:15, Visits: google.com (10s) -> youtube.com (89s)"``. When a session is too long
for the budget, visits from the middle are replaced by ``...``: the start and the end of a
session say most about it. Counting is exact for WordPiece/BERT-style tokenizers, whose
pre-tokenizer splits on whitespace, so the pieces are counted once and added up (tested against a
full encode).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from zoneinfo import ZoneInfo

SEPARATOR = " -> "
ELLIPSIS = "..."
NO_VISITS = "(no page views)"


def prefix(start: dt.datetime, tz: ZoneInfo) -> str:
    local = start.astimezone(tz)
    return local.strftime("%A %H:%M, Visits: ")


def visit_piece(unit: str, dwell_s: float | None) -> str:
    seconds = 0 if dwell_s is None or dwell_s != dwell_s else int(round(dwell_s))
    return f"{unit} ({seconds}s)"


def cap_pieces(
    head: str, pieces: Sequence[str], budget: int, count: Callable[[Sequence[str]], list[int]]
) -> tuple[str, int, bool]:
    """Join ``pieces`` after ``head`` within ``budget`` tokens (special tokens included).

    Returns the text, its token count and whether visits were left out. ``count`` gives the
    token count of each string without special tokens.
    """
    if not pieces:
        text = head + NO_VISITS
        return text, count([text])[0] + 2, False
    c_head, c_sep, c_ell, *c_pieces = count([head, SEPARATOR, ELLIPSIS, *pieces])
    fixed = 2 + c_head
    full = fixed + sum(c_pieces) + c_sep * (len(pieces) - 1)
    if full <= budget:
        return head + SEPARATOR.join(pieces), full, False
    keep_head: list[int] = []
    keep_tail: list[int] = []
    used = fixed + c_ell
    left, right = 0, len(pieces) - 1
    take_left = True
    while left <= right:
        i = left if take_left else right
        cost = c_pieces[i] + c_sep
        if used + cost > budget:
            break
        used += cost
        if take_left:
            keep_head.append(i)
            left += 1
        else:
            keep_tail.insert(0, i)
            right -= 1
        take_left = not take_left
    kept = [pieces[i] for i in keep_head] + [ELLIPSIS] + [pieces[i] for i in keep_tail]
    return head + SEPARATOR.join(kept), used, True
