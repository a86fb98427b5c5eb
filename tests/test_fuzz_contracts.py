"""Fuzzed contracts: random and adversarial bytes never raise, always dead-letter with a reason, and
every dead letter gives back the original bytes exactly.

Covers ``argus.schemas.validate`` (and the dead letters built from its rejections), the topic validator's
per-record path (``argus validate``), and the JSON Lines, CSV and Parquet readers of ``argus import``.
Example counts are modest so the file runs in well under a minute; ``ARGUS_FUZZ_PROFILE=deep``
runs many more (and takes minutes) when hunting.
"""

from __future__ import annotations

import base64
import importlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from argus.imports import ImportDeadLetter, SourceError, load_mapping, run_import
from argus.pipelines.topic_validator import ValidationReport, _handle
from argus.schemas.bounds import EventTimeBounds
from argus.schemas.models import DeadLetter, EventBase
from argus.schemas.validate import Rejection, validate, validate_batch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "import"
NOW = datetime(2026, 11, 2, tzinfo=UTC)
BOUNDS = EventTimeBounds()
# Every reason code the validator defines (module constants in lower snake case), plus the import's own.
_VALIDATE = importlib.import_module("argus.schemas.validate")
REASON_CODES = {v for k, v in vars(_VALIDATE).items() if k.isupper() and isinstance(v, str) and v.islower()}

settings.register_profile(
    "contracts", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile("deep", max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
FUZZ = settings.get_profile(os.environ.get("ARGUS_FUZZ_PROFILE", "contracts"))


# --- adversarial JSON ------------------------------------------------------------------------------
# Documents are built as text, so they can hold what a JSON library would refuse to write:
# duplicate keys, NaN and Infinity tokens, numbers beyond float and int64 range, lone surrogates,
# raw control characters, deep nesting, and truncation anywhere.

NUMBER_TOKENS = st.sampled_from(
    [
        "0",
        "-0",
        "1e999",
        "-1e999",
        "NaN",
        "Infinity",
        "-Infinity",
        "1" * 40,
        "-" + "9" * 30,
        "18446744073709551616",
        "9223372036854775808",
        "1.0e-400",
        "0.1",
        "01",
        "1.",
        ".5",
        "+1",
        "0x10",
    ]
)
NASTY_STRINGS = st.sampled_from(
    [
        "",
        "\x00",
        "a\x00b",
        "\x1b[31mred",
        "line\nbreak",
        "\u202e\u2066rtl",
        "\ufeff",
        "\ud800",
        "\udfff",
        "\ud83d\ude00",
        "x" * 3000,
        "chat",
        "payment",
        "account",
        "2026-11-01T00:00:00Z",
        "2026-11-01T00:00:00",
        "9999-12-31T23:59:59Z",
        "0001-01-01T00:00:00Z",
        "u1",
    ]
)
KEYS = st.sampled_from(
    [
        "event_id",
        "ts",
        "user_id",
        "context",
        "event_type",
        "text",
        "amount",
        "currency",
        "instrument_id",
        "status",
        "action",
        "username",
        "duration_ms",
        "schema_version",
        "__proto__",
        "",
        "\ud800",
    ]
)


def _escape(text: str) -> str:
    """A JSON string literal; lone surrogates become \\uXXXX escapes, control characters raw or escaped."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif 0xD800 <= code <= 0xDFFF or (code < 0x20 and code % 2):
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)  # even control characters stay raw: invalid JSON the validator must refuse
    out.append('"')
    return "".join(out)


def _text(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return strategy.map(_escape)


json_scalars = st.one_of(
    NUMBER_TOKENS,
    _text(NASTY_STRINGS),
    _text(st.text(max_size=20)),
    st.sampled_from(["true", "false", "null"]),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)


def _objects(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    pairs = st.lists(st.tuples(_text(KEYS), children), max_size=8)
    return pairs.map(lambda items: "{" + ",".join(f"{k}:{v}" for k, v in items) + "}")


json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5).map(lambda items: "[" + ",".join(items) + "]"), _objects(children)
    ),
    max_leaves=30,
)


def _valid_event(**fields: Any) -> dict[str, Any]:
    return {
        "event_id": "e-1",
        "ts": "2026-11-01T12:00:00Z",
        "user_id": "u1",
        "context": "ch-1",
        "event_type": "chat",
        "text": "hello",
        **fields,
    }


@st.composite
def event_like(draw: st.DrawFn) -> bytes:
    """A valid event with one field replaced, one duplicated, or one added, as raw text."""
    pairs = [(_escape(k), orjson.dumps(v).decode()) for k, v in _valid_event().items()]
    kind = draw(st.sampled_from(["replace", "duplicate", "add", "none"]))
    if kind != "none":
        index = draw(st.integers(0, len(pairs) - 1))
        value = draw(json_values)
        if kind == "replace":
            pairs[index] = (pairs[index][0], value)
        elif kind == "duplicate":
            pairs.insert(draw(st.integers(0, len(pairs))), (pairs[index][0], value))
        else:
            pairs.append((draw(_text(KEYS)), value))
    return ("{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}").encode("utf-8", "surrogatepass")


def _nested(depth: int, opener: str) -> bytes:
    closer = {"[": "]", '{"a":': "}"}[opener]
    return (opener * depth + "1" + closer * depth).encode()


adversarial_documents = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda text: text.encode("utf-8", "surrogatepass")),
    event_like(),
    st.builds(_nested, st.integers(1, 3000), st.sampled_from(["[", '{"a":'])),
)


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """An adversarial document, possibly truncated or with bytes spliced in (invalid UTF-8 included)."""
    raw = draw(adversarial_documents)
    how = draw(st.sampled_from(["whole", "truncate", "splice", "bom"]))
    if how == "truncate" and raw:
        return raw[: draw(st.integers(0, len(raw) - 1))]
    if how == "splice":
        at = draw(st.integers(0, len(raw)))
        return raw[:at] + draw(st.binary(min_size=1, max_size=4)) + raw[at:]
    if how == "bom":
        return b"\xef\xbb\xbf" + raw
    return raw


# --- argus.schemas.validate --------------------------------------------------------------------------------


def _check_result(raw: bytes, result: EventBase | Rejection) -> None:
    if isinstance(result, Rejection):
        assert result.raw == raw
        assert result.reason_code in REASON_CODES
        assert result.reason.strip()
        letter = DeadLetter.model_validate_json(
            result.to_dead_letter("events.chat", 0, 7, rejected_at=NOW).model_dump_json()
        )
        assert base64.b64decode(letter.original_b64, validate=True) == raw
        assert letter.reason == result.reason and letter.reason_code == result.reason_code
    else:
        assert isinstance(result, EventBase)
        # An accepted event serialises, and its serialisation is accepted as the same event.
        again = validate(result.model_dump_json().encode(), now=NOW, bounds=BOUNDS)
        assert again == result


@FUZZ
@given(damaged())
def test_validate_never_raises_and_rejections_round_trip(raw: bytes) -> None:
    _check_result(raw, validate(raw, now=NOW, bounds=BOUNDS))


@FUZZ
@given(st.lists(damaged(), max_size=6))
def test_validate_batch_keeps_every_record(raws: list[bytes]) -> None:
    results = list(validate_batch(raws, now=NOW, bounds=BOUNDS))
    assert len(results) == len(raws)
    for raw, result in zip(raws, results, strict=True):
        if isinstance(result, Rejection):
            assert result.raw == raw


@pytest.mark.parametrize(
    ("raw", "reason_code"),
    [
        (b"", "not_json"),
        (b"\xff\xfe", "not_utf8"),
        (b'"\\ud800"', "not_json"),
        (b"NaN", "not_json"),
        (b"[" * 5000 + b"]" * 5000, "not_json"),
        (orjson.dumps(_valid_event(amount=1)), "unexpected_field"),
        (orjson.dumps(_valid_event(text="a\x00b")), "invalid_value"),
        (orjson.dumps(_valid_event(user_id="u1\n")), "invalid_value"),
        (orjson.dumps(_valid_event(context="\x1b[2J")), "invalid_value"),
        (b'{"event_type":"chat","event_type":"click"}', "duplicate_key"),
        (orjson.dumps(_valid_event())[:-1] + b',"text":"bye"}', "duplicate_key"),
        (orjson.dumps(_valid_event())[:-1] + b',"x":1e999}', "not_json"),
        (b'{"event_type":"chat","event_\\u0074ype":"click"}', "duplicate_key"),  # an escaped copy
        (b'{"user_id":"a:b","user_id":"c"}', "duplicate_key"),  # colons inside strings
        (b'{"event_type":"chat","context":{"a":1,"a":2}}', "duplicate_key"),  # at any depth
        (b'{"event_type":"chat","a/b":1,"a\\/b":2}', "duplicate_key"),  # one key spelled two ways
        (b'{"user_id":"a\\":b","user_id":"c"}', "duplicate_key"),  # an escaped quote before a colon
        (b'{"user_id":"a\\\\","user_id":"b:\\"c"}', "duplicate_key"),  # escaped backslash, then quote
        (b'{"event_type":"chat","text":"x\\u003ay","text":"x\\u003ay"}', "duplicate_key"),  # a colon as \u003a
        (b'{"event_type":"click","action":"view","duration_ms":' + b"9" * 30 + b"}", "missing_field"),
    ],
)
def test_adversarial_examples_have_a_stable_reason(raw: bytes, reason_code: str) -> None:
    result = validate(raw, now=NOW, bounds=BOUNDS)
    assert isinstance(result, Rejection), result
    assert result.reason_code == reason_code, result.reason
    _check_result(raw, result)


def test_an_event_with_ordinary_whitespace_in_text_is_accepted() -> None:
    result = validate(orjson.dumps(_valid_event(text="line one\nline\ttwo\r\n")), now=NOW, bounds=BOUNDS)
    assert isinstance(result, EventBase)
    assert result.text == "line one\nline\ttwo\r\n"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "fields",
    [
        {"text": 'he said "gg" \\o/ C:\\path\tand\nmore'},
        {"text": "a/b: c", "context": "/p/6"},
        {"context": '"quoted": /p/1'},
    ],
)
def test_events_with_escaped_strings_are_accepted_as_written(fields: dict[str, str]) -> None:
    # orjson writes "\\", "\"" and control escapes; some writers (the world's JSON lines) also write "\/".
    raw = orjson.dumps(_valid_event(**fields)).replace(b"/", b"\\/")
    assert b"\\" in raw
    result = validate(raw, now=NOW, bounds=BOUNDS)
    assert isinstance(result, EventBase), result
    for name, value in fields.items():
        assert getattr(result, name) == value


def _short_escape(text: str) -> str:
    """A JSON string literal with every short escape JSON has (\\", \\\\, \\/, \\b, \\f, \\n, \\r, \\t)."""
    short = {'"': '\\"', "\\": "\\\\", "/": "\\/", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return '"' + "".join(short.get(c, c) for c in text) + '"'


ESCAPED_TEXT = st.text(alphabet='ab:/"\\\n\t', max_size=6).map(_short_escape)


@FUZZ
@given(st.lists(st.tuples(ESCAPED_TEXT, st.one_of(ESCAPED_TEXT, st.sampled_from(["1", "null"]))), max_size=6))
def test_repeated_keys_are_found_exactly_with_escapes(pairs: list[tuple[str, str]]) -> None:
    # Keys and values made of colons, slashes, quotes and backslashes, short-escaped: the fast path's case.
    text = "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"
    result = validate(text.encode(), now=NOW, bounds=BOUNDS)
    repeated = isinstance(result, Rejection) and result.reason_code == "duplicate_key"
    assert repeated == _repeats(text), text


def _repeats(text: str) -> bool:
    """The reference: a pair-preserving parse that notices a repeated key at any depth."""
    found = False

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal found
        found |= len({k for k, _ in items}) != len(items)
        return dict(items)

    json.loads(text, object_pairs_hook=pairs)
    return found


@FUZZ
@given(_objects(json_scalars))
def test_repeated_keys_are_found_exactly(text: str) -> None:
    # Flat objects take the validator's fast path (colon counting); it must agree with a full parse.
    raw = text.encode("utf-8", "surrogatepass")
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return  # refused before keys are looked at
    result = validate(raw, now=NOW, bounds=BOUNDS)
    repeated = isinstance(result, Rejection) and result.reason_code == "duplicate_key"
    assert isinstance(parsed, dict)
    assert repeated == _repeats(text)


# --- the topic validator (argus validate) --------------------------------------------------------------


@dataclass
class _Record:
    value: bytes | None
    key: bytes | None
    partition: int = 2
    offset: int = 41


class _Sink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    def send(self, topic: str, key: bytes | None = None, value: bytes = b"") -> None:
        self.sent.append((topic, key, value))


@FUZZ
@given(st.lists(st.one_of(damaged(), st.none()), min_size=1, max_size=5), st.one_of(st.none(), st.binary(max_size=20)))
def test_topic_validator_dead_letters_every_reject_with_its_bytes(
    values: list[bytes | None], key: bytes | None
) -> None:
    report, sink, seen = ValidationReport(), _Sink(), set[str]()
    for offset, value in enumerate(values):
        _handle(_Record(value, key, offset=offset), "events.chat", seen, report, sink, "dlq.events", BOUNDS)
    assert sum(report.valid.values()) + report.dead_lettered == len(values)
    assert len(sink.sent) == report.dead_lettered
    rejected = [(o, v) for o, v in enumerate(values) if not isinstance(validate(v or b"", bounds=BOUNDS), EventBase)]
    by_offset = {}
    for topic, sent_key, payload in sink.sent:
        assert topic == "dlq.events" and sent_key == key
        letter = DeadLetter.model_validate_json(payload)
        assert letter.reason.strip() and letter.source_topic == "events.chat"
        by_offset[letter.source_offset] = base64.b64decode(letter.original_b64)
    for offset, value in rejected:
        assert by_offset[offset] == (value or b"")


# --- the readers of argus import ----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _salt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARGUS_IMPORT_SALT", "fuzz-salt-not-secret")
    monkeypatch.delenv("ARGUS_EARLIEST_TS", raising=False)


def _letters(path: Path) -> list[ImportDeadLetter]:
    return [ImportDeadLetter.model_validate_json(line) for line in path.read_bytes().splitlines()]


def _run(source: Path, mapping_name: str, lake: Path) -> tuple[Any, list[ImportDeadLetter]]:
    summary = run_import(source, load_mapping(EXAMPLES / f"{mapping_name}.toml"), out=lake)
    letters = _letters(Path(summary.rejects_file)) if Path(summary.rejects_file).is_file() else []
    assert summary.rows == sum(summary.imported.values()) + sum(summary.rejected.values())
    assert len(letters) == sum(summary.rejected.values())
    assert all(letter.reason.strip() and letter.reason_code for letter in letters)
    return summary, letters


def _lines(chunks: list[bytes]) -> Iterator[bytes]:
    for chunk in chunks:
        yield chunk.replace(b"\n", b" ").replace(b"\r", b" ")


@FUZZ
@given(st.lists(damaged(), max_size=6))
def test_import_json_lines_dead_letters_every_bad_line_byte_for_byte(
    tmp_path_factory: pytest.TempPathFactory, lines: list[bytes]
) -> None:
    folder = tmp_path_factory.mktemp("jsonl")
    body = list(_lines(lines))
    source = folder / "source.jsonl"
    source.write_bytes(b"\n".join(body) + b"\n")
    summary, letters = _run(source, "orders", folder / "lake")
    assert summary.rows == len([line for line in body if line.strip()])
    for letter in letters:
        assert base64.b64decode(letter.original_b64) == body[int(letter.source_offset or 0) - 1]


@FUZZ
@given(st.lists(st.binary(max_size=80), max_size=6))
def test_import_csv_dead_letters_every_bad_record_byte_for_byte(
    tmp_path_factory: pytest.TempPathFactory, records: list[bytes]
) -> None:
    folder = tmp_path_factory.mktemp("csv")
    header = b"booking_id;booked_at;customer;card_number;amount;merchant;kind;result\n"
    source = folder / "source.csv"
    source.write_bytes(header + b"\n".join(records))
    _, letters = _run(source, "payments", folder / "lake")
    data = source.read_bytes()[len(header) :]
    for letter in letters:
        original = base64.b64decode(letter.original_b64)
        assert original and original in data  # the record's own bytes, newline included where it had one


@FUZZ
@given(st.binary(max_size=400))
def test_import_parquet_refuses_garbage_with_one_clear_error(
    tmp_path_factory: pytest.TempPathFactory, raw: bytes
) -> None:
    source = tmp_path_factory.mktemp("pq") / "orders.parquet"
    source.write_bytes(raw)
    with pytest.raises(SourceError, match="not a readable Parquet file"):
        run_import(source, load_mapping(EXAMPLES / "orders.toml"), out=source.parent / "lake")


@FUZZ
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "order_date": st.one_of(st.none(), NASTY_STRINGS, st.text(max_size=30)),
                "email": st.one_of(st.none(), NASTY_STRINGS),
                "type": st.one_of(st.none(), st.sampled_from(["view", "cart", "order", "\x00", "\ud800"])),
                "total": st.one_of(st.none(), st.floats()),
                "sku": st.one_of(st.none(), NASTY_STRINGS),
                "currency": st.sampled_from(["EUR", "eur", "", "\x00UR"]),
                "payment_token": st.one_of(st.none(), NASTY_STRINGS),
                "status": st.sampled_from(["paid", "failed", "?"]),
            }
        ),
        max_size=6,
    )
)
def test_import_parquet_rows_dead_letter_as_json(
    tmp_path_factory: pytest.TempPathFactory, rows: list[dict[str, Any]]
) -> None:
    folder = tmp_path_factory.mktemp("pqrows")
    source = folder / "orders.parquet"
    columns = ["order_date", "email", "type", "total", "sku", "currency", "payment_token", "status"]
    schema = pa.schema([(c, pa.float64() if c == "total" else pa.string()) for c in columns])
    safe = [
        {k: (v.encode("utf-8", "replace").decode() if isinstance(v, str) else v) for k, v in r.items()} for r in rows
    ]
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(safe, schema=schema), buffer)
    source.write_bytes(buffer.getvalue())
    summary, letters = _run(source, "orders", folder / "lake")
    assert summary.rows == len(rows)
    for letter in letters:
        assert orjson.loads(base64.b64decode(letter.original_b64)) == letter.row


@FUZZ
@given(st.binary(max_size=600), st.sampled_from(["jsonl", "csv"]))
def test_import_of_a_whole_file_of_random_bytes_never_raises(
    tmp_path_factory: pytest.TempPathFactory, raw: bytes, fmt: str
) -> None:
    folder = tmp_path_factory.mktemp("whole")
    source = folder / f"source.{fmt}"
    source.write_bytes(raw)
    try:
        _, letters = _run(source, "orders" if fmt == "jsonl" else "payments", folder / "lake")
    except SourceError as exc:  # the header of a CSV file lacks the mapped columns: one clear line
        assert fmt == "csv" and str(exc).isprintable()
        return
    for letter in letters:
        assert base64.b64decode(letter.original_b64) in raw


@FUZZ
@given(st.lists(st.text(max_size=12), min_size=1, max_size=5))
def test_a_crafted_csv_header_cannot_break_the_one_line_error(
    tmp_path_factory: pytest.TempPathFactory, names: list[str]
) -> None:
    import csv

    buffer = io.StringIO()
    csv.writer(buffer, delimiter=";").writerow([n.encode("utf-8", "replace").decode() for n in names])
    source = tmp_path_factory.mktemp("header") / "source.csv"
    source.write_text(buffer.getvalue() + "1;2\n", encoding="utf-8")
    with pytest.raises(SourceError) as refused:
        run_import(source, load_mapping(EXAMPLES / "payments.toml"), out=source.parent / "lake")
    assert str(refused.value).isprintable()
