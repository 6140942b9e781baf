"""Property tests of the cache codec: exact round trips, and garbage in -> CacheFormatError."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kldiv.cachefile import format_cache, header_for, parse_cache
from kldiv.errors import CacheFormatError
from kldiv.scales import CalibrationTable

# Names TensorRT could emit: any text without line breaks or NUL, at least one character.
# The alphabet leans on the characters that matter to the parser (':', ' ', brackets, '/',
# digits, hex letters) and includes the rest of Unicode (but not surrogates).
_SPECIAL = st.sampled_from(list(": /[]()*._-0123456789abcdefABCDEF%=@\t\x0b\x0c\x85\u2028é漢"))
_ANY = st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x00")
NAMES = st.text(st.one_of(_SPECIAL, _ANY), min_size=1, max_size=40)
BITS = st.one_of(
    st.integers(0, 0xFFFFFFFF),
    st.sampled_from([0, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7FC00001, 1, 0x3C010A14]),
)
HEADERS = st.builds(
    header_for,
    st.sampled_from(["5.1.0", "6.0.1", "7.2.3", "8.6.1", "9.3.0", "10.0.0", "10.9", "10.14.1"]),
    st.sampled_from(["entropy2", "entropy", "minmax", "legacy"]),
)
TABLES = st.builds(
    lambda entries, header: CalibrationTable.from_bits(entries, header=header),
    st.lists(st.tuples(NAMES, BITS), max_size=30, unique_by=lambda e: e[0]),
    HEADERS,
)


@given(TABLES)
def test_tables_round_trip_exactly(table: CalibrationTable) -> None:
    text = format_cache(table)
    back = parse_cache(text)
    assert back == table  # names, order and bits
    assert back.header == table.header
    assert format_cache(back) == text


@given(st.lists(NAMES, min_size=1, max_size=10, unique=True), st.data())
def test_names_with_colon_space_keep_their_scale(names: list[str], data: st.DataObject) -> None:
    # names ending in ': <hex>' look like an entry themselves; the last ': ' still wins
    entries = [(n + ": 3c00" if i % 2 else n, data.draw(BITS)) for i, n in enumerate(names)]
    if len({n for n, _ in entries}) != len(entries):
        return
    t = CalibrationTable.from_bits(entries, header=header_for("8.6.1"))
    back = parse_cache(format_cache(t))
    assert [(n, back.bits(n)) for n in back] == entries


def _check_garbage(text: str) -> None:
    try:
        t = parse_cache(text)
    except CacheFormatError as exc:
        assert exc.line is not None and exc.line >= 1
        assert exc.hint
        return
    # it parsed: every entry must be the last ': ' split of its own line
    lines = [ln.rstrip("\r") for ln in text.lstrip("\ufeff").split("\n")[1:]]
    expected = [ln.rpartition(": ") for ln in lines if ln.strip()]
    assert [(n, t.bits(n)) for n in t] == [(n, int(v, 16)) for n, _, v in expected]


@settings(max_examples=300)
@given(st.text(max_size=200))
def test_arbitrary_text_parses_or_raises_with_a_line(text: str) -> None:
    _check_garbage(text)


@settings(max_examples=300)
@given(st.lists(st.text(st.sampled_from(list("ab: 0123456789fx\r\t")), max_size=14), max_size=8))
def test_cache_like_text_parses_or_raises_with_a_line(lines: list[str]) -> None:
    _check_garbage("TRT-8601-EntropyCalibration2\n" + "\n".join(lines))


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_parse_or_raise(data: bytes) -> None:
    try:
        parse_cache(data)
    except CacheFormatError as exc:
        assert exc.line is not None and exc.line >= 1
