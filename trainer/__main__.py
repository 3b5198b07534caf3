"""``python -m cgpo.trainer CONFIG [key=value ...]``: ``cgpo train``, the form ``torchrun -m cgpo.trainer`` runs."""

import sys

from cgpo.cli import main

# Guarded: judge process pools start with forkserver/spawn, which re-import the main module.
if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
