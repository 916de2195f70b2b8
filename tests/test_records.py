"""The raw record readers, without Spark: splits, encodings, over-long lines, CSV rows."""

import gzip

from hypothesis import example, given
from hypothesis import strategies as st

from beha2vec.ingest.files import Split, plan_splits, resolve_paths
from beha2vec.ingest.records import decode, iter_csv, iter_lines, utf8_column


def _lines(path, start=0, end=-1, first=1, gz=False, max_bytes=1000):
    return list(iter_lines(Split(str(path), start, end, gz, first), max_bytes))


def test_byte_range_splits_read_every_line_exactly_once(tmp_path):
    path = tmp_path / "a.json"
    lines = [f'{{"n": {i}, "pad": "{"x" * (i % 37)}"}}' for i in range(500)]
    path.write_bytes(("\n".join(lines) + "\n").encode())
    splits = plan_splits([str(path)], split_bytes=997, splittable=True)
    assert len(splits) > 5
    got = [c.decode() for s in splits for _, _, c, _ in iter_lines(s, 10_000)]
    assert got == lines
    offsets = [o for s in splits for _, o, _, _ in iter_lines(s, 10_000)]
    data = path.read_bytes()
    assert all(data[o:].startswith(lines[i].encode()) for i, o in enumerate(offsets))


def test_line_numbers_bom_crlf_blank_lines(tmp_path):
    path = tmp_path / "b.json"
    path.write_bytes(b"\xef\xbb\xbf{\"a\": 1}\r\n\r\n   \n{\"a\": 2}\n")
    assert [(n, c) for n, _, c, _ in _lines(path)] == [(1, b'{"a": 1}'), (4, b'{"a": 2}')]


def test_gzip_and_overlong_lines(tmp_path):
    path = tmp_path / "c.json.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"short\n" + b"y" * 5000 + b"\nafter\n")
    rows = _lines(path, gz=True, max_bytes=100)
    assert [r[0] for r in rows] == [1, 2, 3]
    assert rows[1][3] == "line longer than 100 bytes" and len(rows[1][2]) == 101
    assert rows[2][2] == b"after"


def test_decode_reports_bad_bytes():
    text, error = decode(b"caf\xe9")
    assert text == "caf\\xe9"
    assert error == "not valid UTF-8 (byte 0xe9 at position 3)"
    assert decode("café".encode()) == ("café", None)


LINE_BYTES = st.binary(max_size=12) | st.text(max_size=6).map(str.encode)


@given(st.lists(LINE_BYTES, max_size=8), st.lists(st.sampled_from([None, "line longer than 9 bytes"]),
                                                   min_size=8, max_size=8))
@example([b"ok", b"\xed\xa0\x80"], [None] * 8)  # an encoded surrogate: invalid in strict UTF-8
@example([b"\xc0\xaf", "é".encode()], [None] * 8)  # an overlong encoding
def test_bulk_utf8_column_equals_strict_python_decoding(contents, earlier):
    before = earlier[:len(contents)]
    errors = list(before)
    expected = [decode(c) for c in contents]
    assert utf8_column(list(contents), errors).to_pylist() == [text for text, _ in expected]
    assert errors == [old or bad for old, (_, bad) in zip(before, expected, strict=True)]


def test_csv_rows_map_headers_and_flag_problems(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(
        b"\xef\xbb\xbfid,ts,extra,url\n"
        b"u1,2020-01-01,zzz,https://a.com/\n"
        b"u2,2020-01-02\n"
        b'u3,"2020-01-03",x,"https://b.com/?q=a,b"\n'
        b"\n"
        b"u4,2020-01-04,\xff,https://c.com/\n"
    )
    rows = list(iter_csv(Split(str(path), 0, -1, False, 1), ["user_id", "ts_raw", "url", "missing"],
                         {"user_id": 0, "ts_raw": 1, "url": 3}, 10_000))
    assert [r[0] for r in rows] == [2, 3, 4, 6]
    assert rows[0][4] == ["u1", "2020-01-01", "https://a.com/", None]
    assert rows[1][3] == "expected at least 4 fields, found 2"
    assert rows[2][4][2] == "https://b.com/?q=a,b"
    assert rows[3][3] == "not valid UTF-8 (byte 0xff)" and rows[3][4] == [None] * 4


def test_resolve_paths_folders_globs_and_errors(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/events_20240101.json.gz", "d/sub/x.json", "d/README.md", "d/.hidden.json"):
        (tmp_path / name).write_text("{}\n")
    found = resolve_paths([str(tmp_path / "d")], (".json", "events_"))
    assert [p.split("/d/")[1] for p in found] == ["events_20240101.json.gz", "sub/x.json"]
    assert resolve_paths([str(tmp_path / "d" / "README.md")])[0].endswith("README.md")
    import pytest

    from beha2vec.ingest.files import InputError

    with pytest.raises(InputError, match="no input matches"):
        resolve_paths([str(tmp_path / "nothing*")])
