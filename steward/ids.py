"""UUIDv7 request ids (RFC 9562): time-ordered, so spool and bucket listings sort by time."""

from __future__ import annotations

import random
import time
import uuid


def uuid7(now_ns: int | None = None) -> uuid.UUID:
    ms = (time.time_ns() if now_ns is None else now_ns) // 1_000_000
    # random, not os.urandom: an id names a request, it guards nothing, and a syscall here
    # lets go of the GIL on the hot path. The generator is seeded per process (and after fork).
    rand = random.getrandbits(80)
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76                         # version
    value |= ((rand >> 64) & 0xFFF) << 64      # rand_a: 12 bits
    value |= 0b10 << 62                        # variant
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF      # rand_b: 62 bits
    return uuid.UUID(int=value)
