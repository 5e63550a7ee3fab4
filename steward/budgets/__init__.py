"""Budgets and rate limits: what a request may spend, checked before it is forwarded.

A request reserves its worst-case cost (worst.py) against every budget whose scope applies
(scopes.py) and its worst-case tokens against every rate limit (rates.py); when it ends, the
reservation is replaced by the exact cost from its record. Budgets spend from leases taken
from the database in the background (ledger.py; tables owned by store.py), so a request
waits on the database only when its worker's lease has run dry.
"""
