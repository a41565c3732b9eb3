"""`python train.py ...` from the repository root (see xares/run/train.py)."""

from xares.run.train import main

# The guard matters: worker processes started with "spawn" re-import this file.
if __name__ == "__main__":
    main()
