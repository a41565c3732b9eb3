"""xares: evaluate pre-trained audio encoders as the ear of an audio language model."""

from xares._environment import check_torch_pair

# Before anything else imports torchaudio (transformers does): a torch/torchaudio pair that
# does not load together stops here with the versions and the fix, not with an OSError.
check_torch_pair()

from xares.run.directory import register_resolvers  # noqa: E402

# Hydra reads `${xares.run_id:}` in the run-directory pattern before any xares code runs.
register_resolvers()
