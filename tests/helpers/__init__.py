"""Helpers shared by test modules: paths, config composition, small models and encoders.

Fixtures stay in ``tests/conftest.py``; what a test module imports lives here.
"""
