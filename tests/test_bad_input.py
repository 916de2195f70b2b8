"""A catalogue of bad and hostile input for every source, each kind with its expected outcome.

A kind either fails the run with a clear error, or each of its records lands in ``events`` or in
``rejects`` with a known reason: the ``runs`` row must show in = out + rejected, and every record
written must be found again. Record cases of one source share one ingest (each in its own folder,
with its own user ids) to keep Spark runs few; msnbc cases run alone because msnbc user ids are
line numbers, equal across files. A Hypothesis test then throws generated GA4 records at ingest.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beha2vec import stages
from beha2vec.config import load_config
from beha2vec.context import Context
from beha2vec.ingest.files import InputError

T0 = 1_709_300_000_000_000  # 2024-03-01T13:33:20Z in µs
EVENT = None  # expected outcome of a record that must become an event
CONTROL = "a\u0001b\u001fc\u2028d\u202ee"  # C0 controls, a line separator, right-to-left override
INJECTION = "'); DROP TABLE events;-- <script>alert(1)</script> {{7*7}} ${jndi:ldap://x/a}"


def ga4(user: str, ts: int | str | None = T0, page: str = "https://shop.example.com/a", **top) -> dict:
    """One GA4 export event as ``bq extract`` writes it (INT64 as strings)."""
    event = {
        "event_date": "20240301", "event_timestamp": None if ts is None else str(ts),
        "event_name": "page_view", "user_pseudo_id": user,
        "event_params": [{"key": "page_location", "value": {"string_value": page}},
                         {"key": "ga_session_id", "value": {"int_value": "1709300000"}}],
        "device": {"category": "desktop", "web_info": {"browser": "Firefox"}},
        "geo": {"country": "Germany"},
    }
    return event | top


def js(obj) -> bytes:
    return json.dumps(obj).encode()


def ndjson(*lines: bytes) -> bytes:
    return b"\n".join(lines) + b"\n"


def param(key: str, value: dict) -> dict:
    return {"key": key, "value": value}


@dataclass(frozen=True)
class Case:
    """One kind of bad input: its files and, per record, ``(file, line, EVENT or reason fragment)``."""

    kind: str
    source: str
    files: dict[str, bytes]
    expect: list[tuple[str, int, str | None]]
    check: Callable[[list, list], None] | None = None
    overrides: tuple[str, ...] = ()
    marks: tuple = field(default=())

    @property
    def group(self) -> tuple[str, tuple[str, ...], str]:
        return self.source, self.overrides, self.kind if self.source == "msnbc" else ""


def one(kind: str, source: str, name: str, data: bytes, expect: list[tuple[int, str | None]], **kw) -> Case:
    """A case of one file."""
    return Case(kind, source, {name: data}, [(name, n, r) for n, r in expect], **kw)


def _events_where(check: Callable[[dict[int, object]], None]) -> Callable[[list, list], None]:
    """A case check over the case's events by line."""
    return lambda events, rejects: check({e.src_line: e for e in events})


def _truncated_gzip(lines: list[bytes]) -> tuple[bytes, int]:
    """Gzip of ``lines`` cut in the middle, and how many whole lines the cut data still holds."""
    data = gzip.compress(b"".join(lines), mtime=0)
    cut = data[: len(data) // 2]
    readable = zlib.decompressobj(wbits=31).decompress(cut)
    return cut, readable.count(b"\n")


def _gzip_case(kind: str, source: str, name: str, head: bytes, rows: list[bytes], first: int) -> Case:
    """A gzip file cut in half: whole lines before the cut are events, one reject stands for the rest."""
    cut, whole = _truncated_gzip([head, *rows])
    kept = whole - head.count(b"\n")
    expect = [(first + i, EVENT) for i in range(kept)] + [(first + kept, "damaged gzip file")]
    return one(kind, source, name, cut, expect)


def _deep(depth: int) -> bytes:
    return b'{"junk": ' + b"[" * depth + b"]" * depth + b", " + js(ga4("deep"))[1:]


def _same_text(field_name: str, line: int, value: str) -> Callable[[list, list], None]:
    def check(by_line: dict) -> None:
        assert getattr(by_line[line], field_name) == value

    return _events_where(check)


def _ids_kept(first: int) -> Callable[[list, list], None]:
    def check(by_line: dict) -> None:
        assert by_line[first].user_id == "1234567890.1234567890"
        assert by_line[first].ga_session_id == "12345678901234567"
        assert by_line[first + 1].ga_session_id == "98765432109876543210"

    return _events_where(check)


def compact(obj) -> bytes:
    """JSON as ``bq extract`` writes it: no spaces after separators."""
    return json.dumps(obj, separators=(",", ":")).encode()


def _compact_ids_kept(events, rejects) -> None:
    by_line = {e.src_line: e for e in events}
    assert [by_line[n].user_id for n in (1, 2, 4)] == ["2697787.2422183099", "1234567890.1234567890",
                                                         "1234567890.1234567890"]
    assert by_line[1].transaction_id == "T-1" and by_line[3].transaction_id == "12345678901234567890.5"


def _unclosed_quote_keeps_text(events, rejects) -> None:
    assert "https://c.example.org/" in rejects[0].raw  # the swallowed rows are visible in the reject


def _timezone_converted(events, rejects) -> None:
    assert str({e.src_line: e for e in events}[2].event_ts) == "2019-03-01 08:00:00"


def _long_url_whole(events, rejects) -> None:
    assert len(events[0].url) > 200_000 and events[0].domain == "example.com"


def _script_urls_verbatim(events, rejects) -> None:
    assert {e.url for e in events} == {"javascript:alert(document.cookie)",
                                       "data:text/html;base64,PHNjcmlwdD4="}


LONG_LINE = js(ga4("huge", page="https://shop.example.com/" + "x" * 30_000))
WT_HEAD = b"panelist_id,used_at,url,active_seconds\n"
FLAT_HEAD = (b"event_timestamp,user_pseudo_id,event_name,page_title,ga_session_id,"
             b"purchase_revenue_in_usd,page_location\n")
MSNBC_HEAD = b"% Different categories found in input file:\n\nfrontpage news tech\n\n% Sequences:\n\n"


def flat(ts: str, user: str, title: str = "t", session: str = "1", revenue: str = "",
         page: str = "https://a.example.org/") -> bytes:
    return ",".join([ts, user, "page_view", title, session, revenue, page]).encode() + b"\n"


def wt(user: str, ts: str, url: str = "https://a.example.org/", seconds: str = "5") -> bytes:
    return f"{user},{ts},{url},{seconds}\n".encode()


CASES: list[Case] = [
    # --- ga4: newline-delimited JSON
    one("ga4 BOM and CRLF line endings", "ga4", "a.json",
        b"\xef\xbb\xbf" + js(ga4("bom")) + b"\r\n" + js(ga4("bom", T0 + 1)) + b"\r\n",
        [(1, EVENT), (2, EVENT)]),
    one("ga4 blank and whitespace lines between records", "ga4", "a.json",
        b"\n  \n" + js(ga4("blank")) + b"\n\t\r\n\n" + js(ga4("blank", T0 + 1)) + b"\n\n",
        [(3, EVENT), (6, EVENT)]),
    Case("ga4 empty file next to a good one is skipped", "ga4",
         {"empty.json": b"", "good.json": js(ga4("skip")) + b"\n"}, [("good.json", 1, EVENT)]),
    one("ga4 gzip of several members, no .gz name", "ga4", "a.json",
        gzip.compress(js(ga4("members")) + b"\n") + gzip.compress(js(ga4("members", T0 + 1)) + b"\n"),
        [(1, EVENT), (2, EVENT)]),
    _gzip_case("ga4 truncated gzip", "ga4", "a.json.gz", b"",
               [js(ga4("trunc", T0 + i)) + b"\n" for i in range(400)], 1),
    one("ga4 gzip cut inside its header", "ga4", "a.json.gz",
        gzip.compress(js(ga4("cut")), mtime=0)[:12], [(1, "damaged gzip file")]),
    one("ga4 binary garbage", "ga4", "a.json", bytes(range(256)) * 4,
        [(1, "malformed JSON")] + [(n, "not valid UTF-8") for n in range(2, 6)]),
    one("ga4 invalid UTF-8 inside a value", "ga4", "a.json",
        js(ga4("latin1")).replace(b"Germany", b"Deutschl\xe4nd"), [(1, "not valid UTF-8 (byte 0xe4")]),
    one("ga4 JSON array instead of NDJSON", "ga4", "a.json",
        b"[" + js(ga4("array")) + b", " + js(ga4("array", T0 + 1)) + b"]\n", [(1, "malformed JSON")]),
    one("ga4 pretty-printed JSON, one object over many lines", "ga4", "a.json",
        json.dumps(ga4("pretty"), indent=2).encode() + b"\n",
        [(n, "malformed JSON") for n in range(1, json.dumps(ga4("pretty"), indent=2).count("\n") + 2)]),
    one("ga4 JSON values that are not objects", "ga4", "a.json",
        ndjson(b'"text"', b"42", b"null", b"true", b"[]", b"{}"),
        [(n, "malformed JSON") for n in range(1, 6)] + [(6, "missing user id")]),
    one("ga4 missing or null user_pseudo_id", "ga4", "a.json",
        ndjson(js({k: v for k, v in ga4("x").items() if k != "user_pseudo_id"}), js(ga4(None))),
        [(1, "missing user id"), (2, "missing user id")]),
    one("ga4 empty or blank user id", "ga4", "a.json", ndjson(js(ga4("")), js(ga4("   "))),
        [(1, "missing user id"), (2, "missing user id")]),
    one("ga4 missing, null or empty event_timestamp", "ga4", "a.json",
        ndjson(js({k: v for k, v in ga4("nots").items() if k != "event_timestamp"}), js(ga4("nots", None)),
               js(ga4("nots", ""))),
        [(1, "missing timestamp"), (2, "missing timestamp"), (3, "missing timestamp")]),
    one("ga4 non-numeric event_timestamp", "ga4", "a.json",
        ndjson(js(ga4("badts", "abc")), js(ga4("badts", "2024-13-45")),
               js(ga4("badts") | {"event_timestamp": {}})),
        [(1, "unreadable timestamp 'abc'"), (2, "unreadable timestamp '2024-13-45'"),
         (3, "unreadable timestamp '{}'")]),
    one("ga4 negative event_timestamp", "ga4", "a.json", ndjson(js(ga4("neg", -5)), js(ga4("neg", -T0))),
        [(1, "timestamp before 1990-01-01"), (2, "timestamp before 1990-01-01")]),
    one("ga4 far-future event_timestamp", "ga4", "a.json", ndjson(js(ga4("future", 4_102_444_800_000_000))),
        [(1, "timestamp in the future")]),
    one("ga4 event_timestamp beyond any clock (1e30, NaN, Infinity, 25 digits)", "ga4", "a.json",
        ndjson(*[js(ga4("huge_ts", t)) for t in ("1e30", "-1e30", "NaN", "Infinity", "9" * 25)]),
        [(n, "unreadable timestamp") for n in range(1, 6)]),
    one("ga4 event_params not a list", "ga4", "a.json",
        ndjson(js(ga4("params") | {"event_params": "oops"}), js(ga4("params") | {"event_params": 5})),
        [(1, "JSON field of the wrong type"), (2, "JSON field of the wrong type")]),
    one("ga4 param value of an unexpected type", "ga4", "a.json", ndjson(
        js(ga4("pval") | {"event_params": [param("page_location", "https://a.example.com")]}),
        js(ga4("pval") | {"event_params": [param("page_location", {"string_value": {"a": 1}})]}),
        js(ga4("pval", T0 + 1) | {"event_params": [param("engagement_time_msec", {"int_value": "12abc"})]}),
        js(ga4("pval", T0 + 2) | {"event_params": [param("engagement_time_msec", {"int_value": "-5"})]})),
        [(1, "JSON field of the wrong type"), (2, EVENT), (3, "engagement time is not a number: '12abc'"),
         (4, "negative engagement time")],
        check=_same_text("url", 2, '{"a":1}')),
    one("ga4 nested struct given as text", "ga4", "a.json", ndjson(js(ga4("dev") | {"device": "desktop"})),
        [(1, "JSON field of the wrong type")]),
    one("ga4 deeply nested JSON", "ga4", "a.json", ndjson(_deep(5000), _deep(50)),
        [(1, "malformed JSON"), (2, EVENT)]),
    one("ga4 line over max_line_bytes", "ga4", "a.json", ndjson(LONG_LINE, js(ga4("huge", T0 + 1))),
        [(1, "line longer than 20000 bytes"), (2, EVENT)], overrides=("ingest.max_line_bytes=20000",)),
    one("ga4 exact duplicate events", "ga4", "a.json", ndjson(*[js(ga4("dup"))] * 3),
        [(1, EVENT), (2, "exact duplicate of event"), (3, "exact duplicate of event")]),
    one("ga4 ids whose digits must keep precision", "ga4", "a.json", ndjson(
        js(ga4("x", event_params=[param("ga_session_id", {"int_value": "12345678901234567"})])).replace(
            b'"x"', b"1234567890.1234567890"),
        js(ga4("id20", event_params=[param("ga_session_id", {"int_value": "98765432109876543210"})]))),
        [(1, EVENT), (2, EVENT)], check=_ids_kept(1)),
    # quoted ids are taken as parsed; bare ones are quoted first, also where another key holds the
    # text Spark would make of the bare number
    one("ga4 ids in compact JSON, quoted and bare", "ga4", "a.json", ndjson(
        compact(ga4("2697787.2422183099", ecommerce={"transaction_id": "T-1"})),
        compact(ga4("BARE", T0 + 1)).replace(b'"BARE"', b"1234567890.1234567890"),
        compact(ga4("u3", T0 + 2, ecommerce={"transaction_id": "BARE"})).replace(
            b'"BARE"', b"12345678901234567890.5"),
        compact(ga4("BARE", T0 + 3, user_id="1.2345678901234567E9")).replace(
            b'"BARE"', b"1234567890.1234567890")),
        [(1, EVENT), (2, EVENT), (3, EVENT), (4, EVENT)], check=_compact_ids_kept),
    one("ga4 NUL bytes", "ga4", "a.json",
        ndjson(js(ga4("nul")).replace(b"page_view", b"page\x00view"), b"\x00" * 8),
        [(1, "malformed JSON"), (2, "malformed JSON")]),
    one("ga4 escaped control characters kept verbatim", "ga4", "a.json",
        ndjson(js(ga4("ctl", event_params=[param("page_title", {"string_value": CONTROL})]))),
        [(1, EVENT)], check=_same_text("page_title", 1, CONTROL)),
    one("ga4 SQL/HTML/template injection in page_title stored verbatim", "ga4", "a.json",
        ndjson(js(ga4("inject", event_params=[param("page_title", {"string_value": INJECTION})]))),
        [(1, EVENT)], check=_same_text("page_title", 1, INJECTION)),
    one("ga4 javascript: and data: URLs", "ga4", "a.json",
        ndjson(js(ga4("script", page="javascript:alert(document.cookie)")),
               js(ga4("script", T0 + 1, page="data:text/html;base64,PHNjcmlwdD4="))),
        [(1, EVENT), (2, EVENT)], check=_script_urls_verbatim),
    one("ga4 two objects on one line, or trailing junk", "ga4", "a.json",
        ndjson(js(ga4("concat")) + js(ga4("concat", T0 + 1)), js(ga4("concat", T0 + 2)) + b" junk",
               js(ga4("concat", T0 + 3)) + b"}"),
        [(1, "malformed JSON (text after the object"), (2, "malformed JSON (text after the object"),
         (3, "malformed JSON (text after the object")]),
    one("ga4 braces and quotes inside strings are not text after the object", "ga4", "a.json",
        ndjson(js(ga4("braces", event_params=[param("page_title", {"string_value": 'a}{b} x "}" \\'})])),
               js(ga4("braces", T0 + 1)) + b"  \t"),
        [(1, EVENT), (2, EVENT)], check=_same_text("page_title", 1, 'a}{b} x "}" \\')),
    # --- ga4-flat: GA4 flattened CSV
    one("ga4-flat header only", "ga4-flat", "a.csv", FLAT_HEAD, []),
    one("ga4-flat ragged row with too few fields", "ga4-flat", "a.csv",
        FLAT_HEAD + flat("1709300000000000", "ragged") + b"1709300000000001,ragged,page_view\n",
        [(2, EVENT), (3, "expected at least 7 fields, found 3")]),
    one("ga4-flat unquoted comma shifts the fields", "ga4-flat", "a.csv",
        FLAT_HEAD + flat("1709300000000000", "shift", title="Shoes, red") + flat("1709300000000001", "shift")
        + b"1709300000000002,shift,page_view,t,1,,https://a.example.org/,,\n",
        [(2, "8 fields but the header has 7"), (3, EVENT), (4, EVENT)]),
    one("ga4-flat quoted newline inside a field", "ga4-flat", "a.csv",
        FLAT_HEAD + flat("1709300000000000", "qnl", title='"two\nlines"') + flat("1709300000000001", "qnl"),
        [(2, EVENT), (4, EVENT)], check=_same_text("page_title", 2, "two\nlines")),
    one("ga4-flat unclosed quote swallows the rows after it", "ga4-flat", "a.csv",
        FLAT_HEAD + flat("1709300000000000", "quote", title='"open') + flat("1709300000000001", "quote")
        + flat("1709300000000002", "quote", page="https://c.example.org/"),
        [(2, "expected at least 7 fields")], check=_unclosed_quote_keeps_text),
    one("ga4-flat ids whose digits must keep precision", "ga4-flat", "a.csv",
        FLAT_HEAD + flat("1709300000000000", "1234567890.1234567890", session="12345678901234567")
        + flat("1709300000000001", "id20", session="98765432109876543210"),
        [(2, EVENT), (3, EVENT)], check=_ids_kept(2)),
    one("ga4-flat spreadsheet formula and SQL in page_title stored verbatim", "ga4-flat", "a.csv",
        FLAT_HEAD + flat("1709300000000000", "formula", title="\"=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\"")
        + flat("1709300000000001", "formula", title="'); DROP TABLE events;--"),
        [(2, EVENT), (3, EVENT)], check=lambda ev, rej: (
            _same_text("page_title", 2, '=HYPERLINK("http://x","y")')(ev, rej),
            _same_text("page_title", 3, "'); DROP TABLE events;--")(ev, rej))),
    one("ga4-flat revenue that is not a number", "ga4-flat", "a.csv",
        FLAT_HEAD + flat("1709300000000000", "rev", revenue="12.50USD"),
        [(2, "revenue is not a number: '12.50USD'")]),
    one("ga4-flat header repeated mid-file", "ga4-flat", "a.csv",
        FLAT_HEAD + flat("1709300000000000", "rehead") + FLAT_HEAD,
        [(2, EVENT), (3, "unreadable timestamp 'event_timestamp'")]),
    one("ga4-flat header in upper case with dots", "ga4-flat", "a.csv",
        b"Event.Timestamp,User.Pseudo.Id,Event.Name\n1709300000000000,upper,page_view\n", [(2, EVENT)]),
    one("ga4-flat invalid UTF-8", "ga4-flat", "a.csv",
        FLAT_HEAD + flat("1709300000000000", "utf").replace(b"page_view", b"p\xffge_view"),
        [(2, "not valid UTF-8")]),
    # --- webtracking: panel CSV
    one("webtracking BOM and CRLF", "webtracking", "a.csv",
        (b"\xef\xbb\xbf" + WT_HEAD + wt("crlf", "2019-03-01 10:00:00")).replace(b"\n", b"\r\n"),
        [(2, EVENT)]),
    one("webtracking empty panelist_id", "webtracking", "a.csv", WT_HEAD + wt("", "2019-03-01 10:00:00"),
        [(2, "missing user id")]),
    one("webtracking unparsable timestamps, offsets converted to UTC", "webtracking", "a.csv",
        WT_HEAD + wt("ts", "2019-03-01T10:00:00+02:00") + wt("ts", "31/12/2019 10:00") + wt("ts", "yesterday")
        + wt("ts", ""),
        [(2, EVENT), (3, "unreadable timestamp '31/12/2019 10:00'"), (4, "unreadable timestamp 'yesterday'"),
         (5, "missing timestamp")], check=_timezone_converted),
    one("webtracking negative, infinite and non-numeric durations", "webtracking", "a.csv",
        WT_HEAD + wt("dur", "2019-03-01 10:00:00", seconds="-4")
        + wt("dur", "2019-03-01 10:01:00", seconds="1e400") + wt("dur", "2019-03-01 10:02:00", seconds="5s"),
        [(2, "negative duration"), (3, "duration over 86400 s"), (4, "duration is not a number: '5s'")]),
    one("webtracking missing url and domain", "webtracking", "a.csv",
        WT_HEAD + wt("nourl", "2019-03-01", url=""), [(2, "missing url and domain")]),
    one("webtracking javascript: and data: URLs", "webtracking", "a.csv",
        WT_HEAD + wt("script", "2019-03-01 10:00:00", url="javascript:alert(document.cookie)")
        + wt("script", "2019-03-01 10:01:00", url='"data:text/html;base64,PHNjcmlwdD4="'),
        [(2, EVENT), (3, EVENT)], check=_script_urls_verbatim),
    one("webtracking extremely long URL", "webtracking", "a.csv",
        WT_HEAD + wt("long", "2019-03-01 10:00:00", url="https://www.example.com/" + "p" * 250_000),
        [(2, EVENT)], check=_long_url_whole),
    one("webtracking NUL and control bytes in a field kept verbatim", "webtracking", "a.csv",
        WT_HEAD + wt("nulwt", "2019-03-01 10:00:00", url="https://a.example.org/\x00\x07x"), [(2, EVENT)],
        check=_same_text("url", 2, "https://a.example.org/\x00\x07x")),
    _gzip_case("webtracking truncated gzip", "webtracking", "a.csv.gz", WT_HEAD,
               [wt("trunc", f"2019-03-01 10:{i // 60:02d}:{i % 60:02d}", f"https://a.example.org/{i}")
                for i in range(3000)], 2),
    # --- msnbc (each alone: user ids are line numbers)
    one("msnbc non-integer, zero, negative and unknown category ids", "msnbc", "a.seq",
        MSNBC_HEAD + b"1 x 1.5 -1 0 4 99999999999 2\n",
        [(7, EVENT)] + [(7, "unknown msnbc category id")] * 6 + [(7, EVENT)]),
    one("msnbc tabs, repeated spaces and blank lines", "msnbc", "a.seq",
        MSNBC_HEAD + b"\t1\t 2  3 \n\n  \n3\n", [(7, EVENT)] * 3 + [(10, EVENT)]),
    one("msnbc line that is not UTF-8 is one reject", "msnbc", "a.seq", MSNBC_HEAD + b"1 \xff 2\n3\n",
        [(7, "not valid UTF-8"), (8, EVENT)]),
    one("msnbc line over max_line_bytes is one reject", "msnbc", "a.seq",
        MSNBC_HEAD + b"1 " * 3000 + b"\n2\n",
        [(7, "line longer than 1000 bytes"), (8, EVENT)], overrides=("ingest.max_line_bytes=1000",)),
    _gzip_case("msnbc truncated gzip", "msnbc", "a.seq.gz", MSNBC_HEAD,
               [b"%d\n" % random.Random(i).randint(1, 3) for i in range(20_000)], 7),
]


@dataclass(frozen=True)
class ErrorCase:
    """A kind of input that must fail the run with ``error`` and a message containing ``fragment``."""

    kind: str
    source: str
    files: dict[str, bytes]
    error: type[Exception]
    fragment: str
    incremental: bool = False


ERRORS = [
    ErrorCase("empty file", "ga4", {"a.json": b""}, InputError, "all 1 input file(s) are empty"),
    ErrorCase("only blank lines, BOM and CRLF", "ga4", {"a.json": b"\xef\xbb\xbf\r\n  \n\t\r\n"}, InputError,
              "all 1 input file(s) are empty"),
    ErrorCase("gzip of nothing but blank lines", "ga4", {"a.json.gz": gzip.compress(b"\n \n")}, InputError,
              "all 1 input file(s) are empty"),
    ErrorCase("no file matches", "ga4", {}, InputError, "no input matches"),
    ErrorCase("unknown source", "ga5", {"a.json": js(ga4("x"))}, InputError, "unknown source 'ga5'"),
    ErrorCase("CSV missing a required column", "ga4-flat", {"a.csv": b"user_pseudo_id,event_name\nu,x\n"},
              InputError, "missing required column event_timestamp"),
    ErrorCase("semicolon-delimited CSV", "webtracking",
              {"a.csv": b"panelist_id;used_at;url\np;2019-03-01;a.com\n"}, InputError,
              "the header has: panelist_id;used_at;url"),
    ErrorCase("CSV gzip cut inside its header", "webtracking",
              {"a.csv.gz": gzip.compress(WT_HEAD, mtime=0)[:14]}, InputError,
              "damaged gzip file, its header cannot be read"),
    ErrorCase("msnbc without its header", "msnbc", {"a.seq": b"1 2 3\n4 5\n"}, InputError,
              "not in msnbc format"),
    ErrorCase("msnbc files with different categories", "msnbc",
              {"a.seq": MSNBC_HEAD + b"1\n", "b.seq": MSNBC_HEAD.replace(b"tech", b"sports") + b"1\n"},
              InputError, "categories differ"),
    ErrorCase("incremental ingest of a source whose users span files", "msnbc",
              {"a.seq": MSNBC_HEAD + b"1\n"}, ValueError, "incremental ingest is for", incremental=True),
]


def _context(spark, root: Path, overrides: tuple[str, ...] = ()) -> Context:
    ctx = Context(load_config(lake_root=str(root / "lake"), overrides=list(overrides)))
    ctx.__dict__["spark"] = spark
    return ctx


def _write(folder: Path, files: dict[str, bytes]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return [str(folder / name) for name in files]


def _ingest_run(ctx: Context):
    """The single ingest row of ``runs``, checked for conservation."""
    runs = ctx.lake.read("runs").where("stage = 'ingest'").collect()
    assert len(runs) == 1
    run = runs[0]
    assert run.rows_in == run.rows_out + run.rows_rejected
    return run


@dataclass
class GroupResult:
    run: object
    events: list
    rejects: list


@pytest.fixture(scope="module")
def ingest_group(spark, tmp_path_factory) -> Callable[[Case], GroupResult]:
    """Ingest every case of a group once, each case's files in a folder named by its position."""
    done: dict[tuple, GroupResult] = {}

    def run(case: Case) -> GroupResult:
        if case.group not in done:
            root = tmp_path_factory.mktemp("group")
            members = [(i, c) for i, c in enumerate(CASES) if c.group == case.group]
            paths = [p for i, c in members for p in _write(root / f"case{i}", c.files)]
            ctx = _context(spark, root, case.overrides)
            stages.ingest(ctx, case.source, paths)
            done[case.group] = GroupResult(_ingest_run(ctx), ctx.lake.read("events").collect(),
                                           ctx.lake.read("rejects").collect())
        return done[case.group]

    return run


def _of_case(rows: list, column: str, case: Case) -> list:
    folder = f"case{CASES.index(case)}"
    return [r for r in rows if Path(r[column]).parent.name == folder]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.kind, marks=c.marks) for c in CASES])
def test_bad_record_lands_in_events_or_rejects(case: Case, ingest_group) -> None:
    """Each record written is found again, as an event or as a reject with the expected reason."""
    result = ingest_group(case)
    assert result.run.status == "ok"
    assert result.run.rows_in == sum(len(c.expect) for c in CASES if c.group == case.group)
    events = _of_case(result.events, "src_file", case)
    rejects = _of_case(result.rejects, "file", case)
    got = Counter((Path(e.src_file).name, e.src_line, EVENT) for e in events)
    assert got == Counter(k for k in case.expect if k[2] is EVENT)
    wanted = sorted((n, line, r) for n, line, r in case.expect if r is not EVENT)
    found = sorted((Path(r.file).name, r.line, r.reason) for r in rejects)
    assert len(found) == len(wanted), found
    for (name, line, fragment), (got_name, got_line, reason) in zip(wanted, found, strict=True):
        assert (got_name, got_line) == (name, line) and fragment in reason, (fragment, reason)
    if case.check:
        case.check(events, rejects)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.kind) for c in ERRORS])
def test_unreadable_input_fails_clearly(case: ErrorCase, spark, tmp_path) -> None:
    """Input that cannot be ingested at all fails the run with a clear message, recorded in ``runs``."""
    paths = _write(tmp_path / "in", case.files) or [str(tmp_path / "in" / "nothing*.json")]
    ctx = _context(spark, tmp_path)
    with pytest.raises(case.error, match=re.escape(case.fragment)):
        stages.ingest(ctx, case.source, paths, incremental=case.incremental)
    runs = ctx.lake.read("runs").collect()
    assert [r.status for r in runs] == ["failed"]
    assert case.fragment in json.loads(runs[0].details)["error"]
    assert runs[0].rows_in == runs[0].rows_out + runs[0].rows_rejected == 0


# --- property: generated GA4 records, valid and mutated

VALID, INVALID, EITHER = "valid", "invalid", "either"
JUNK_TS = ["abc", "", "1e30", "-5", "NaN", "9" * 25, "2024-13-45", "4102444800000000", {"a": 1}, [1, 2], True]


@st.composite
def ga4_line(draw, n: int) -> tuple[bytes, str]:
    """A record for line ``n`` of a file, and whether it must be an event, a reject, or may be either."""
    pages = ["https://shop.example.com/a", "/relative", "", "javascript:void(0)"]
    event = ga4(f"user-{draw(st.integers(0, 5))}", T0 + n * 1_000_000, page=draw(st.sampled_from(pages)))
    event["event_params"].append(param("page_title", {"string_value": draw(st.text(max_size=30))}))
    if draw(st.booleans()):
        ms = str(draw(st.integers(0, 10**6)))
        event["event_params"].append(param("engagement_time_msec", {"int_value": ms}))
    mutation = draw(st.sampled_from(["none", "none", "drop_user", "blank_user", "junk_ts", "drop_ts",
                                     "params_type", "junk_engagement", "truncate", "text", "retype"]))
    outcome = INVALID
    if mutation == "none":
        outcome = VALID
    elif mutation == "drop_user":
        del event["user_pseudo_id"]
    elif mutation == "blank_user":
        event["user_pseudo_id"] = draw(st.sampled_from(["", " ", "   ", None]))
    elif mutation == "junk_ts":
        event["event_timestamp"] = draw(st.sampled_from(JUNK_TS))
    elif mutation == "drop_ts":
        del event["event_timestamp"]
    elif mutation == "params_type":
        event["event_params"] = draw(st.sampled_from(["oops", 7, {"key": "page_location"}, [1, 2]]))
    elif mutation == "junk_engagement":
        event["event_params"] = [p for p in event["event_params"] if p["key"] != "engagement_time_msec"]
        event["event_params"].append(param("engagement_time_msec", {"int_value": draw(
            st.sampled_from(["12abc", "-1", "NaN", "1e30", "", "0x10"]))}))
    elif mutation == "retype":
        key = draw(st.sampled_from(["event_name", "device", "geo", "items", "ecommerce", "event_date"]))
        event[key] = draw(st.sampled_from([3, "x", None, [], {"z": [1]}, 1.5e300]))
        outcome = EITHER
    raw = json.dumps(event, ensure_ascii=draw(st.booleans())).encode()
    if mutation == "truncate":
        raw = raw[: draw(st.integers(1, len(raw) - 1))]
    elif mutation == "text":
        chars = st.characters(exclude_characters="\n\r\ufeff", exclude_categories=("Cs",))  # Cs: no UTF-8
        text = draw(st.text(chars, min_size=1, max_size=60))
        raw = text.encode() if text.encode().strip() else b"?"
    return raw, outcome


@st.composite
def ga4_file(draw) -> tuple[list[tuple[bytes, str]], bool, bytes]:
    """30-80 records, gzip or not, with a line ending of \\n or \\r\\n."""
    records = [draw(ga4_line(n)) for n in range(draw(st.integers(30, 80)))]
    return records, draw(st.booleans()), draw(st.sampled_from([b"\n", b"\r\n"]))


@settings(max_examples=10, deadline=None, database=None)
@given(ga4_file())
def test_generated_ga4_records_are_conserved(spark, tmp_path_factory, generated) -> None:
    """Whatever the records, ingest keeps every one: valid ones as events, bad ones as reasoned rejects."""
    records, compressed, newline = generated
    root = tmp_path_factory.mktemp("prop")
    data = b"".join(raw + newline for raw, _ in records)
    (root / "events.json").write_bytes(gzip.compress(data) if compressed else data)
    ctx = _context(spark, root)
    try:
        stages.ingest(ctx, "ga4", [str(root / "events.json")])
    except InputError:
        return
    run = _ingest_run(ctx)
    assert run.status == "ok" and run.rows_in == len(records)
    events = Counter(e.src_line for e in ctx.lake.read("events").collect())
    rejects = {r.line: r.reason for r in ctx.lake.read("rejects").collect()}
    assert all(reason and reason.strip() for reason in rejects.values())
    for line, (_, outcome) in enumerate(records, start=1):
        assert events[line] + (line in rejects) == 1, line
        if outcome == VALID:
            assert events[line] == 1, (line, rejects.get(line))
        elif outcome == INVALID:
            assert line in rejects, line
