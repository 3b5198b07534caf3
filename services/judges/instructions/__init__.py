"""The ``instructions`` judge: IFEval's 25 verifiable instruction types (docs/method.md §2).

Modules, by concern:

* ``judge`` -- ``InstructionsJudge``: metadata in, one verdict per sample; strict and loose modes;
  samples are judged in worker processes under a hard per-item limit;
* ``catalog`` -- instruction id -> checker and arguments; metadata validation;
* ``checks`` -- the 25 checkers, each documenting IFEval's definition;
* ``text`` -- IFEval's two word notions (``\\w+`` words, ``nltk.word_tokenize`` tokens);
* ``sentences`` -- Punkt sentence splitting (IFEval's sentence counter);
* ``language`` -- langdetect (seed 0), reimplemented bit-identically and faster;
* ``warm`` -- imported by the workers' fork server: loads the tables above once for all workers.
"""

from cgpo.services.judges.instructions.catalog import INSTRUCTIONS
from cgpo.services.judges.instructions.judge import InstructionsJudge

__all__ = ["INSTRUCTIONS", "InstructionsJudge"]
