"""The metadata record once written: the spool, its upload in batches and the usage report."""
