"""systemd's sd_notify protocol: one datagram to $NOTIFY_SOCKET (a no-op when unset)."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("steward")
_warned: list[bool] = []


def notify(message: str) -> bool:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        # Non-blocking: called from the event loop, and a receiver whose queue is full must
        # cost us a dropped status line, never a stalled gateway.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                           | socket.SOCK_NONBLOCK) as sock:
            sock.connect(address)
            sock.send(message.encode())
    except BlockingIOError:
        return False
    except OSError as exc:
        if not _warned:  # once: a vanished socket must not fill the log every few seconds
            _warned.append(True)
            log.warning("could not notify systemd (%s): %s", os.environ.get("NOTIFY_SOCKET"),
                        exc)
        return False
    return True
