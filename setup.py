"""For tools that still look for a setup.py: every setting is in pyproject.toml."""

from setuptools import setup

setup()
