"""Shared helpers for the download, label and recalibration tests."""
