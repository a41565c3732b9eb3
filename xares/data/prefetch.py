"""``python -m xares.data.prefetch task=NAME``: see :mod:`xares.run.prefetch`."""

from xares.run.prefetch import collect_datasets, load_task_file, main, prefetch

__all__ = ["collect_datasets", "load_task_file", "main", "prefetch"]

if __name__ == "__main__":
    raise SystemExit(main())
