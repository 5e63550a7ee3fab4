"""One typed record: the code's fields, the README's list and a written record agree."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from steward.bodies.writer import BODY_META
from steward.pricing.pricer import Pricer
from steward.pricing.table import BUNDLED, load
from steward.providers.usage import Usage
from steward.proxy.exchange import Exchange
from steward.proxy.pipeline import ACCESS_FIELDS
from steward.records.record import FIELDS, Record, Tokens

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_fields() -> list[str]:
    text = README.read_text()
    start = text.index("### The metadata record")
    section = text[start:text.index("Token fields mean", start)]
    listed = section[section.index("a test checks this list against it:"):]
    return re.findall(r"`([a-z_0-9]+)`", listed)


def test_fields_are_the_typed_record() -> None:
    assert len(FIELDS) == len(set(FIELDS))
    assert set(FIELDS) == set(Record.__annotations__)
    # The meters' usage carries exactly the record's token fields.
    assert [f.name for f in dataclasses.fields(Usage)] == list(Tokens.__annotations__)
    assert list(Usage(*range(8)).as_dict()) == list(Tokens.__annotations__)
    assert list(Usage(*range(8)).as_dict().values()) == list(range(8))


def test_the_readme_lists_every_field_and_no_other() -> None:
    assert sorted(readme_fields()) == sorted(FIELDS)


def test_a_written_record_has_exactly_the_fields_in_order() -> None:
    ex = Exchange(method="POST", path="/v1/chat/completions", query=b"")
    record = ex.record(Pricer(load(BUNDLED), "bundled"))
    assert tuple(record) == FIELDS


def test_the_access_log_and_body_documents_name_record_fields() -> None:
    assert set(ACCESS_FIELDS) <= set(FIELDS)
    assert set(BODY_META) <= set(FIELDS)
