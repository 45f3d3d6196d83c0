"""Speech-output training through espnet (`main(cmd=[...])`): stages 2 and 3, bad inputs.

A tiny random Qwen2 LLM (build_tiny_llm) is the frozen LLM; codec tokens are random but
fixed, with enough structure (each code repeated 3 times) for the loss to fall fast.
"""
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from espnet2.legacy.nets.pytorch_backend.nets_utils import pad_list

from espnet_freeze_omni.bin.speech_output_train import main
from espnet_freeze_omni.llm.chat_template import ChatTemplate
from espnet_freeze_omni.llm.frozen_llm import FrozenLLM
from espnet_freeze_omni.tasks.speech_output import SpeechOutputTask

ROOT = Path(__file__).resolve().parents[1]
# the tiny configs' codec vocabulary (the embedded recipe's codec has 512 codes)
VOCAB = yaml.safe_load((ROOT / "conf/speech_output_stage2_tiny.yaml").read_text())[
    "speech_decoder_conf"]["vocab_size"]
ANSWERS = [
    "the sky is blue.", "anna lives in paris, near the river.", "tom is ten years old.",
    "the capital of zorvia is quell.", "ben owns the red car.", "maria is a doctor.",
    "leo has a small dog.", "the shop opens at nine.",
]
QUESTIONS = [
    "what color is the sky", "where does anna live", "how old is tom",
    "what is the capital of zorvia", "who owns the red car", "what does maria do",
    "what pet does leo have", "when does the shop open",
]



pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

def write_split(d: Path, idx, rng, codec_drop=None, codec_bad=None):
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "text", "w") as ft, open(d / "codec_tokens", "w") as fc, \
            open(d / "question", "w") as fq:
        for i in idx:
            utt = f"utt{i:02d}"
            ft.write(f"{utt} {ANSWERS[i]}\n")
            fq.write(f"{utt} {QUESTIONS[i]}\n")
            codes = rng.randint(0, VOCAB, size=4)
            seq = [int(codes[(k // 3) % 4]) for k in range(9 + 2 * i)]
            if utt == codec_bad:
                seq[2] = VOCAB
            if utt != codec_drop:
                fc.write(utt + " " + " ".join(map(str, seq)) + "\n")
    return d


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from espnet_freeze_omni.llm.tiny import build_tiny_llm

    root = tmp_path_factory.mktemp("speech_output")
    build_tiny_llm(root / "llm", ANSWERS + QUESTIONS, family="qwen2", hidden_size=128)
    rng = np.random.RandomState(0)
    write_split(root / "train", range(8), rng)
    write_split(root / "valid", range(2), np.random.RandomState(1))
    return root


def data_args(d: Path, mode: str, question: bool = False):
    args = [f"--{mode}_data_path_and_name_and_type", f"{d}/text,text,text",
            f"--{mode}_data_path_and_name_and_type", f"{d}/codec_tokens,codec_tokens,text_int",
            f"--{mode}_shape_file", f"{d}/text"]
    if question:
        args += [f"--{mode}_data_path_and_name_and_type", f"{d}/question,question,text"]
    return args


def train_cmd(root: Path, stage: int, out: Path, epochs: int, extra=(), train_dir=None):
    return [
        "--config", str(ROOT / f"conf/speech_output_stage{stage}_tiny.yaml"),
        "--llm_conf", f"path={root / 'llm'}",
        "--output_dir", str(out), "--ngpu", "0", "--seed", "0",
        "--max_epoch", str(epochs), "--batch_type", "unsorted", "--batch_size", "2",
        "--num_att_plot", "0", "--use_matplotlib", "false", "--use_tensorboard", "false",
        "--optim_conf", "lr=0.005", "--scheduler_conf", "warmup_steps=4",
        *data_args(train_dir or root / "train", "train", question=stage == 3),
        *data_args(root / "valid", "valid"),
        *extra,
    ]


def epoch_losses(exp: Path):
    stats = torch.load(exp / "checkpoint.pth", map_location="cpu", weights_only=False)
    stats = stats["reporter"]["stats"]
    return [stats[e]["train"]["loss"] for e in sorted(stats)]


def capture_models(monkeypatch):
    """Record the models espnet builds inside main() (to inspect the frozen LLM after)."""
    built = []
    original = SpeechOutputTask.build_model.__func__

    def build_model(cls, args):
        model = original(cls, args)
        built.append(model)
        return model

    monkeypatch.setattr(SpeechOutputTask, "build_model", classmethod(build_model))
    return built


def llm_snapshot(llm: FrozenLLM):
    return {k: v.detach().clone() for k, v in llm.model.state_dict().items()}


def assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def padded(rows):
    """Id sequences -> (B, max len) padded with -1, and their lengths, as the collator gives."""
    lens = torch.tensor([len(r) for r in rows])
    return pad_list([torch.as_tensor(r, dtype=torch.long) for r in rows], -1), lens


def test_stage2_then_stage3(workdir, monkeypatch):
    built = capture_models(monkeypatch)
    reference_llm = llm_snapshot(FrozenLLM(workdir / "llm"))

    # ---- stage 2: text -> codec tokens
    exp2 = workdir / "exp2"
    main(train_cmd(workdir, 2, exp2, epochs=4))
    losses = epoch_losses(exp2)
    print("stage 2 train loss per epoch", losses)
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.3, losses
    model2 = built[-1]
    assert_bitwise_equal(llm_snapshot(model2.llm), reference_llm)
    assert not any(k.startswith("llm.") for k in model2.state_dict())
    ckpt2 = torch.load(exp2 / "valid.loss.best.pth", map_location="cpu")
    assert ckpt2 and all(k.startswith("speech_decoder.") for k in ckpt2)
    assert not any("layers_prefix" in k for k in ckpt2)

    # ---- stage 3: + prefix decoder over the LLM's hidden states; the rest frozen
    exp3 = workdir / "exp3"
    # Without history corruption: on 3 epochs of 2-utterance batches, its random draws
    # move the training loss more than learning does; this test is about what learns.
    main(train_cmd(workdir, 3, exp3, epochs=3,
                   extra=["--init_param", str(exp2 / "valid.loss.best.pth"),
                          "--speech_decoder_conf", "codec_input_corruption=0.0"]))
    losses = epoch_losses(exp3)
    print("stage 3 train loss per epoch", losses)
    assert losses[-1] < losses[0], losses
    model3 = built[-1]
    assert_bitwise_equal(llm_snapshot(model3.llm), reference_llm)
    ckpt3 = torch.load(exp3 / "3epoch.pth", map_location="cpu")
    assert not any(k.startswith("llm.") or ".llm." in k for k in ckpt3)
    trained = {"layers_prefix", "layers_pre_nn"}
    changed = set()
    for k, v in ckpt3.items():
        block = k.split(".")[1]
        if k in ckpt2 and not torch.equal(v, ckpt2[k]):
            changed.add(block)
        if block not in trained:  # frozen: bitwise what stage 2 left
            assert torch.equal(v, ckpt2[k]), k
    assert changed == {"layers_pre_nn"}  # (prefix layers are new, so not in ckpt2)
    assert any(k.startswith("speech_decoder.layers_prefix.") for k in ckpt3)

    # ---- the trained stage-3 checkpoint speaks a segment (LLM given by path, not in it)
    from espnet_freeze_omni.inference.speech_synthesis import SpeechSynthesizer
    from espnet_freeze_omni.inference.text_segmenter import TextSegmenter

    synth = SpeechSynthesizer.from_pretrained(
        str(exp3 / "valid.loss.best.pth"), llm_path=str(workdir / "llm"), seed=0, max_tokens=30)
    llm, tpl = synth.llm, ChatTemplate(synth.llm.tokenizer)
    answer = tpl.answer_ids(ANSWERS[1])[: -len(tpl.answer_end_ids())]
    ids = tpl.text_prompt_ids(QUESTIONS[1]) + answer
    hidden = llm(llm.embed_tokens(torch.tensor([ids]))).hidden[0]
    start = len(ids) - len(answer) - 1
    segmenter = TextSegmenter(llm.tokenizer)
    segments = []
    for i, t in enumerate(answer):
        segments += segmenter.push(t, hidden=hidden[start + i])
    last = segmenter.flush()
    segments += [last] if last is not None else []
    assert [s.text for s in segments] == ["anna lives in paris,", " near the river."]
    for seg in segments:
        codes = list(synth.tokens(seg.token_ids, seg.hidden_states))
        assert len(codes) <= 30 and all(0 <= c < VOCAB for c in codes)


def test_stage3_prefix_is_the_answer_hidden_states(workdir):
    """The prefix holds, per answer token, the LLM state that predicted it."""
    parser = SpeechOutputTask.get_parser()
    args = parser.parse_args(["--config", str(ROOT / "conf/speech_output_stage3_tiny.yaml"),
                              "--llm_conf", f"path={workdir / 'llm'}", "--output_dir", "x"])
    model = SpeechOutputTask.build_model(args)
    pre = SpeechOutputTask.build_preprocess_fn(args, train=True)
    items = [pre(f"u{i}", {"text": ANSWERS[i], "question": QUESTIONS[i]}) for i in (0, 1)]
    text, lens = padded([x["text"] for x in items])
    question, qlens = padded([x["question"] for x in items])
    hidden, hlens = model.answer_hidden_states(text, lens, question, qlens)
    assert hidden.shape == (2, int(lens.max()), model.llm.hidden_size) and torch.equal(hlens, lens)
    # Same thing for utterance 1 alone, the way a streaming dialogue would see it.
    tpl = model.template
    ids = tpl.text_prompt_ids(QUESTIONS[1]) + items[1]["text"].tolist()
    out = model.llm(model.llm.embed_tokens(torch.tensor([ids])))
    start = len(ids) - len(items[1]["text"]) - 1
    ref = out.hidden[0, start: start + int(lens[1])]
    assert torch.allclose(hidden[1, : lens[1]], ref, atol=1e-5)


def test_bad_codec_token_names_the_utterance(workdir):
    bad = write_split(workdir / "bad_tok", range(4), np.random.RandomState(2), codec_bad="utt02")
    with pytest.raises(ValueError, match=rf"utt02.*{VOCAB}.*codec vocabulary"):
        main(train_cmd(workdir, 2, workdir / "exp_bad_tok", epochs=1,
                       train_dir=bad))


def test_missing_codec_utterance_names_it(workdir):
    bad = write_split(workdir / "bad_miss", range(4), np.random.RandomState(2), codec_drop="utt01")
    with pytest.raises(RuntimeError, match=r"missing from \"codec_tokens\".*utt01"):
        main(train_cmd(workdir, 2, workdir / "exp_bad_miss", epochs=1,
                       train_dir=bad))


def test_hidden_size_mismatch_names_both_sizes(workdir):
    with pytest.raises(ValueError, match=r"128.*48"):
        main(train_cmd(workdir, 2, workdir / "exp_bad_hidden", epochs=1,
                       extra=["--speech_decoder_conf", "hidden_size=48"]))


def test_model_rejects_out_of_vocabulary_ids(workdir):
    parser = SpeechOutputTask.get_parser()
    args = parser.parse_args(["--config", str(ROOT / "conf/speech_output_stage2_tiny.yaml"),
                              "--llm_conf", f"path={workdir / 'llm'}", "--output_dir", "x"])
    model = SpeechOutputTask.build_model(args)
    text = torch.tensor([[1, 2, 3]])
    codec = torch.tensor([[5, 6, 7]])
    one = torch.tensor([3])
    with pytest.raises(ValueError, match="uttX.*text token id 100000"):
        model(text=torch.tensor([[1, 100000, 3]]), text_lengths=one, codec_tokens=codec,
              codec_tokens_lengths=one, utt_id=["uttX"])
    with pytest.raises(ValueError, match=f"uttY.*codec token id {VOCAB + 6}"):
        model(text=text, text_lengths=one, codec_tokens=torch.tensor([[5, VOCAB + 6, 7]]),
              codec_tokens_lengths=one, utt_id=["uttY"])


def test_guided_attention_weight_adds_the_decoders_loss(workdir):
    """model_conf guided_attention_weight: total = CE + weight * guided loss, both logged."""
    parser = SpeechOutputTask.get_parser()
    base = ["--config", str(ROOT / "conf/speech_output_stage2_tiny.yaml"),
            "--llm_conf", f"path={workdir / 'llm'}", "--output_dir", "x"]
    args = parser.parse_args(base + ["--model_conf", "guided_attention_weight=2.0",
                                     "--speech_decoder_conf", "guided_attention_layers=[0, 1]"])
    torch.manual_seed(0)
    model = SpeechOutputTask.build_model(args).eval()
    pre = SpeechOutputTask.build_preprocess_fn(args, train=False)
    ids = torch.from_numpy(pre("u", {"text": ANSWERS[1]})["text"])[None]
    codec = torch.randint(0, VOCAB, (1, 20))
    lens = (torch.tensor([ids.size(1)]), torch.tensor([20]))
    loss, stats, _ = model(ids, lens[0], codec, lens[1])
    assert float(stats["loss_guided_att"]) > 0
    expected = float(stats["loss_ce"]) + 2.0 * float(stats["loss_guided_att"])
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # without guided layers the weight has nothing to weigh: a config error, said at build
    bad = parser.parse_args(base + ["--model_conf", "guided_attention_weight=1.0"])
    with pytest.raises(ValueError, match="guided_attention_layers"):
        SpeechOutputTask.build_model(bad)


def test_decoder_bpe_merges_splits_only_what_the_decoder_reads(workdir):
    """model_conf decoder_bpe_merges: the decoder reads the answer's tokens split finer, the
    prefix stays the LLM's hidden state per token; training through espnet and loading the
    checkpoint for inference both keep the split."""
    import json

    from espnet_freeze_omni.inference.speech_synthesis import SpeechSynthesizer

    tokenizer = FrozenLLM(workdir / "llm").tokenizer
    merges = len(json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]) // 4
    parser = SpeechOutputTask.get_parser()
    args = parser.parse_args(["--config", str(ROOT / "conf/speech_output_stage3_tiny.yaml"),
                              "--llm_conf", f"path={workdir / 'llm'}", "--output_dir", "x",
                              "--model_conf", f"decoder_bpe_merges={merges}"])
    torch.manual_seed(0)
    model = SpeechOutputTask.build_model(args).eval()
    pre = SpeechOutputTask.build_preprocess_fn(args, train=False)
    items = [pre(f"u{i}", {"text": ANSWERS[i], "question": QUESTIONS[i]}) for i in (1, 3)]
    text, lens = padded([x["text"] for x in items])
    question, qlens = padded([x["question"] for x in items])
    codec = torch.randint(0, VOCAB, (2, 15))
    clens = torch.tensor([15, 11])
    loss, stats, _ = model(text, lens, codec, clens, question, qlens)

    finer = [model.token_splitter.split(text[b, : lens[b]].tolist()) for b in range(2)]
    ftext, flens = padded(finer)
    assert bool((flens > lens).all()), (flens, lens)
    prefix, plens = model.answer_hidden_states(text, lens, question, qlens)
    assert torch.equal(plens, lens)  # one hidden state per LLM token, as before
    logits, target = model.speech_decoder(model.embed_text(ftext, flens), flens, codec, clens,
                                          prefix, plens)
    expected = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), target.reshape(-1),
        ignore_index=model.speech_decoder.pad_id)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)

    # inference splits a segment's tokens the same way before embedding them
    hidden = prefix[0, : lens[0]]
    split = SpeechSynthesizer(model.speech_decoder, llm=model.llm, top_k=1, max_tokens=8,
                              token_splitter=model.token_splitter)
    plain = SpeechSynthesizer(model.speech_decoder, llm=model.llm, top_k=1, max_tokens=8)
    ids = text[0, : lens[0]].tolist()
    assert list(split.tokens(ids, hidden)) == list(plain.tokens(finer[0], hidden))
    assert list(split.tokens(ids, hidden)) != list(plain.tokens(ids, hidden))

    # through espnet's Trainer, and back through from_pretrained
    exp = workdir / "exp_finer"
    main(train_cmd(workdir, 2, exp, epochs=1,
                   extra=["--model_conf", f"decoder_bpe_merges={merges}"]))
    synth = SpeechSynthesizer.from_pretrained(str(exp / "valid.loss.best.pth"),
                                              llm_path=str(workdir / "llm"))
    assert synth.token_splitter is not None and synth.token_splitter.num_merges == merges
