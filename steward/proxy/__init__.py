"""The hot path: a request through the stages in pipeline.py, to the provider and back."""
