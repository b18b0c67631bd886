"""Thin Airflow glue around the project's CLI entry points (download -> ... -> evaluate)."""
