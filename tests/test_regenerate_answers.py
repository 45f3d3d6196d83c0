"""Greedy answer generation and the regenerate_answers command, on a tiny LLM built here."""
import json

import pytest
import torch

from espnet_freeze_omni.bin import regenerate_answers
from espnet_freeze_omni.llm.chat_template import ChatTemplate
from espnet_freeze_omni.llm.dialogs import read_dialogs
from espnet_freeze_omni.llm.frozen_llm import FrozenLLM
from espnet_freeze_omni.llm.generation import answer_questions, generate_answers, greedy_generate
from espnet_freeze_omni.llm.tiny import build_tiny_llm, default_tiny_texts

MAX_NEW = 8


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


DIALOGS = [
    {"id": "d0", "turns": [user("What is the capital of Zorbia?"), assistant("Quenta.")]},
    {"id": "d1", "turns": [user("Hello, how are you today?"), assistant("Fine."),
                           user("Who wrote the red book?"), assistant("Mira Holt.")]},
    {"id": "d2", "turns": [user("How many moons does Telos have?")]},  # still to answer
    {"id": "d3", "turns": [user("Hi"), assistant("Hello."), user("Telos?"), assistant("Moons."),
                           user("Zorbia capital, please, and tell me more about it.")],
     "system": "You are a terse assistant."},
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    return build_tiny_llm(tmp_path_factory.mktemp("regen") / "llm", default_tiny_texts(),
                          family="qwen2", seed=7)


@pytest.fixture(scope="module")
def llm(llm_dir):
    return FrozenLLM(llm_dir)


@pytest.fixture(scope="module")
def template(llm):
    return ChatTemplate(llm.tokenizer)


def test_batched_greedy_equals_unbatched(llm, template):
    prompts = [template.text_prompt_ids(q) for q in
               ["Hi", "What is the capital of Zorbia?", "Who wrote the red book? Tell me."]]
    batched = greedy_generate(llm, prompts, max_new_tokens=MAX_NEW)
    single = [greedy_generate(llm, [p], max_new_tokens=MAX_NEW)[0] for p in prompts]
    assert batched == single
    assert all(0 < len(a) <= MAX_NEW for a in batched)


def test_greedy_generate_matches_a_plain_argmax_loop(llm, template):
    prompt = template.text_prompt_ids("Who wrote the red book?")
    ids = list(prompt)
    for _ in range(MAX_NEW):
        logits = llm(llm.embed_tokens(torch.tensor([ids]))).logits
        token = int(logits[0, -1].argmax())
        if token in llm.eos_token_ids:
            break
        ids.append(token)
    assert greedy_generate(llm, [prompt], MAX_NEW)[0] == ids[len(prompt):]


def test_greedy_generate_stops_at_a_stop_token(llm, template):
    prompts = [template.text_prompt_ids("Hi"), template.text_prompt_ids("Who wrote it?")]
    free = greedy_generate(llm, prompts, MAX_NEW)
    saved = llm.eos_token_ids
    try:
        # Declare the first row's 3rd token a stop token: that row ends before it.
        llm.eos_token_ids = saved + [free[0][2]]
        stopped = greedy_generate(llm, prompts, MAX_NEW)
    finally:
        llm.eos_token_ids = saved
    cut = free[0].index(free[0][2])
    assert stopped[0] == free[0][:cut]
    if free[0][2] not in free[1]:
        assert stopped[1] == free[1]


def test_generate_answers_batch_sizes_agree_and_use_own_history(llm, template):
    one = generate_answers(llm, template, DIALOGS, batch_size=1, max_new_tokens=MAX_NEW)
    three = generate_answers(llm, template, DIALOGS, batch_size=3, max_new_tokens=MAX_NEW)
    assert one == three
    # Same dialogs, keys and user turns; every user turn now has an LLM answer after it.
    for before, after in zip(DIALOGS, one):
        assert {k: v for k, v in after.items() if k != "turns"} == \
            {k: v for k, v in before.items() if k != "turns"}
        assert after["turns"][0::2] == before["turns"][0::2]
        roles = [t["role"] for t in after["turns"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2)
        assert all(isinstance(t["content"], str) for t in after["turns"])
    assert DIALOGS[2]["turns"] == [user("How many moons does Telos have?")]  # input untouched
    # The second answer of d1 was made with the LLM's own first answer in the history.
    d1 = one[1]["turns"]
    prompt = template.text_prompt_ids(d1[2]["content"], history=d1[:2])
    expected = llm.tokenizer.decode(greedy_generate(llm, [prompt], MAX_NEW)[0],
                                    skip_special_tokens=True).strip()
    assert d1[3]["content"] == expected
    # A dialog's own system prompt is used.
    d3 = one[3]["turns"]
    prompt = template.text_prompt_ids(d3[4]["content"], history=d3[:4],
                                      system_prompt="You are a terse assistant.")
    expected = llm.tokenizer.decode(greedy_generate(llm, [prompt], MAX_NEW)[0],
                                    skip_special_tokens=True).strip()
    assert d3[5]["content"] == expected


def test_answer_questions_is_single_turn_generate_answers(llm, template):
    answers = answer_questions(llm, template, ["Hi", "Telos?"], batch_size=2,
                               max_new_tokens=MAX_NEW)
    dialogs = generate_answers(llm, template, [{"turns": [user("Telos?")]}],
                               max_new_tokens=MAX_NEW)
    assert answers[1] == dialogs[0]["turns"][1]["content"]


def test_regenerate_answers_command(llm_dir, llm, template, tmp_path, capsys):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d in DIALOGS))
    regenerate_answers.main(["--llm_dir", str(llm_dir), "--input", str(src), "--output", str(dst),
                             "--batch_size", "2", "--max_new_tokens", str(MAX_NEW),
                             "--device", "cpu"])
    assert "4 dialogs" in capsys.readouterr().out
    written = read_dialogs(dst)
    assert written == generate_answers(llm, template, DIALOGS, max_new_tokens=MAX_NEW)


def test_regenerate_answers_bad_input(llm_dir, tmp_path):
    dst = tmp_path / "out.jsonl"
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        regenerate_answers.main(["--llm_dir", str(llm_dir), "--input",
                                 str(tmp_path / "missing.jsonl"), "--output", str(dst)])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(DIALOGS[0]) + "\n" + '{"turns": [\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not a JSON line"):
        regenerate_answers.main(["--llm_dir", str(llm_dir), "--input", str(bad),
                                 "--output", str(dst)])
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"turns": [assistant("first?")]}) + "\n")
    with pytest.raises(ValueError, match=r"wrong\.jsonl:1: turn 0 has role 'assistant'"):
        regenerate_answers.main(["--llm_dir", str(llm_dir), "--input", str(wrong),
                                 "--output", str(dst)])
    assert not dst.exists()
