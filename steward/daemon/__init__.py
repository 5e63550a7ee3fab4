"""The running process: gateway state, the ASGI app, Hypercorn workers and their supervisor."""
