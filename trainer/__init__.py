"""The CGPO trainer: rollouts, judges and reward models, constrained updates (SPEC §4-5)."""
