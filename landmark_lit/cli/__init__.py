"""Thin Hydra entry points around plain functions; each registers the configs' resolvers
(:func:`landmark_lit.config.register_resolvers`) before Hydra composes its config."""
