import json
from itertools import islice

import pytest

from tests.tiny_models import build_tokenizer
from cgpo.trainer.data import Prompt, PromptFileError, PromptSampler, load_prompts, render

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]


def write(tmp_path, lines, name="prompts.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def test_text_and_chat_prompts_with_metadata_and_baseline(tmp_path):
    path = write(tmp_path, [
        {"prompt": "Name a colour.", "metadata": {"answer": "red"}, "baseline": "Red."},
        "",  # blank lines are skipped but still counted
        {"prompt": CHAT},
    ])
    text, chat = load_prompts(path)
    assert text.prompt == "Name a colour." and text.metadata == {"answer": "red"} and text.baseline == "Red."
    assert text.line == 1 and not text.is_chat and text.text == "Name a colour."
    assert chat.prompt == (("system", "Be brief."), ("user", "What is 2+2?")) and chat.line == 3
    assert chat.metadata == {} and chat.baseline is None and chat.is_chat and chat.text == "What is 2+2?"
    assert chat.messages() == CHAT and text.messages() == [{"role": "user", "content": "Name a colour."}]


def test_ids_hash_content_so_they_survive_reordering_and_are_unique(tmp_path):
    a, b = {"prompt": "A"}, {"prompt": "B", "metadata": {"x": 1}}
    first = load_prompts(write(tmp_path, [a, b, a], "one.jsonl"))
    second = load_prompts(write(tmp_path, [{"prompt": "C"}, b, a], "two.jsonl"))
    assert first[0].id == second[2].id and first[1].id == second[1].id
    assert len({p.id for p in first}) == 3 and first[2].id == first[0].id + "-2"
    assert load_prompts(write(tmp_path, [{"prompt": "B", "metadata": {"x": 2}}], "three.jsonl"))[0].id != first[1].id


@pytest.mark.parametrize("line, message", [
    ("{not json", "invalid JSON"),
    ('["a list"]', "must be a JSON object"),
    ({"metadata": {}}, "missing 'prompt'"),
    ({"prompt": "  "}, "'prompt' is empty"),
    ({"prompt": []}, "empty list of messages"),
    ({"prompt": 3}, "must be a string or a list of messages"),
    ({"prompt": [{"role": "user"}]}, "exactly 'role' and 'content'"),
    ({"prompt": [{"role": "user", "content": 1}]}, "string 'content'"),
    ({"prompt": [{"role": "system", "content": "x"}]}, "no 'user' turn"),
    ({"prompt": [*CHAT, {"role": "assistant", "content": "4"}]}, "must not be from the assistant"),
    ({"prompt": "x", "metadata": ["a"]}, "'metadata' must be an object"),
    ({"prompt": "x", "baseline": 4}, "'baseline' must be a non-empty string"),
    ({"prompt": "x", "answer": "4"}, "unknown field(s) ['answer']"),
    ({"prompt": CHAT, "metadata": {"messages": []}}, "'metadata.messages' is reserved"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    path = write(tmp_path, [{"prompt": "fine"}, "", line])
    with pytest.raises(PromptFileError) as info:
        load_prompts(path)
    assert str(info.value).startswith(f"{path}:3: ") and message in str(info.value)


def test_empty_or_missing_file_is_an_error(tmp_path):
    with pytest.raises(PromptFileError, match="no prompts"):
        load_prompts(write(tmp_path, ["", "  "]))
    with pytest.raises(PromptFileError, match="cannot read"):
        load_prompts(tmp_path / "absent.jsonl")


def prompts(n):
    return [Prompt(f"p{i}", f"prompt {i}") for i in range(n)]


def ids(batches):
    return [[p.id for p in batch] for batch in batches]


def test_sampler_is_seeded_and_visits_every_prompt_once_per_epoch():
    data = prompts(10)
    batches = ids(islice(PromptSampler(data, 4, seed=1), 10))  # 40 prompts: four epochs
    assert batches == ids(islice(PromptSampler(data, 4, seed=1), 10))
    assert batches != ids(islice(PromptSampler(data, 4, seed=2), 10))
    stream = [i for batch in batches for i in batch]
    epochs = [stream[i:i + 10] for i in range(0, 40, 10)]
    assert all(sorted(e) == sorted(p.id for p in data) for e in epochs)
    assert epochs[0] != epochs[1] and all(len(b) == 4 for b in batches)  # reshuffled; batches straddle epochs


def test_sampler_resumes_mid_epoch_with_the_same_batches():
    data = prompts(7)
    sampler = PromptSampler(data, 3, seed=5)
    for _ in range(4):  # 12 prompts: mid second epoch
        next(sampler)
    state = json.loads(json.dumps(sampler.state_dict()))  # survives a checkpoint file
    assert (state["seed"], state["epoch"], state["position"]) == (5, 1, 5)
    expected = ids(islice(sampler, 6))
    resumed = PromptSampler(data, 3, seed=0)  # the seed comes from the state
    resumed.load_state_dict(state)
    assert ids(islice(resumed, 6)) == expected


def test_sampler_refuses_state_from_other_prompts():
    state = PromptSampler(prompts(7), 3, seed=0).state_dict()
    with pytest.raises(ValueError, match="different prompt list"):
        PromptSampler(prompts(8), 3).load_state_dict(state)
    with pytest.raises(ValueError, match="batch_size"):
        PromptSampler(prompts(8), 0)


def test_batch_larger_than_the_dataset_cycles():
    batch = next(PromptSampler(prompts(2), 5, seed=0))
    assert len(batch) == 5 and {p.id for p in batch} == {"p0", "p1"}


def test_chat_rendering_has_one_bos_and_ends_with_the_assistant_header(tokenizer):
    chat = render(tokenizer, Prompt("c", tuple((m["role"], m["content"]) for m in CHAT)))
    text = render(tokenizer, Prompt("t", "What is 2+2?"))
    bos = tokenizer.bos_token_id
    assert chat[0] == bos and chat.count(bos) == 1 and text[0] == bos and text.count(bos) == 1
    assert tokenizer.decode(chat) == "<s><|system|>\nBe brief.</s>\n<|user|>\nWhat is 2+2?</s>\n<|assistant|>\n"
    assert tokenizer.decode(text) == "<s><|user|>\nWhat is 2+2?</s>\n<|assistant|>\n"  # text: one user turn


def test_without_a_chat_template_text_is_encoded_as_is(tokenizer):
    bare = build_tokenizer()
    bare.chat_template = None
    ids = render(bare, Prompt("t", "The answer is"))
    assert ids == tokenizer("The answer is").input_ids and ids[0] == bare.bos_token_id  # the tokenizer's BOS
    with pytest.raises(ValueError, match="no chat template"):
        render(bare, Prompt("c", (("user", "hi"),), line=7))


def test_a_template_that_writes_bos_twice_still_gives_one(tokenizer):
    doubled = build_tokenizer()
    doubled.chat_template = "{{ bos_token }}" + doubled.chat_template
    ids = render(doubled, Prompt("t", "hi"))
    assert ids == render(tokenizer, Prompt("t", "hi")) and ids.count(tokenizer.bos_token_id) == 1
