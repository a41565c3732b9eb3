"""Generators of the offline benchmarks (the mini suite, the smoke suite): they write shards in
the challenge's format from nothing; real data never needs them."""
