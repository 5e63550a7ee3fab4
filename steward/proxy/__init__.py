"""The hot path: one request from the caller, through the stages in pipeline.py, to the provider and back."""
