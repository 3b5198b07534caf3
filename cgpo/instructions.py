"""Instruction-following data of IFEval's kinds, generated here, and IFEval's own file as an eval set.

``generate_prompts`` writes training prompts: a request on a varied topic ("Write a short blog post
about urban beekeeping.") followed by 1–3 verifiable instructions of IFEval's 25 types, phrased in
words and stored with their ids and kwargs in the prompt's metadata, which is what the
``instructions`` judge reads. Instructions are drawn so that none contradicts another (all capitals and
all lowercase, JSON and a title, two responses and a repeated prompt...), and lengths stay in what a
short answer can meet (``max_words``). The generator never reads IFEval's 541 prompts: they remain
the evaluation set, converted by ``convert_ifeval`` (with, optionally, a reference response per prompt
as its calibration baseline ā).

``preference_pairs`` turns K samples per prompt (from π_ref) into reward-model training pairs: within
a prompt, a sample that follows a larger share of its instructions (strict) is preferred to one that
follows fewer; ties make no pair.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TOPICS = (
    "urban beekeeping", "the history of the bicycle", "learning a second language as an adult", "composting at home",
    "the first moon landing", "remote work", "a rainy day in a small town", "saving money on groceries",
    "the water cycle", "training for a first marathon", "volcanoes", "a lighthouse keeper", "chess openings",
    "the invention of the printing press", "houseplants that are hard to kill", "a robot that learns to paint",
    "the benefits of walking", "how bread rises", "a trip to the mountains", "recycling plastic",
    "the life of honeybees", "time management for students", "a lost cat finding its way home", "solar power",
    "the importance of sleep", "street food around the world", "a new coffee shop", "public libraries",
    "the northern lights", "starting a vegetable garden", "electric cars", "a friendship between two rivals",
    "ancient Egypt", "how vaccines work", "minimalism", "a job interview", "the ocean's deepest places",
    "a school science fair", "jazz music", "climate change and cities", "a winter festival", "birdwatching",
    "the stock market for beginners", "a haunted house", "learning to cook rice", "video game design",
    "the Great Wall of China", "a neighbourhood cleanup", "kindness to strangers", "a smartphone app for hikers",
    "dinosaurs", "the rules of basketball", "a letter from the future", "tea ceremonies", "desert animals",
    "online privacy", "a family reunion", "building a birdhouse", "the human heart", "wind turbines",
)

REQUESTS = (
    "Write a short blog post about {topic}.", "Write a poem about {topic}.", "Write a short story about {topic}.",
    "Explain {topic} to a ten-year-old.", "Write a product description for a book about {topic}.",
    "Write an email to a friend about {topic}.", "Give advice to someone interested in {topic}.",
    "Describe {topic} in a few sentences.", "Write a limerick about {topic}.", "Write a speech about {topic}.",
    "Write a diary entry about {topic}.", "Write a short news report about {topic}.",
    "Write a riddle about {topic}.", "List some fun facts about {topic}.", "Write a review of a film about {topic}.",
    "Write a pitch for a startup related to {topic}.", "Write a haiku about {topic}.",
    "Summarize what people should know about {topic}.",
)

QUESTIONS = (
    "Is {topic} worth learning about?", "Would you recommend {topic} to a beginner?",
    "Is {topic} more popular today than ten years ago?", "Can {topic} be explained in one minute?",
)

END_PHRASES = ("Is there anything else I can help with?", "Let me know if you have additional questions.",
               "Any other questions?", "That is all.", "Peace!")
KEYWORDS = ("sunlight", "patience", "community", "history", "future", "simple", "energy", "journey", "river",
            "curious", "balance", "bright", "quiet", "network", "careful", "garden", "memory", "planet")
LANGUAGES = {"fr": "French", "es": "Spanish", "de": "German", "it": "Italian", "pt": "Portuguese"}
SECTION_WORDS = ("Section", "SECTION", "PART", "Part")
RELATIONS = ("less than", "at least")


@dataclass(frozen=True)
class Kind:
    """One instruction type: how to draw its kwargs and say it in words."""

    id: str
    draw: Callable[[random.Random, dict[str, Any]], tuple[dict[str, Any], str]]
    weight: float = 1.0
    """Relative frequency (IFEval's own mix, roughly)."""


def _fixed(text: str) -> Callable[[random.Random, dict[str, Any]], tuple[dict[str, Any], str]]:
    return lambda rng, ctx: ({}, text)


def _count_words(rng: random.Random, ctx: dict[str, Any]) -> tuple[dict[str, Any], str]:
    relation = rng.choice(RELATIONS)
    if relation == "less than":
        n = rng.choice([n for n in (40, 60, 80, 100, 120, 150) if n <= ctx["max_words"]] or [ctx["max_words"]])
        return {"num_words": n, "relation": relation}, f"Answer with less than {n} words."
    n = rng.choice([n for n in (20, 30, 50, 80) if n <= ctx["max_words"] // 2] or [10])
    return {"num_words": n, "relation": relation}, f"Answer with at least {n} words."


def _count_sentences(rng: random.Random, ctx: dict[str, Any]) -> tuple[dict[str, Any], str]:
    relation = rng.choice(RELATIONS)
    n = rng.choice((3, 4, 5, 6, 8)) if relation == "less than" else rng.choice((2, 3, 4))
    return {"num_sentences": n, "relation": relation}, f"Your response should contain {relation} {n} sentences."


def _paragraphs(rng: random.Random, ctx: dict[str, Any]) -> tuple[dict[str, Any], str]:
    n = rng.choice((2, 3, 4))
    return {"num_paragraphs": n}, (f"There should be {n} paragraphs. Paragraphs are separated with the "
                                   "markdown divider: ***")


def _nth_paragraph(rng: random.Random, ctx: dict[str, Any]) -> tuple[dict[str, Any], str]:
    n = rng.choice((2, 3))
    nth = rng.randint(1, n)
    word = rng.choice(("today", "first", "imagine", "however", "finally", "people"))
    return ({"num_paragraphs": n, "nth_paragraph": nth, "first_word": word},
            f"There should be {n} paragraphs. Paragraphs and only paragraphs are separated from each other by "
            f"two new lines, as if it was '\\n\\n' in python. Paragraph {nth} must start with the word {word}.")


def _keywords(rng: random.Random, ctx: dict[str, Any]) -> tuple[dict[str, Any], str]:
    words = rng.sample(KEYWORDS, 2)
    return {"keywords": words}, f"Include the keywords {words[0]} and {words[1]} in the response."


def _frequency(rng: random.Random, ctx: dict[str, Any]) -> tuple[dict[str, Any], str]:
    word, n = rng.choice(KEYWORDS), rng.choice((2, 3))
    return ({"keyword": word, "frequency": n, "relation": "at least"},
            f"In your response, the word {word} should appear at least {n} times.")


def _forbidden(rng: random.Random, ctx: dict[str, Any]) -> tuple[dict[str, Any], str]:
    words = rng.sample(("very", "really", "good", "thing", "things", "important", "the", "is"), 2)
    return {"forbidden_words": words}, f"Do not include the words {words[0]} or {words[1]} in the response."


def _letters(rng: random.Random, ctx: dict[str, Any]) -> tuple[dict[str, Any], str]:
    letter, n = rng.choice("aeiorstlnz"), rng.choice((3, 5, 8))
    if letter == "z":
        return ({"letter": letter, "let_frequency": n, "let_relation": "less than"},
                f"In your response, the letter {letter} should appear less than {n} times.")
    return ({"letter": letter, "let_frequency": n, "let_relation": "at least"},
            f"In your response, the letter {letter} should appear at least {n} times.")


def _language(rng: random.Random, ctx: dict[str, Any]) -> tuple[dict[str, Any], str]:
    code = rng.choice(sorted(LANGUAGES))
    return ({"language": code}, f"Your ENTIRE response should be in {LANGUAGES[code]} language, no other "
                                "language is allowed.")


def _placeholders(rng: random.Random, ctx: dict[str, Any]) -> tuple[dict[str, Any], str]:
    n = rng.choice((1, 2, 3))
    return ({"num_placeholders": n}, f"The response must contain at least {n} placeholders represented by square "
                                     "brackets, such as [address].")


def _postscript(rng: random.Random, ctx: dict[str, Any]) -> tuple[dict[str, Any], str]:
    marker = rng.choice(("P.S.", "P.P.S"))
    return {"postscript_marker": marker}, f"At the end of your response, please add a postscript starting with {marker}"


def _bullets(rng: random.Random, ctx: dict[str, Any]) -> tuple[dict[str, Any], str]:
    n = rng.choice((2, 3, 4, 5))
    return ({"num_bullets": n}, f"Your answer must contain exactly {n} bullet points. Use the markdown bullet "
                                "points such as:\n* This is point 1.\n* This is point 2")


def _highlights(rng: random.Random, ctx: dict[str, Any]) -> tuple[dict[str, Any], str]:
    n = rng.choice((1, 2, 3))
    return ({"num_highlights": n}, f"Highlight at least {n} sections in your answer with markdown, i.e. "
                                   "*highlighted section*.")


def _sections(rng: random.Random, ctx: dict[str, Any]) -> tuple[dict[str, Any], str]:
    word, n = rng.choice(SECTION_WORDS), rng.choice((2, 3))
    return ({"section_spliter": word, "num_sections": n},
            f"Your response must have {n} sections. Mark the beginning of each section with {word} X, such as: "
            f"{word} 1")


def _repeat(rng: random.Random, ctx: dict[str, Any]) -> tuple[dict[str, Any], str]:
    return ({"prompt_to_repeat": ctx["request"]},
            "First repeat the request word for word without change, then give your answer (1. do not say any "
            "words or characters before repeating the request; 2. the request you need to repeat does not "
            "include this sentence)")


def _end(rng: random.Random, ctx: dict[str, Any]) -> tuple[dict[str, Any], str]:
    phrase = rng.choice(END_PHRASES)
    return ({"end_phrase": phrase}, f"Finish your response with this exact phrase {phrase} No other words should "
                                    "follow this phrase.")


def _capital_words(rng: random.Random, ctx: dict[str, Any]) -> tuple[dict[str, Any], str]:
    relation = rng.choice(RELATIONS)
    n = rng.choice((2, 3, 5)) if relation == "at least" else rng.choice((4, 6, 10))
    return ({"capital_frequency": n, "capital_relation": relation},
            f"In your response, words with all capital letters should appear {relation} {n} times.")


KINDS = (
    Kind("punctuation:no_comma", _fixed("Do not include any commas in your response."), 2.0),
    Kind("length_constraints:number_words", _count_words, 1.5),
    Kind("length_constraints:number_sentences", _count_sentences, 1.5),
    Kind("keywords:forbidden_words", _forbidden, 1.5),
    Kind("detectable_format:number_highlighted_sections", _highlights, 1.5),
    Kind("keywords:frequency", _frequency, 1.2),
    Kind("combination:repeat_prompt", _repeat, 1.0),
    Kind("startend:quotation", _fixed("Wrap your entire response with double quotation marks."), 1.2),
    Kind("change_case:english_lowercase", _fixed("Your entire response should be in English, and in all "
                                                 "lowercase letters. No capital letters are allowed."), 1.2),
    Kind("keywords:existence", _keywords, 1.2),
    Kind("detectable_format:title", _fixed("Your answer must contain a title, wrapped in double angular "
                                           "brackets, such as <<poem of joy>>."), 1.1),
    Kind("keywords:letter_frequency", _letters, 1.0),
    Kind("detectable_format:number_bullet_lists", _bullets, 1.0),
    Kind("language:response_language", _language, 0.5),
    Kind("detectable_content:number_placeholders", _placeholders, 0.8),
    Kind("length_constraints:number_paragraphs", _paragraphs, 0.8),
    Kind("startend:end_checker", _end, 0.8),
    Kind("detectable_content:postscript", _postscript, 0.8),
    Kind("change_case:english_capital", _fixed("Your entire response should be in English, and in all capital "
                                               "letters."), 0.8),
    Kind("change_case:capital_word_frequency", _capital_words, 0.8),
    Kind("combination:two_responses", _fixed("Give two different responses. Responses and only responses should "
                                             "be separated by 6 asterisk symbols: ******."), 0.7),
    Kind("detectable_format:json_format", _fixed("Entire output should be wrapped in JSON format. You can use "
                                                 "markdown ticks such as ```."), 0.5),
    Kind("detectable_format:multiple_sections", _sections, 0.5),
    Kind("length_constraints:nth_paragraph_first_word", _nth_paragraph, 0.4),
    Kind("detectable_format:constrained_response", _fixed("Answer with one of the following options: "
                                                          "('My answer is yes.', 'My answer is no.', "
                                                          "'My answer is maybe.')"), 0.3),
)
BY_ID = {k.id: k for k in KINDS}

# Pairs that cannot both hold (or that make each other's check meaningless); symmetric.
_CONFLICTS = [
    ({"change_case:english_capital"}, {"change_case:english_lowercase", "change_case:capital_word_frequency",
                                       "language:response_language"}),
    ({"change_case:english_lowercase"}, {"change_case:capital_word_frequency", "language:response_language",
                                         "detectable_format:title"}),
    ({"detectable_format:json_format"}, set(BY_ID) - {"detectable_format:json_format", "punctuation:no_comma",
                                                      "keywords:existence", "keywords:forbidden_words"}),
    ({"combination:two_responses"}, {"combination:repeat_prompt", "startend:quotation", "startend:end_checker",
                                     "detectable_content:postscript", "length_constraints:number_paragraphs",
                                     "length_constraints:nth_paragraph_first_word",
                                     "detectable_format:multiple_sections", "detectable_format:constrained_response"}),
    ({"combination:repeat_prompt"}, {"startend:quotation", "detectable_format:constrained_response",
                                     "change_case:english_capital", "change_case:english_lowercase",
                                     "language:response_language", "keywords:forbidden_words", "punctuation:no_comma",
                                     "detectable_format:title"}),
    ({"startend:quotation"}, {"startend:end_checker", "detectable_content:postscript",
                              "detectable_format:constrained_response"}),
    ({"startend:end_checker"}, {"detectable_content:postscript", "detectable_format:constrained_response"}),
    ({"length_constraints:number_paragraphs"}, {"length_constraints:nth_paragraph_first_word",
                                                "detectable_format:multiple_sections",
                                                "detectable_format:constrained_response"}),
    ({"length_constraints:nth_paragraph_first_word"}, {"detectable_format:multiple_sections",
                                                       "detectable_format:constrained_response",
                                                       "change_case:english_capital"}),
    ({"detectable_format:constrained_response"}, set(BY_ID) - {"detectable_format:constrained_response",
                                                               "punctuation:no_comma"}),
    ({"language:response_language"}, {"keywords:existence", "keywords:frequency", "keywords:forbidden_words",
                                      "keywords:letter_frequency", "change_case:capital_word_frequency"}),
    ({"length_constraints:number_words"}, {"length_constraints:number_sentences"}),
]
CONFLICTS: dict[str, set[str]] = {k: set() for k in BY_ID}
for left, right in _CONFLICTS:
    for a in left:
        for b in right - {a}:
            CONFLICTS[a].add(b)
            CONFLICTS[b].add(a)


def generate_prompts(n: int, seed: int = 0, max_instructions: int = 3, max_words: int = 150,
                     exclude: Iterable[str] = ()) -> list[dict[str, Any]]:
    """``n`` prompt records ``{"prompt": str, "metadata": {"instruction_id_list", "kwargs"}}``.

    The number of instructions per prompt is uniform in 1..``max_instructions``; types are drawn by
    weight among those that conflict with none already chosen; prompts repeat no text.
    """
    if n < 1 or not 1 <= max_instructions <= 3 or max_words < 20:
        raise ValueError("generate_prompts needs n >= 1, 1 <= max_instructions <= 3 and max_words >= 20")
    excluded = set(exclude)
    unknown = excluded - set(BY_ID)
    if unknown:
        raise ValueError(f"unknown instruction ids to exclude: {sorted(unknown)}")
    rng = random.Random(f"cgpo-instructions:{seed}")
    records: list[dict[str, Any]] = []
    seen: set[str] = set()
    attempts = 0
    while len(records) < n:
        attempts += 1
        if attempts > 50 * n:
            raise ValueError(f"could only generate {len(records)} distinct prompts of {n}")
        record = _one(rng, max_instructions, max_words, excluded)
        if record["prompt"] not in seen:
            seen.add(record["prompt"])
            records.append(record)
    return records


def _one(rng: random.Random, max_instructions: int, max_words: int, excluded: set[str]) -> dict[str, Any]:
    count = rng.randint(1, max_instructions)
    chosen: list[Kind] = []
    while len(chosen) < count:
        blocked = {k.id for k in chosen} | {c for k in chosen for c in CONFLICTS[k.id]} | excluded
        options = [k for k in KINDS if k.id not in blocked]
        if not options:
            break
        chosen.append(rng.choices(options, weights=[k.weight for k in options])[0])
    topic = rng.choice(TOPICS)
    constrained = any(k.id == "detectable_format:constrained_response" for k in chosen)
    request = rng.choice(QUESTIONS if constrained else REQUESTS).format(topic=topic)
    ctx = {"request": request, "max_words": max_words}
    kwargs, sentences = [], []
    for kind in chosen:
        args, text = kind.draw(rng, ctx)
        kwargs.append(args)
        sentences.append(text)
    repeat = [i for i, k in enumerate(chosen) if k.id == "combination:repeat_prompt"]
    if repeat:  # the sentence asking to repeat comes last, after everything that is to be repeated
        i = repeat[0]
        request = " ".join([request] + [s for j, s in enumerate(sentences) if j != i])
        kwargs[i] = {"prompt_to_repeat": request}
        prompt = f"{request} {sentences[i]}"
    else:
        prompt = " ".join([request] + sentences)
    return {"prompt": prompt, "metadata": {"instruction_id_list": [k.id for k in chosen], "kwargs": kwargs}}


def convert_ifeval(input_path: str | Path, responses_path: str | Path | None = None) -> list[dict[str, Any]]:
    """IFEval's ``input_data.jsonl`` as prompt records; with ``responses_path`` (IFEval's response file,
    ``prompt`` + ``response`` per line) each prompt's response becomes its ``baseline``."""
    baselines: dict[str, str] = {}
    if responses_path is not None:
        for row in _jsonl(responses_path):
            if isinstance(row.get("response"), str) and row["response"].strip():
                baselines[row["prompt"]] = row["response"]
    records = []
    for number, row in enumerate(_jsonl(input_path), start=1):
        for field in ("prompt", "instruction_id_list", "kwargs"):
            if field not in row:
                raise ValueError(f"{input_path}:{number}: missing {field!r}")
        kwargs = [{k: v for k, v in (kw or {}).items() if v is not None} for kw in row["kwargs"]]
        record: dict[str, Any] = {"prompt": row["prompt"], "metadata": {
            "instruction_id_list": row["instruction_id_list"], "kwargs": kwargs}}
        if row["prompt"] in baselines:
            record["baseline"] = baselines[row["prompt"]]
        records.append(record)
    return records


def preference_pairs(prompts: Sequence[dict[str, Any]], samples: Sequence[Sequence[str]],
                     followed: Sequence[Sequence[float]]) -> list[dict[str, str]]:
    """Pairs ``{"prompt", "chosen", "rejected"}``: within each prompt, every two samples whose shares of
    followed instructions differ, the larger share chosen."""
    pairs = []
    for prompt, texts, shares in zip(prompts, samples, followed, strict=True):
        for i in range(len(texts)):
            for j in range(i + 1, len(texts)):
                if shares[i] == shares[j] or texts[i] == texts[j]:
                    continue
                chosen, rejected = (i, j) if shares[i] > shares[j] else (j, i)
                pairs.append({"prompt": prompt["prompt"], "chosen": texts[chosen], "rejected": texts[rejected]})
    return pairs


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return len(rows)


def _jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def sample_preference_pairs(policy: str, prompts_path: str | Path, k: int = 4, temperature: float = 0.7,
                            max_new_tokens: int = 160, seed: int = 0, precision: str = "fp32",
                            batch_prompts: int = 16, log: Callable[[str], None] = print) -> list[dict[str, str]]:
    """K samples per prompt from ``policy`` (π_ref), judged by ``instructions`` (strict), as pairs."""
    import asyncio

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cgpo.modelfiles import resolve_model
    from cgpo.precision import autocast
    from cgpo.services.judges.config import JudgeConfig
    from cgpo.services.judges.embedded import embedded_judges
    from cgpo.trainer.config import GenerationConfig
    from cgpo.trainer.data import load_prompts, render
    from cgpo.trainer.ifeval import followed_flags
    from cgpo.trainer.rollout import HFRollout

    path = resolve_model(policy)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    engine = HFRollout(model, tokenizer, GenerationConfig(temperature=temperature, max_new_tokens=max_new_tokens))
    prompts = load_prompts(prompts_path)
    samples: list[list[str]] = []
    for start in range(0, len(prompts), batch_prompts):
        chunk = prompts[start:start + batch_prompts]
        with autocast(precision, model):
            rollouts = engine.generate([render(tokenizer, p) for p in chunk], k, seed=seed, prompt_offset=start)
        samples += [rollouts.text[i * k:(i + 1) * k] for i in range(len(chunk))]
        log(f"sampled {len(samples)}/{len(prompts)} prompts")

    async def judge() -> list[list[float]]:
        client = embedded_judges(JudgeConfig.from_env(enabled=("instructions",)))
        async with client:
            items = [{"prompt": p.text, "response": t, "judges": ["instructions"], "metadata": p.metadata}
                     for p, texts in zip(prompts, samples) for t in texts]
            results = await client.judge(items)
        flags = [followed_flags(r.verdicts["instructions"], item["metadata"]) for r, item in zip(results, items)]
        shares = [sum(f) / len(f) for f in flags]
        return [shares[i * k:(i + 1) * k] for i in range(len(prompts))]

    followed = asyncio.run(judge())
    records = [{"prompt": p.text} for p in prompts]
    return preference_pairs(records, samples, followed)
