"""Batch jobs that run on finished tables (recalibration)."""
