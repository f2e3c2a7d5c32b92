"""Shim for editable installs on Python 3.6 (pip 21.3.1 + setuptools 59.6 fall back to ``setup.py develop``).

All metadata lives in setup.cfg.
"""
from setuptools import setup

setup()
