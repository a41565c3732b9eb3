"""``python -m xares.compare RUN_A RUN_B``: see :mod:`xares.results.compare`."""

from xares.results.compare import main

if __name__ == "__main__":
    raise SystemExit(main())
