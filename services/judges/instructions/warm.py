"""Loads the instruction checks' tables when imported: langdetect's profiles and the Punkt model.

Only the fork server of the judges' process pools imports this (``WorkerPool(preload=...)``),
so every worker it forks, including one respawned after a kill, starts with the tables
(about a second of loading each time otherwise) and shares their memory.
"""

from cgpo.services.judges.instructions.judge import load_tables

load_tables()
