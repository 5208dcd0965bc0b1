"""Table Storage key encoding: reversible, only allowed characters, order and prefixes preserved."""

from __future__ import annotations

import random
import re

import pytest

from shared.state.azure_tables import (
    MAX_KEY_UTF16_UNITS,
    KeyTooLongError,
    ValueTooLargeError,
    decode_key,
    encode_key,
    from_entity,
    key_range,
    to_entity,
)

# What Table Storage forbids in PartitionKey / RowKey, plus what breaks URL-addressed operations.
FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f/\\#?%']")
FORBIDDEN_CHARS = [chr(c) for c in range(0x00, 0x20)] + [chr(c) for c in range(0x7F, 0xA0)] + list("/\\#?%'")
# Characters the encoding itself uses as leads, and their neighbours.
TRICKY = FORBIDDEN_CHARS + list(' "$&.>[]~-|:0189AFGaz\u00a0\u00a1\u00ff\u0100\u20ac\ud7ff\ue000\uffff')


@pytest.mark.parametrize("char", FORBIDDEN_CHARS, ids=lambda c: f"U+{ord(c):04X}")
def test_every_forbidden_character_round_trips(char):
    for key in (char, f"a{char}", f"{char}z", f"a{char}{char}z", f"crm|{char}1"):
        encoded = encode_key(key)
        assert not FORBIDDEN.search(encoded), (key, encoded)
        assert decode_key(encoded) == key


def test_plain_keys_are_unchanged():
    for key in ("cursor", "crm|A-1", "pair~07", "00000000000000000042-r1", "f0e1d2c3-b4a5-9687-7869-5a4b3c2d1e0f"):
        assert encode_key(key) == key
    assert encode_key('["a","b"]') == '[5B"a","b"]'  # composite keys (shared.keys) grow by two characters


def test_random_keys_round_trip_and_keep_their_order():
    rng = random.Random(20260101)
    keys = {"", *TRICKY}
    while len(keys) < 3000:
        keys.add("".join(rng.choice(TRICKY) for _ in range(rng.randint(1, 6))))
    for key in keys:
        assert decode_key(encode_key(key)) == key
        assert not FORBIDDEN.search(encode_key(key))
    assert sorted(keys, key=encode_key) == sorted(keys)


def test_every_pair_of_single_characters_keeps_its_order():
    chars = sorted({chr(c) for c in range(0x00, 0x180)} | set(TRICKY))
    encoded = [encode_key(c) for c in chars]
    assert encoded == sorted(encoded)
    # ...and a character followed by anything still sorts before the next character.
    assert all(encode_key(a + "\uffff") < encode_key(b) for a, b in zip(chars, chars[1:], strict=False))


def test_prefix_range_holds_exactly_the_keys_with_that_prefix():
    rng = random.Random(7)
    keys = {"".join(rng.choice(TRICKY) for _ in range(rng.randint(0, 5))) for _ in range(3000)}
    fixed = ["crm|", "a/", "x#", "%", "'", " ", '"', "~", "\x7f", "\u00a0", "-", "F", "9"]
    for prefix in fixed + rng.sample(sorted(keys), 40):
        lo, hi = key_range(prefix)
        wanted = {k for k in keys if k.startswith(prefix)}
        if hi is None:  # no safe upper bound to send: the scan from lo stops at the first key without the prefix
            assert ord(lo[-1]) >= 0xD7FF, prefix
            scan = sorted(e for e in map(encode_key, keys) if e >= lo)
            assert {decode_key(e) for e in scan[: len(wanted)]} == wanted, prefix
            continue
        inside = {k for k in keys if lo <= encode_key(k) < hi}
        assert inside == wanted, prefix
        assert not FORBIDDEN.search(hi[:-1])


def test_store_shaped_prefix_scan_order():
    # StateStore.linked_keys streams "system|key" row keys in raw key order.
    keys = [f"crm|{k}" for k in ("A/1#", "A-2", "A 3", "A.4", "A%5", "A'6", "A?7", "A\\8", "A~9", "A")]
    lo, hi = key_range("crm|")
    encoded = sorted(encode_key(k) for k in keys + ["crl|z", "crm}", "erp|A"])
    scanned = [decode_key(e) for e in encoded if lo <= e < hi]
    assert scanned == sorted(keys)


def test_malformed_encoded_keys_are_rejected():
    for bad in ("$2", "$ZZ", "$2f", "$28", " 21", "a/b", "a%b"):
        with pytest.raises(ValueError):
            decode_key(bad)


def test_key_length_limit_counts_the_encoded_key():
    ok = "k" * MAX_KEY_UTF16_UNITS
    assert to_entity("keymap", "p", ok, {})["RowKey"] == ok
    with pytest.raises(KeyTooLongError, match="keymap"):
        to_entity("keymap", "p", "/" * (MAX_KEY_UTF16_UNITS // 3 + 1), {})


def test_values_are_typed_and_round_trip():
    data = {"s": "x", "i": 7, "big": 2**40, "huge": 2**70, "neg": -(2**35), "f": 1.5, "b": True, "n": None,
            "d": {"k": [1, 2**65]}, "l": []}
    entity = to_entity("cursors", "p", "r", data)
    assert entity["i"] == 7 and entity["big"].edm_type == "Edm.Int64" and entity["big"].value == 2**40
    assert "n" not in entity and entity["_null"] == '["n"]'
    assert sorted(__import__("json").loads(entity["_json"])) == ["d", "huge", "l"]
    assert from_entity(entity).data == data


def test_oversized_string_names_table_key_and_property():
    with pytest.raises(ValueTooLargeError, match=r"'note'.*'records'.*'p~01'.*'crm\|1'"):
        to_entity("records", "p~01", "crm|1", {"note": "x" * (32 * 1024 + 1)})
    with pytest.raises(ValueTooLargeError, match="values"):
        to_entity("records", "p~01", "crm|1", {"values": {"erp": "é" * 40_000}})
    assert to_entity("records", "p", "r", {"note": "x" * 32 * 1024})["note"]


def test_reserved_and_invalid_property_names_are_rejected():
    for name in ("_json", "_null", "PartitionKey", "RowKey", "Timestamp", "with-dash", "1st", ""):
        with pytest.raises(ValueError, match="property name"):
            to_entity("runs", "p", "r", {name: 1})
