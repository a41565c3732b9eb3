"""``python -m xares.evaluate ckpt_path=<run dir or ckpt> [task=...]``: see :mod:`xares.run.evaluate`."""

from xares.run.evaluate import main

if __name__ == "__main__":
    main()
