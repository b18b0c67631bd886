"""Heads, streaming training input, training, evaluation, prediction and metrics."""
