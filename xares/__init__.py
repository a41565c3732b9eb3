"""xares: evaluate pre-trained audio encoders as the ear of an audio language model."""

from xares.run_dir import register_resolvers

# Hydra reads `${xares.run_id:}` in the run-directory pattern before any xares code runs.
register_resolvers()
