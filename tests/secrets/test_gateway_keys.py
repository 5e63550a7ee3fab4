from __future__ import annotations

from pathlib import Path

from steward import db
from steward.secrets import gateway_keys
from steward.secrets.gateway_keys import KeyIndex


def test_index_checks_hash_expiry_and_records_use(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "s.db")
    live, live_key = gateway_keys.add_key(conn, "live")
    _, old_key = gateway_keys.add_key(conn, "old", expires_in=10)
    _, gone_key = gateway_keys.add_key(conn, "gone")
    gateway_keys.revoke_key(conn, "gone")
    index = KeyIndex(gateway_keys.load_hashes(conn))
    now = live.created_at + 60
    assert index.authenticate(live_key, now) == live
    assert index.authenticate(old_key, now) is None
    assert index.authenticate(gone_key, now) is None
    assert index.authenticate(live_key + "x", now) is None
    used = index.take_last_used()
    assert used == {live.id: now}
    gateway_keys.record_last_used(conn, used.items())
    assert gateway_keys.find_key(conn, "live").last_used_at == now
    assert index.take_last_used() == {}
