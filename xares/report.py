"""``python -m xares.report [RUN_OR_SWEEP_DIR ...] [--out DIR]``: see :mod:`xares.results.cli`."""

from xares.results.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
