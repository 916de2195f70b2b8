"""Masking what must never leave the machine: applied to every text before an LLM sees it.

The text is percent-decoded first (up to three times, so ``%2540`` and ``%3F`` cannot hide an
``@`` or a ``?``); query strings are dropped before each decoding too, so an encoded space
(``?q=a%20b``) cannot end one early. Then, in this order, each rule leaves a visible marker in
angle brackets, so the model knows something was there:

* query strings and fragments: ``?…`` and ``#…`` right after a non-space character, up to the
  next space, are dropped (a ``#`` or ``?`` that starts a word, as in "cluster #2", stays);
* e-mail addresses (``name@host``, the host with or without dots) become ``<email>``;
* each string of ``known`` (the raw user ids of the sample), in any letter case, becomes ``<user>``
  (after e-mails, so an address whose name is a user id is masked whole);
* id-like path segments become ``<id>``: UUIDs, hex runs of 16 or more, all-digit segments of 5 or
  more, and single tokens of 10 or more letters and digits holding at least 2 digits and no ``-``
  (``/order/AB12CD34EF`` → ``/order/<id>``, also before a file extension such as ``.html``, while
  slugs such as ``/best-laptops-2024`` stay);
* any other run of 6 or more digits becomes ``<num>``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

QUERY = re.compile(r"(?<=\S)[?#][^\s]*")
EMAIL = re.compile(r"[\w.+%-]+@[\w-]+(?:\.[\w-]+)*", re.I)
SEGMENT = r"(?<=/)(?:{})(?=(?:\.\w{{1,5}})?(?:[/\s)\],;:'\"]|$))"
ID_SEGMENT = re.compile(SEGMENT.format(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"|[0-9a-f]{16,}"
    r"|\d{5,}"
    r"|(?=(?:[A-Za-z_]*\d){2})(?=[A-Za-z0-9_]*[A-Za-z])[A-Za-z0-9_]{10,}"
), re.I)
DIGITS = re.compile(r"\d{6,}")
MIN_KNOWN = 4
DECODE_ROUNDS = 3


def redact(text: str, known: Iterable[str] = ()) -> str:
    """``text`` with query strings, e-mails, ids, long numbers and the ``known`` strings masked."""
    for _ in range(DECODE_ROUNDS):
        text = QUERY.sub("", text)
        decoded = unquote(text)
        if decoded == text:
            break
        text = decoded
    text = QUERY.sub("", text)
    text = EMAIL.sub("<email>", text)
    for value in sorted({k for k in known if k and len(k) >= MIN_KNOWN}, key=len, reverse=True):
        text = re.sub(re.escape(value), "<user>", text, flags=re.I)
    text = ID_SEGMENT.sub("<id>", text)
    return DIGITS.sub("<num>", text)
