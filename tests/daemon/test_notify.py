import os
import socket
from pathlib import Path

import pytest

from steward.daemon.notify import notify


def test_a_full_receiver_never_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "n.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(path)
        monkeypatch.setitem(os.environ, "NOTIFY_SOCKET", path)
        sent = [notify(f"STATUS={'x' * 1000} {i}") for i in range(2000)]  # never read
        assert sent[0] is True and sent[-1] is False
        assert receiver.recv(4096).startswith(b"STATUS=")


def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(os.environ, "NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
