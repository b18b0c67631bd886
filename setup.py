"""Shim for tools that need a setup.py (Beam's --setup_file ships this package to workers)."""

from setuptools import setup

setup()
