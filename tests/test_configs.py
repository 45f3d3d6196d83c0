"""Dry run of EVERY config: the top-level conf/*.yaml and each recipe's conf/ (links or files).

Each one is parsed by the parser of the Task that trains it (an unknown key or a bad value
fails there, as it would at the start of a training run) and its model is built ON THE META
DEVICE: the full paper-size modules are constructed, shapes and all, without allocating a
byte of weights. The paper configs must then have the paper's sizes (SPEC §1-2): ~357M in
the speech encoder, ~165M in the speech decoder with its NAR prefix decoder, one 1024-code
codebook at 40 Hz for 24 kHz audio.

The frozen LLM is the one part that cannot live on the meta device (transformers loads
weights for real). It is a stand-in of the paper's family and width: a 1-layer Qwen2 with
hidden size 3584, like Qwen2-7B-Instruct, but 1 attention head of width 4, a 4-wide MLP and
a ~300-token vocabulary (~2M parameters, a few MB on disk). Everything that depends on the
LLM -- the adapter's output width, the prompt embeddings, the state head, the 4 x 896 frame
reshaping of the speech decoder -- only sees `hidden_size` and the embedding table, so the
sizes counted here are the real ones. It is loaded once per dtype before the meta build and
handed to the Tasks in place of FrozenLLM(path).
"""
import re
from pathlib import Path

import pytest
import torch
import yaml

from espnet_freeze_omni.llm.frozen_llm import FrozenLLM

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(REPO.glob("conf/*.yaml")) + sorted(REPO.glob("egs2/*/freeze_omni1/conf/*.yaml"))
PAPER_LLM_HIDDEN = 3584  # Qwen2-7B-Instruct
ENCODER_PARAMS = 356.9e6  # SPEC §1: 24 layers, d=1024 (~350M); conf/encoder_paper.yaml
SPEECH_DECODER_PARAMS = 164.7e6  # SPEC §2: pre-net 2 + NAR/AR 4 + NAR prefix 4 layers of 896
PREFIX_DECODER_PARAMS = 65.1e6  # the 4 prefix layers, absent at speech output stage 2


def config_id(path: Path) -> str:
    return str(path.relative_to(REPO))


def driver_outputs():
    """The decoding outputs the driver merges and stage 16 scores (freeze_omni.sh)."""
    text = (REPO / "egs2/TEMPLATE/freeze_omni1/freeze_omni.sh").read_text()
    m = re.search(r"for sub in (asr_ctc [a-z_ ]+); do", text)
    assert m, "freeze_omni.sh no longer lists its decoding outputs in `for sub in ...`"
    return set(m.group(1).split())


def task_of(path: Path):
    """(Task class, kind) from the file name: speech_input_* / encoder_* -> SpeechInputTask,
    speech_output_* -> SpeechOutputTask, codec* -> espnet's GANCodecTask, decode* -> a
    decoding config."""
    name = path.name
    if name.startswith(("speech_input_", "encoder_")):
        from espnet_freeze_omni.tasks.speech_input import SpeechInputTask

        return SpeechInputTask, "speech_input"
    if name.startswith("speech_output_"):
        from espnet_freeze_omni.tasks.speech_output import SpeechOutputTask

        return SpeechOutputTask, "speech_output"
    if name.startswith("codec"):
        from espnet2.tasks.gan_codec import GANCodecTask

        return GANCodecTask, "codec"
    if name.startswith("decode"):
        return None, "decode"
    pytest.fail(f"{config_id(path)}: no Task is known for this file name; name it "
                "speech_input_*, encoder_*, speech_output_*, codec* or decode*, or teach "
                "tests/test_configs.py::task_of its Task")


@pytest.fixture(scope="module")
def stand_in_llm(tmp_path_factory):
    """A 1-layer Qwen2 folder with Qwen2-7B's hidden size and a tiny everything else."""
    from transformers import AutoConfig, Qwen2ForCausalLM

    from espnet_freeze_omni.llm.tiny import build_tiny_llm

    out = tmp_path_factory.mktemp("stand_in_llm") / "qwen2_hidden3584"
    build_tiny_llm(out, ["what is the capital of france", "paris is the capital of france"],
                   family="qwen2", vocab_size=300, num_layers=1)
    config = AutoConfig.from_pretrained(out, local_files_only=True)
    config.update(dict(hidden_size=PAPER_LLM_HIDDEN, num_attention_heads=1,
                       num_key_value_heads=1, head_dim=4, intermediate_size=4))
    Qwen2ForCausalLM(config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def llm_cache():
    return {}


@pytest.fixture(scope="module")
def side_files(tmp_path_factory):
    """A character token list and GlobalMVN statistics, as stage 6 would write them."""
    import numpy as np

    root = tmp_path_factory.mktemp("config_side_files")
    tokens = ["<blank>", "<unk>", "<space>", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ'", "<sos/eos>"]
    (root / "tokens.txt").write_text("\n".join(tokens) + "\n")
    np.savez(root / "feats_stats.npz", count=np.array(100.0), sum=np.zeros(80),
             sum_square=np.full(80, 100.0))
    return root


def parse(task, path: Path, extra, capsys):
    try:
        return task.get_parser().parse_args(["--config", str(path), *extra])
    except SystemExit:
        pytest.fail(f"{config_id(path)} does not parse with {task.__name__}: "
                    f"{capsys.readouterr().err.strip()[-2000:]}")


def build_on_meta(task, args, path: Path):
    try:
        with torch.device("meta"):
            return task.build_model(args)
    except Exception as e:  # noqa: BLE001 -- any failure is this config's, name it
        pytest.fail(f"{config_id(path)}: {task.__name__}.build_model fails: "
                    f"{type(e).__name__}: {e}")


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("path", CONFIGS, ids=config_id)
def test_config_parses_and_builds(path, stand_in_llm, llm_cache, side_files, monkeypatch,
                                  capsys):
    assert path.exists(), f"{config_id(path)}: broken link to {path.resolve()}"
    task, kind = task_of(path)
    paper = path.resolve().name.endswith("_paper.yaml")
    conf = yaml.safe_load(path.read_text())
    assert isinstance(conf, dict), f"{config_id(path)}: not a YAML mapping"
    if kind == "decode":
        # every key must be an option of the decoding entry point, every output one that
        # stage 16 knows
        from espnet_freeze_omni.bin.speech2speech_inference import get_parser

        options = get_parser()._option_string_actions
        not_options = sorted(k for k in conf if f"--{k}" not in options)
        assert not not_options, f"{config_id(path)}: {not_options} are not options of " \
                                "speech2speech_inference"
        unknown = set(conf.get("outputs", [])) - driver_outputs()
        assert not unknown, f"{config_id(path)}: outputs {sorted(unknown)} are not among " \
                            f"the driver's {sorted(driver_outputs())}"
        return

    extra = ["--output_dir", str(side_files / "out")]
    if kind == "speech_input":
        extra += ["--token_list", str(side_files / "tokens.txt")]
        if conf.get("normalize") == "global_mvn":  # the stats file comes from stage 6
            extra += ["--normalize_conf", f"stats_file={side_files / 'feats_stats.npz'}"]
    if kind in ("speech_input", "speech_output"):
        extra += ["--llm_conf", f"path={stand_in_llm}"]
    args = parse(task, path, extra, capsys)

    if kind in ("speech_input", "speech_output"):
        import espnet_freeze_omni.tasks.speech_input as speech_input_module
        import espnet_freeze_omni.tasks.speech_output as speech_output_module

        def preloaded_llm(path, dtype="float32"):
            assert Path(path) == stand_in_llm
            return llm_cache[dtype]

        dtype = (args.llm_conf or {}).get("dtype", "float32")
        if dtype not in llm_cache:  # loaded for real, outside the meta device
            llm_cache[dtype] = FrozenLLM(stand_in_llm, dtype=dtype)
        for module in (speech_input_module, speech_output_module):
            monkeypatch.setattr(module, "FrozenLLM", preloaded_llm)

    model = build_on_meta(task, args, path)
    assert all(p.device.type == "meta" for p in model.parameters())

    if kind == "speech_input":
        if paper:
            assert count(model.encoder) == pytest.approx(ENCODER_PARAMS, rel=0.01), \
                f"{config_id(path)}: encoder has {count(model.encoder) / 1e6:.1f}M parameters"
        if hasattr(model, "adapter"):  # stages 2-3: the adapter speaks the LLM's width
            assert model.adapter.output_size() == PAPER_LLM_HIDDEN, config_id(path)
    elif kind == "speech_output":
        decoder = model.speech_decoder
        assert decoder.llm_hidden_size == PAPER_LLM_HIDDEN
        if paper:
            want = SPEECH_DECODER_PARAMS - (0 if args.speech_decoder_conf["use_prefix"]
                                            else PREFIX_DECODER_PARAMS)
            assert count(decoder) == pytest.approx(want, rel=0.01), \
                f"{config_id(path)}: speech decoder has {count(decoder) / 1e6:.1f}M parameters"
    elif kind == "codec":
        # the codec interface of SPEC §2, whatever the size: one 1024-code book, 40 Hz, 24 kHz
        generator = model.codec.generator
        assert generator.sample_rate == 24000 and generator.frame_rate == 40, config_id(path)
        layers = generator.quantizer.vq.layers
        assert len(layers) == 1, f"{config_id(path)}: {len(layers)} codebooks, want 1"
        assert layers[0]._codebook.embed.shape[0] == 1024, config_id(path)


def test_paper_recipe_links_the_paper_configs():
    """egs2/librispeech_moss trains exactly the top-level paper configs, through links."""
    conf = REPO / "egs2/librispeech_moss/freeze_omni1/conf"
    for name in ("speech_input_stage1", "speech_input_stage2", "speech_input_stage3",
                 "speech_output_stage2", "speech_output_stage3", "codec"):
        link = conf / f"{name}.yaml"
        assert link.is_symlink(), link
        target = "codec_soundstream" if name == "codec" else name
        assert link.resolve() == (REPO / "conf" / f"{target}_paper.yaml").resolve(), link
