"""Running: the entry points (train, evaluate), the checks that turn a composed config into a
run, the pipeline steps they share, run directories and run metadata. The one package that
reads the Hydra config."""
