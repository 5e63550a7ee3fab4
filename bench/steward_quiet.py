"""`steward` with its access log off, for the bench's `proxy-only` configuration.

Steward has no configuration key for the access log. The proxy writes a line only when the
`steward.access` logger is enabled for INFO, so raising that logger's level is exactly "no
access log" and nothing else. It is set at import, so spawned worker processes (which re-run
this file as `__mp_main__`) get it too.
"""

from __future__ import annotations

import logging
import sys

logging.getLogger("steward.access").setLevel(logging.WARNING)

if __name__ == "__main__":
    from steward.cli.main import main

    sys.exit(main())
