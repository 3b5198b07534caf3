"""The CGPO trainer: rollouts, judges and reward models, constrained updates (docs/method.md §4-5)."""
