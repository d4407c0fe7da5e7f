"""Event and request ids: what ``uuid.uuid4()`` would give, drawn from the OS in chunks."""

from __future__ import annotations

import collections
import re
import threading
import uuid

from actors.domain.ids import IDS_PER_READ, new_uuid, new_uuid_hex


def test_ids_are_canonical_version_4_uuids_across_several_reads() -> None:
    ids = [new_uuid() for _ in range(3 * IDS_PER_READ + 7)]
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed) == text
    assert len(set(ids)) == len(ids)


def test_every_random_digit_varies() -> None:
    """All 122 random bits reach the text: each position but the version digit takes many
    values, and the variant digit takes each of 8, 9, a, b."""
    ids = [new_uuid() for _ in range(2000)]
    digits = [collections.Counter(text[at] for text in ids) for at in range(36)]
    assert set(digits[14]) == {"4"}
    assert set(digits[19]) == set("89ab")
    for at in (0, 7, 9, 15, 20, 24, 35):
        assert len(digits[at]) == 16


def test_hex_ids_are_uuids_without_dashes() -> None:
    text = new_uuid_hex()
    assert re.fullmatch(r"[0-9a-f]{32}", text)
    assert uuid.UUID(hex=text).version == 4


def test_threads_sharing_the_source_never_get_the_same_id() -> None:
    per_thread = 5 * IDS_PER_READ
    found: list[list[str]] = [[] for _ in range(4)]

    def draw(into: list[str]) -> None:
        into.extend(new_uuid() for _ in range(per_thread))

    threads = [threading.Thread(target=draw, args=(into,)) for into in found]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [text for into in found for text in into]
    assert len(every) == 4 * per_thread
    assert len(set(every)) == len(every)
