"""The price table and the billing formula: exact cost from usage, computed locally."""
