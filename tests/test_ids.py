import uuid

from steward.ids import uuid7


def test_uuid7_is_valid_and_time_ordered() -> None:
    first = uuid7(1_000_000_000_000_000)
    second = uuid7(1_000_000_001_000_000)
    assert first.version == 7 and first.variant == uuid.RFC_4122
    assert str(first) < str(second)
    assert int(str(first).replace("-", "")[:12], 16) == 1_000_000_000  # milliseconds
