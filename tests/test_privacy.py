"""``[privacy] hash_fields``: personal fields stored salted-hashed; equal values stay equal in every lake writer."""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import UTC, date, datetime
from pathlib import Path

import orjson
import pandas as pd
import pyarrow.parquet as pq
import pytest

from argus.schemas.models import AccountEvent
from argus.schemas.privacy import PrivacyError, Pseudonymizer, current_privacy, keyed_digest, load_privacy
from argus.schemas.validate import validate

SALT = "privacy-test-salt-0123456789"
HEX32 = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture
def hashing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Pseudonymizer:
    config = Path(str(tmp_path / "argus.toml"))
    config.write_text('[privacy]\nhash_fields = ["username", "previous_username", "device_fp", "network_fp"]\n')
    monkeypatch.setenv("ARGUS_CONFIG", str(config))
    monkeypatch.setenv("ARGUS_HASH_SALT", SALT)
    return current_privacy()


def _account(**fields: object) -> AccountEvent:
    base: dict[str, object] = {
        "event_id": "a1",
        "ts": datetime(2026, 10, 1, tzinfo=UTC),
        "user_id": "u1",
        "context": "web",
        "action": "signup",
        "username": "Hawk44",
        "device_fp": "0123456789abcdef",
    }
    return AccountEvent(**{**base, **fields})  # type: ignore[arg-type]


def test_the_digest_is_a_keyed_hmac_that_still_fits_the_contract(hashing: Pseudonymizer) -> None:
    expected = hmac.new(SALT.encode(), b"argus-field-v1\x00Hawk44", hashlib.sha256).hexdigest()[:32]
    assert keyed_digest(SALT.encode(), "Hawk44") == expected
    hashed = hashing.event(_account())
    assert hashed.username == expected and HEX32.match(hashed.device_fp or "")
    assert hashed.network_fp is None and hashed.user_id == "u1"  # absent stays absent; ids are not hashed
    assert not isinstance(validate(hashed.model_dump_json().encode()), type(None))
    assert validate(hashed.model_dump_json().encode()) == hashed  # still a valid event
    assert hashing.event(_account(event_id="a2")).username == hashed.username  # equal values stay equal
    assert hashing.event(_account(username="Hawk45")).username != hashed.username


def test_configuration_mistakes_are_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ARGUS_HASH_SALT", raising=False)
    assert not load_privacy(config={}).active
    with pytest.raises(PrivacyError, match="ARGUS_HASH_SALT is not set"):
        load_privacy(config={"privacy": {"hash_fields": ["username"]}})
    with pytest.raises(PrivacyError, match="'text' cannot be hashed"):
        load_privacy(environ={"ARGUS_HASH_SALT": SALT}, config={"privacy": {"hash_fields": ["text"]}})
    with pytest.raises(PrivacyError, match="shorter than 16"):
        load_privacy(environ={"S": "short"}, config={"privacy": {"hash_fields": ["username"], "salt_env": "S"}})
    with pytest.raises(PrivacyError, match="unknown key 'salt'"):
        load_privacy(config={"privacy": {"salt": "inline"}})


def test_generate_to_the_lake_hashes_and_keeps_equality(hashing: Pseudonymizer, tmp_path: Path) -> None:
    from argus.world.generate import World, config, write_world

    world = World(config(users=60, days=2, seed=3, start=date(2026, 10, 1)))
    plain = pd.concat(t["account"].to_pandas() for _, t in world.days())
    out = tmp_path / "world"
    write_world(World(config(users=60, days=2, seed=3, start=date(2026, 10, 1))), out)
    stored = pq.read_table(out / "events" / "event_type=account").to_pandas()
    assert len(stored) == len(plain) > 0
    assert stored["username"].str.fullmatch(HEX32.pattern).all()
    assert not set(stored["username"]) & set(plain["username"])
    # One username -> one digest, and distinct usernames stay distinct.
    pairs = set(zip(plain["username"].sort_index(), stored.sort_values(["ts", "event_id"])["username"], strict=False))
    assert len({p for p, _ in pairs}) == len({h for _, h in pairs})
    truth = pq.read_table(out / "truth" / "users.parquet").to_pandas()
    assert truth["username"].str.fullmatch(HEX32.pattern).all()


def test_import_and_ingest_store_the_same_digests(hashing: Pseudonymizer, tmp_path: Path) -> None:
    from argus.imports import load_mapping, run_import
    from argus.jobs.ingest import validate_partition

    event = _account(username="Same Name", ts=datetime(2024, 1, 1, tzinfo=UTC))
    source = tmp_path / "accounts.jsonl"
    source.write_bytes(event.model_dump_json().encode() + b"\n")
    mapping = tmp_path / "accounts.toml"
    mapping.write_text(
        "[source]\nformat = 'jsonl'\n[event]\nevent_type = 'account'\n"
        + "".join(
            f"[fields.{name}]\ncolumn = '{name}'\n"
            for name in ("event_id", "ts", "user_id", "context", "action", "username", "device_fp")
        )
    )
    run_import(source, load_mapping(mapping), out=tmp_path / "lake")
    imported = pq.read_table(tmp_path / "lake" / "events" / "event_type=account").to_pylist()[0]
    batch = pd.DataFrame({"topic": ["events.account"], "partition": [0], "offset": [0], "value": [source.read_bytes()]})
    ingested = next(validate_partition(iter([batch]), privacy=hashing)).iloc[0]
    assert imported["username"] == ingested["username"] == hashing.value("Same Name")
    assert imported["device_fp"] == ingested["device_fp"] == hashing.value("0123456789abcdef")


def test_without_configuration_nothing_changes(tmp_path: Path) -> None:
    event = _account()
    assert current_privacy().event(event) is event
    assert orjson.loads(event.model_dump_json())["username"] == "Hawk44"


def test_evaders_compare_hashed_usernames_by_equality(hashing: Pseudonymizer) -> None:
    from argus.detectors.evaders import name_similarity

    parent, variation = hashing.value("hawk44"), hashing.value("h4wk_alt")
    assert name_similarity(parent, parent) == {
        "name_ngram_jaccard": 1.0,
        "name_core_similarity": 1.0,
        "name_contains": 1.0,
    }
    assert set(name_similarity(parent, variation).values()) == {0.0}
    assert name_similarity("hawk44", "h4wk_alt")["name_core_similarity"] == 1.0  # in clear, the variation matches
