"""FrozenLLM, ChatTemplate and the tiny-LLM builder, on tiny Qwen2 and Llama models built here."""
import pytest
import torch

from espnet_freeze_omni.llm.chat_template import ChatTemplate
from espnet_freeze_omni.llm.frozen_llm import FrozenLLM, hold_frozen_llm, load_llm_tokenizer
from espnet_freeze_omni.llm.tiny import build_tiny_llm, default_tiny_texts

SYSTEM = "You are a helpful assistant."
HISTORY = [{"role": "user", "content": "Hello, how are you today?"},
           {"role": "assistant", "content": "I am fine, thank you."}]
QUESTION = "What is the capital of Zorbia?"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def llm_dirs(tmp_path_factory):
    """(family, chat format) -> tiny LLM folder."""
    root = tmp_path_factory.mktemp("tiny_llms")
    texts = default_tiny_texts() * 2
    return {
        (family, fmt): build_tiny_llm(root / f"{family}_{fmt}", texts, family=family,
                                      chat_format=fmt)
        for family, fmt in [("qwen2", "qwen"), ("llama", "qwen"), ("llama", "llama3"),
                            ("qwen2", "none")]
    }


@pytest.fixture(scope="module")
def llms(llm_dirs):
    return {key: FrozenLLM(path) for key, path in llm_dirs.items() if key[1] != "none"}


FAMILIES = [("qwen2", "qwen"), ("llama", "qwen"), ("llama", "llama3")]


# -- tiny builder ----------------------------------------------------------------------

def test_build_tiny_llm_loads_like_a_real_llm(tmp_path):
    # how long the build takes is no test's business (a busy machine is not a broken one)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = build_tiny_llm(tmp_path / "llm", default_tiny_texts(), family="qwen2", seed=3)
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert model.config.model_type == "qwen2"
    assert model.config.vocab_size == len(tok)
    text = "The capital of Zorbia is Quenta. ünïcödé 漢字"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert len(tok.encode(special, add_special_tokens=False)) == 1
    assert tok.eos_token == tok.pad_token == "<|endoftext|>"


def test_build_tiny_llm_seed_makes_weights_reproducible(tmp_path):
    a = FrozenLLM(build_tiny_llm(tmp_path / "a", default_tiny_texts(), seed=1))
    b = FrozenLLM(build_tiny_llm(tmp_path / "b", default_tiny_texts(), seed=1))
    c = FrozenLLM(build_tiny_llm(tmp_path / "c", default_tiny_texts(), seed=2))
    wa, wb, wc = (m.model.get_input_embeddings().weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_build_tiny_llm_llama_family(llm_dirs):
    llm = FrozenLLM(llm_dirs[("llama", "qwen")])
    assert llm.model.config.model_type == "llama"
    text = "Mira Holt wrote the red book. ünïcödé"
    assert llm.tokenizer.decode(llm.tokenizer.encode(text, add_special_tokens=False)) == text


def test_build_tiny_llm_command(tmp_path, capsys):
    import json

    from espnet_freeze_omni.bin import build_tiny_llm as cli

    text = tmp_path / "dialogs.jsonl"
    dialog = {"turns": [{"role": "user", "content": "Who is Zed?"},
                        {"role": "assistant", "content": "Zed is a pilot."}]}
    text.write_text(json.dumps(dialog) + "\n")
    cli.main(["--family", "llama", "--text_file", str(text), "--out_dir", str(tmp_path / "llm"),
              "--vocab_size", "100", "--hidden_size", "32", "--num_layers", "1"])
    assert "written to" in capsys.readouterr().out
    llm = FrozenLLM(tmp_path / "llm")
    assert (llm.hidden_size, llm.num_layers, llm.model.config.model_type) == (32, 1, "llama")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{}\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        cli.main(["--text_file", str(bad), "--out_dir", str(tmp_path / "x")])


# -- chat template ---------------------------------------------------------------------

@pytest.mark.parametrize("key", FAMILIES)
@pytest.mark.parametrize("history", [None, HISTORY])
def test_chat_template_equals_apply_chat_template(llm_dirs, key, history):
    tok = load_llm_tokenizer(llm_dirs[key])
    template = ChatTemplate(tok)
    messages = [{"role": "system", "content": SYSTEM}, *(history or []),
                {"role": "user", "content": QUESTION}]
    expected = list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                            return_dict=False))
    prompt = template.text_prompt_ids(QUESTION, history)
    assert prompt == expected
    prefix, suffix = template.prefix_ids(history), template.suffix_ids()
    assert prompt == prefix + template.question_ids(QUESTION) + suffix


@pytest.mark.parametrize("key", FAMILIES)
def test_chat_template_turns_concatenate_like_a_kv_cache(llm_dirs, key):
    template = ChatTemplate(load_llm_tokenizer(llm_dirs[key]))
    q, a = HISTORY[0]["content"], HISTORY[1]["content"]
    assert template.prefix_ids(HISTORY) == (
        template.prefix_ids() + template.question_ids(q) + template.suffix_ids()
        + template.answer_ids(a) + template.next_turn_ids())
    # The answer target ends with the LLM's stop token.
    answer = template.answer_ids(a)
    assert answer[-len(template.answer_end_ids()):] == template.answer_end_ids()
    assert answer[-1] in template.end_of_turn_ids


def test_chat_template_system_prompt(llm_dirs):
    tok = load_llm_tokenizer(llm_dirs[("qwen2", "qwen")])
    template = ChatTemplate(tok, system_prompt="You are Zed.")
    text = tok.decode(template.prefix_ids())
    assert "You are Zed." in text and SYSTEM not in text
    assert "Be brief." in tok.decode(template.prefix_ids(system_prompt="Be brief."))


def test_chat_template_falls_back_to_qwen_format(llm_dirs):
    tok = load_llm_tokenizer(llm_dirs[("qwen2", "none")])
    assert not tok.chat_template
    template = ChatTemplate(tok)
    assert template.uses_fallback

    def ids(text):
        return tok.encode(text, add_special_tokens=False)

    assert template.prefix_ids() == ids(
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n")
    assert template.suffix_ids() == ids("<|im_end|>\n<|im_start|>assistant\n")
    assert template.answer_end_ids() == ids("<|im_end|>")
    assert template.next_turn_ids() == ids("\n<|im_start|>user\n")


def test_chat_template_rejects_bad_history(llm_dirs):
    template = ChatTemplate(load_llm_tokenizer(llm_dirs[("qwen2", "qwen")]))
    with pytest.raises(ValueError, match="history"):
        template.prefix_ids([{"role": "robot", "content": "hi"}])


# -- loading errors --------------------------------------------------------------------

def test_missing_dir_raises_file_not_found(tmp_path):
    missing = tmp_path / "no_such_llm"
    with pytest.raises(FileNotFoundError, match="no_such_llm"):
        FrozenLLM(missing)
    with pytest.raises(FileNotFoundError, match="no_such_llm"):
        load_llm_tokenizer(missing)


def test_folder_without_config_raises_value_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ValueError, match=r"(?s)no config\.json.*notes\.txt") as err:
        FrozenLLM(tmp_path)
    assert str(tmp_path) in str(err.value)


@pytest.mark.parametrize("architectures", [None, ["BertForMaskedLM"]])
def test_encoder_config_is_not_a_causal_lm(tmp_path, architectures):
    from transformers import BertConfig

    BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=32, architectures=architectures).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="bert") as err:
        FrozenLLM(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_causal_type_with_non_causal_architecture_is_rejected(tmp_path, llm_dirs):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(llm_dirs[("qwen2", "qwen")])
    config.architectures = ["Qwen2ForSequenceClassification"]
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="Qwen2ForSequenceClassification"):
        FrozenLLM(tmp_path)


# -- frozen LLM ------------------------------------------------------------------------

@pytest.mark.parametrize("key", FAMILIES)
def test_attributes(llms, key):
    llm = llms[key]
    config = llm.model.config
    assert llm.hidden_size == config.hidden_size == 64
    assert llm.num_layers == config.num_hidden_layers == 2
    assert llm.vocab_size == len(llm.tokenizer)
    assert llm.dtype == torch.float32 and llm.device.type == "cpu"
    end = "<|eot_id|>" if key[1] == "llama3" else "<|im_end|>"
    assert llm.tokenizer.convert_tokens_to_ids(end) in llm.eos_token_ids
    assert llm.tokenizer.eos_token_id in llm.eos_token_ids
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(llm.embed_tokens(ids), llm.model.get_input_embeddings().weight[ids])


@pytest.mark.parametrize("key", FAMILIES)
def test_frozen_and_always_eval(llms, key):
    llm = llms[key]
    assert all(not p.requires_grad for p in llm.parameters())
    llm.train()
    assert not llm.training and not llm.model.training


class Owner(torch.nn.Module):
    """A trainable model upstream of the LLM: adapter -> LLM -> a head on its hidden states."""

    def __init__(self, llm):
        super().__init__()
        self.adapter = torch.nn.Linear(8, llm.hidden_size)
        hold_frozen_llm(self, llm)
        self.head = torch.nn.Linear(llm.hidden_size, 4)

    def forward(self, x):
        out = self.llm(self.adapter(x))
        return out.logits.logsumexp(-1).mean() + self.head(out.hidden).mean()


@pytest.mark.parametrize("key", FAMILIES)
def test_gradient_reaches_upstream_but_llm_never_changes(llms, key):
    llm = llms[key]
    owner = Owner(llm)
    before = {k: v.clone() for k, v in llm.state_dict().items()}
    adapter_before = owner.adapter.weight.detach().clone()
    optimizer = torch.optim.AdamW(owner.parameters(), lr=0.1, weight_decay=0.1)
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8, requires_grad=True)
    owner(x).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert owner.adapter.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in llm.parameters())
    optimizer.step()
    assert not torch.equal(owner.adapter.weight, adapter_before)
    after = llm.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_held_llm_stays_out_of_state_dict_parameters_and_modules(llms):
    llm = llms[("qwen2", "qwen")]
    owner = Owner(llm)
    assert owner.llm is llm
    assert not any(k.startswith("llm.") for k in owner.state_dict())
    assert set(owner.state_dict()) == {"adapter.weight", "adapter.bias", "head.weight", "head.bias"}
    llm_params = {id(p) for p in llm.parameters()}
    assert not any(id(p) in llm_params for p in owner.parameters())
    assert not any(m is llm or m is llm.model for m in owner.modules())
    owner.train()
    assert not llm.training
    with pytest.raises(ValueError, match="adapter"):
        hold_frozen_llm(owner, llm, name="adapter")


@pytest.mark.parametrize("key", FAMILIES)
def test_prefill_extend_equals_full_forward(llms, key):
    llm = llms[key]
    torch.manual_seed(0)
    x = torch.randn(1, 11, llm.hidden_size)
    full = llm(x)
    a = llm.prefill(x[:, :5])
    assert llm.cache_length(a.past_key_values) == 5
    b = llm.extend(x[:, 5:6], a.past_key_values)
    c = llm.extend(x[:, 6:], b.past_key_values)
    assert llm.cache_length(c.past_key_values) == 11
    assert llm.cache_length(None) == 0
    steps = [a, b, c]
    torch.testing.assert_close(torch.cat([o.logits for o in steps], 1), full.logits,
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat([o.hidden for o in steps], 1), full.hidden,
                               atol=1e-5, rtol=0)
    assert full.past_key_values is None


def test_hidden_is_final_norm_output_and_logits_follow(llms):
    llm = llms[("qwen2", "qwen")]
    x = torch.randn(1, 4, llm.hidden_size)
    out = llm(x)
    base = llm.model.model(inputs_embeds=x).last_hidden_state
    torch.testing.assert_close(out.hidden, base)
    torch.testing.assert_close(out.logits, llm.model.lm_head(base))


def test_left_padding_does_not_change_outputs(llms):
    llm = llms[("llama", "qwen")]
    x = torch.randn(1, 6, llm.hidden_size)
    padded = torch.cat([torch.zeros(1, 3, llm.hidden_size), x], 1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    torch.testing.assert_close(llm(padded, attention_mask=mask).logits[:, 3:], llm(x).logits,
                               atol=1e-5, rtol=0)


def test_low_precision_llm_returns_float32(llm_dirs):
    llm = FrozenLLM(llm_dirs[("qwen2", "qwen")], dtype="bfloat16")
    assert llm.dtype == torch.bfloat16
    x = torch.randn(1, 3, llm.hidden_size, requires_grad=True)
    out = llm(x)
    assert out.logits.dtype == out.hidden.dtype == torch.float32
    out.hidden.sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32
    with pytest.raises(ValueError, match="dtype"):
        FrozenLLM(llm_dirs[("qwen2", "qwen")], dtype="float8")
