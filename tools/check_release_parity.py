#!/usr/bin/env python3
"""Numerical parity of an imported model with the authors' release code (issue 30).

    .venv/bin/python tools/check_release_parity.py --release_src /path/to/Freeze-Omni

`--release_src` is a checkout of github VITA-MLLM/Freeze-Omni. Its modules are imported
from there at run time (never copied into this project: research-only licence). Both
sides are built at tiny sizes with the same random weights: the release's own modules are
instantiated and randomized, their state_dicts go through our converter's key map
(espnet_freeze_omni/release), and the script prints the max abs difference of

    features          torchaudio Kaldi fbank (release bin/inference.py settings) vs ours
    encoder           streaming, the release's `infer` chunk by chunk vs our forward_chunk
                      (position_mode release); both get the same 19-frame windows, so the
                      streaming alignment (RELEASE.md difference 4) is not part of it
    alignment         the same encoders on the same audio, each side streaming its own way:
                      the release demo's audioEncoderProcessor (bin/inference.py, compiled
                      from the checkout at run time) + `infer` vs our KaldiStreamingFrontend
                      with `stream_alignment: release` + global MVN + forward_chunk
    adapter           streaming, with each side's conv cache
    state head        probabilities (softmax of the first 3 logits) on the same hidden
                      states, and how many chunk decisions the two rules agree on
    speech decoder    logits of the first codec steps (prefix + pre-network + text, then
                      SOS and teacher-forced codes), cached decoding on both sides
    codec (TiCodec)   PCM of the same tokens: the release's VQVAE, loaded by its own code
                      from a release-format codec/{model.json, final.pt} with random
                      weight-normed weights (remove_weight_norm applied, as llm2tts does),
                      vs our converter (convert_codec) + TiCodec.decode; at the release's
                      architecture sizes and at tiny ones with an odd kernel - rate
    codec encoding    the release's VQVAE.encode vs ours (TiCodecModel.encode) on the same
                      2 s waveform: max abs diff of the Encoder's continuous output and of
                      the global vector, and the number of local / global token ids that
                      differ (codebooks spread like the encoder outputs, BatchNorm running
                      statistics random)

Target: <= 1e-4 in float32. Shims (API drift only, no release code changed): the release's
encoder moves its position table to 'cuda' unconditionally (kept on CPU here when there
is no GPU), and its decoder calls transformers 4.x's LlamaDecoderLayer convention
(`past_key_value=`, tuple outputs), which transformers 5 replaced (`cache=`, a tensor).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

D, HEADS, UNITS, BLOCKS, CHUNK, LEFT = 64, 4, 128, 2, 4, 16
LLM_HIDDEN, KERNEL = 128, 5
DEC_HIDDEN, DEC_HEADS, DEC_UNITS, DEC_BLOCKS, CODES = 32, 2, 64, 2, 16


@contextlib.contextmanager
def cpu_for_cuda():
    """tensor.to('cuda') is a no-op while there is no GPU (the release's encoder.infer)."""
    if torch.cuda.is_available():
        yield
        return
    original = torch.Tensor.to

    def to(self, *args, **kwargs):
        if args and isinstance(args[0], str) and args[0].startswith("cuda"):
            return self
        return original(self, *args, **kwargs)

    torch.Tensor.to = to
    try:
        yield
    finally:
        torch.Tensor.to = original


class LegacyLayer(torch.nn.Module):
    """transformers-4 calling convention around a transformers-5 LlamaDecoderLayer."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, hidden_states, attention_mask=None, position_ids=None,
                past_key_value=None, output_attentions=False, use_cache=False,
                cache_position=None, position_embeddings=None):
        out = self.layer(hidden_states, attention_mask=attention_mask,
                         position_ids=position_ids, cache=past_key_value, use_cache=use_cache,
                         position_embeddings=position_embeddings)
        return (out, past_key_value) if torch.is_tensor(out) else out


def randomize(module: torch.nn.Module, gen: torch.Generator, scale=0.1) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("weight") and p.dim() == 1:  # norms
                p.copy_(1 + torch.randn(p.shape, generator=gen) * scale)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise SystemExit(f"shape mismatch: release {tuple(a.shape)} vs ours {tuple(b.shape)}")
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def import_release(src: Path):
    sys.path.insert(0, str(src))
    argv, sys.argv = sys.argv, sys.argv[:1]  # the release parses sys.argv while building
    try:
        from models.adapter import CNNSubsampling
        from models.encoder.cmvn import GlobalCMVN
        from models.encoder.encoder import speechEncoder
        try:
            from models.decoder.decoder import LLM2TTSCodecAR
        except Exception as e:  # noqa: BLE001 - report and go on without the decoder
            print(f"release decoder not importable: {type(e).__name__}: {e}")
            LLM2TTSCodecAR = None
    finally:
        sys.argv = argv
    return speechEncoder, GlobalCMVN, CNNSubsampling, LLM2TTSCodecAR


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--release_src", required=True, help="checkout of VITA-MLLM/Freeze-Omni")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="audio length (> 2.72 s reaches the release's position shift)")
    args = parser.parse_args(argv)
    src = Path(args.release_src)
    if not (src / "models" / "encoder" / "encoder.py").is_file():
        raise SystemExit(f"{src} is not a Freeze-Omni checkout (no models/encoder/encoder.py)")
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    speechEncoder, GlobalCMVN, CNNSubsampling, LLM2TTSCodecAR = import_release(src)

    from espnet2.layers.global_mvn import GlobalMVN

    from espnet_freeze_omni.adapter import ConvAdapter
    from espnet_freeze_omni.encoder import StreamingChunkEncoder
    from espnet_freeze_omni.inference.duplex_session import decide_state
    from espnet_freeze_omni.release.convert import (
        convert_audio_llm, convert_decoder, write_stats)
    from espnet_freeze_omni.release.kaldi_fbank import KaldiFbankFrontend

    results = {}
    # ------------------------------------------------------------------ features
    import torchaudio.compliance.kaldi as kaldi

    wav = torch.from_numpy(np.random.RandomState(args.seed).randn(int(16000 * args.seconds))
                           .astype(np.float32) * 0.1)
    theirs = kaldi.fbank(waveform=(wav * 32768)[None], dither=0, frame_length=25,
                         frame_shift=10, num_mel_bins=80)
    ours, _ = KaldiFbankFrontend()(wav[None], torch.tensor([wav.numel()]))
    results["features (kaldi fbank)"] = max_diff(theirs, ours[0])
    feats = ours

    # ------------------------------------------------------------------ encoder + adapter
    mean = torch.randn(80, generator=gen) * 2 + feats[0].mean(0)
    istd = torch.rand(80, generator=gen) * 0.3 + 0.2
    tr = {"transformer-input-dim": D, "transformer-output-dim": D,
          "transformer-attention-dim": D, "transformer-attention-heads": HEADS,
          "transformer-linear-units": UNITS, "transformer-num-blocks": BLOCKS,
          "transformer-dropout-rate": 0.1, "transformer-attention-dropout-rate": 0.0,
          "transformer-positional-dropout-rate": 0.1, "transformer-input-layer": "linear",
          "transformer-pos-enc-class": "rel-enc", "transformer-normalize-before": True,
          "transformer-chunk_size": CHUNK, "transformer-left_chunks": LEFT,
          "transformer-dynamic-chunks": False}
    argv_saved, sys.argv = sys.argv, sys.argv[:1]
    try:
        release_encoder = speechEncoder(
            80, overview_conf={"encoder-input-dim": 80, "encoder-output-dim": D,
                               "encoder-layer-config": "subsampling-transformer"},
            para_conf={"subsampling": {"subsampling-rate": 4, "subsampling-input-dim": 80,
                                       "subsampling-output-dim": D},
                       "transformer": tr},
            global_cmvn=GlobalCMVN(mean.clone(), istd.clone())).eval()
    finally:
        sys.argv = argv_saved
    release_adapter = CNNSubsampling(D, LLM_HIDDEN, KERNEL, "gelu", "layer").eval()
    randomize(release_encoder, gen)
    randomize(release_adapter, gen)
    state = {f"encoder.{k}": v for k, v in release_encoder.state_dict().items()}
    state.update({f"adpter.{k}": v for k, v in release_adapter.state_dict().items()})
    converted, _ = convert_audio_llm(state, Path("<release modules>"))

    encoder = StreamingChunkEncoder(80, output_size=D, attention_heads=HEADS, linear_units=UNITS,
                                    num_blocks=BLOCKS, chunk_size=CHUNK, left_chunks=LEFT,
                                    position_mode="release", input_layer="linear").eval()
    adapter = ConvAdapter(D, LLM_HIDDEN, kernel_size=KERNEL).eval()
    encoder.load_state_dict({k[len("encoder."):]: v for k, v in converted.items()
                             if k.startswith("encoder.")}, strict=True)
    adapter.load_state_dict({k[len("adapter."):]: v for k, v in converted.items()
                             if k.startswith("adapter.")}, strict=True)
    with tempfile.TemporaryDirectory() as tmp:
        write_stats(Path(tmp) / "stats.npz", mean.double().numpy(), istd.double().numpy())
        normalize = GlobalMVN(Path(tmp) / "stats.npz")

    with torch.no_grad(), cpu_for_cuda():
        normed, _ = normalize(feats.clone(), torch.tensor([feats.size(1)]))  # in place
        enc_state = encoder.init_streaming_state(1)
        ours_enc, _ = encoder.forward_chunk(normed.float(), enc_state)
        ours_ad, _ = adapter.forward_chunk(ours_enc, adapter.init_cache(1))
        step, window = CHUNK * 4, CHUNK * 4 + 3
        buffer, pe_index, cnn_cache, enc_out, ad_out = [None] * BLOCKS, 0, None, [], []
        for start in range(0, feats.size(1) - window + 1, step):
            out, buffer, _, _, pe_index = release_encoder.infer(
                feats[:, start:start + window], buffer, 0, None, pe_index)
            mask = torch.ones(1, 1, out.size(1), dtype=torch.bool)
            emb, _, cnn_cache = release_adapter(out, mask, cache=cnn_cache, return_cache=True)
            enc_out.append(out)
            ad_out.append(emb)
        enc_out, ad_out = torch.cat(enc_out, 1), torch.cat(ad_out, 1)
    results[f"encoder (streaming, {enc_out.size(1) // CHUNK} chunks)"] = max_diff(enc_out, ours_enc)
    first = min(17 * CHUNK, enc_out.size(1))
    results["encoder, first 17 chunks"] = max_diff(enc_out[:, :first], ours_enc[:, :first])
    results["adapter (streaming)"] = max_diff(ad_out, ours_ad)
    aligned = streaming_alignment_parity(src, wav, release_encoder, encoder, normalize_stats=(
        mean.double().numpy(), istd.double().numpy()))
    if aligned is not None:
        results.update(aligned[0])
    # for contrast: the same weights under our recipe's relative positions
    relative = StreamingChunkEncoder(80, output_size=D, attention_heads=HEADS, linear_units=UNITS,
                                     num_blocks=BLOCKS, chunk_size=CHUNK, left_chunks=LEFT,
                                     input_layer="linear").eval()
    relative.load_state_dict(encoder.state_dict())
    with torch.no_grad():
        rel_enc, _ = relative.forward_chunk(normed.float(), relative.init_streaming_state(1))
    contrast = max_diff(enc_out, rel_enc)

    # ------------------------------------------------------------------ state head
    head = torch.nn.Linear(LLM_HIDDEN, 4)  # AudioLLM.predictor_head
    randomize(head, gen, scale=1.0)
    ours_head = torch.nn.Linear(LLM_HIDDEN, 4)
    ours_head.load_state_dict(head.state_dict())
    hidden = torch.randn(1, 64, LLM_HIDDEN, generator=gen) * 0.1  # spread-out probabilities
    with torch.no_grad():
        release_probs = torch.softmax(head(hidden)[0][:, :-1], dim=-1)  # as _generate_one_step
        our_probs = torch.softmax(ours_head(hidden)[..., :3][0], dim=-1)  # model.state_logits
    results["state head probabilities"] = max_diff(release_probs, our_probs)

    def release_rule(p):
        return 2 if p[2] > 0.5 else (1 if p[1] > 0.5 else 0)
    agree = sum(release_rule(p) == decide_state(q, "release")
                for p, q in zip(release_probs, our_probs))
    argmax_agree = sum(release_rule(p) == decide_state(q) for p, q in zip(release_probs, our_probs))

    # ------------------------------------------------------------------ speech decoder
    if LLM2TTSCodecAR is not None:
        results.update(decoder_parity(LLM2TTSCodecAR, convert_decoder, gen))

    results.update(codec_parity(src, gen))

    texts = text_parity(src)

    print(f"release code: {src}")
    for name, value in results.items():
        if "mismatches" in name:  # counts of differing token ids
            print(f"  {name:45s} {int(value)} differ  {'ok' if value == 0 else 'DIFFERS'}")
            continue
        flag = "ok" if value <= 1e-4 else "DIFFERS"
        print(f"  {name:45s} max |diff| = {value:.3e}  {flag}")
    print(f"  (our recipe's relative positions, same weights: encoder max |diff| = "
          f"{contrast:.3e})")
    if aligned is not None:
        print(f"  (our default look-ahead alignment on the same audio: encoder max |diff| = "
              f"{aligned[1]:.3e})")
    if texts is not None:
        print(f"  decoder text normalisation: {texts[0]}/{texts[1]} sample texts identical")
    print(f"  state decisions, release rule: {agree}/{len(our_probs)} agree "
          f"(argmax would agree on {argmax_agree})")
    return 0


def release_audio_processor(src: Path):
    """The release demo's streaming feature class (bin/inference.py audioEncoderProcessor),
    compiled from the checkout at run time without importing the script (whose imports
    need the web demo and a GPU)."""
    import ast

    import torchaudio.compliance.kaldi as kaldi

    path = src / "bin" / "inference.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = [n for n in tree.body
             if isinstance(n, ast.ClassDef) and n.name == "audioEncoderProcessor"]
    if not nodes:
        return None
    namespace = {"torch": torch, "k": kaldi}
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(path), "exec"), namespace)
    return namespace["audioEncoderProcessor"]


def streaming_alignment_parity(src: Path, wav: torch.Tensor, release_encoder, encoder,
                               normalize_stats):
    """RELEASE.md difference 4: the release's own streaming (its demo's feature processor,
    2560-sample chunks -> 3 previous + 16 new frames -> encoder.infer) against our session
    path (KaldiStreamingFrontend with stream_alignment 'release', in 1000-sample pieces ->
    global MVN -> forward_chunk) on the same audio. Returns ({name: diff}, diff of our
    default look-ahead alignment) or None when the release's processor is missing."""
    from espnet2.layers.global_mvn import GlobalMVN

    from espnet_freeze_omni.release.convert import write_stats
    from espnet_freeze_omni.release.kaldi_fbank import (
        KaldiFbankFrontend, KaldiStreamingFrontend)

    processor_cls = release_audio_processor(src)
    if processor_cls is None:
        print("release bin/inference.py has no audioEncoderProcessor: alignment not checked")
        return None
    processor = processor_cls()
    step = processor.get_chunk_size()
    padded = torch.zeros(-(-wav.numel() // step) * step)  # as the demo pads its input
    padded[:wav.numel()] = wav
    with tempfile.TemporaryDirectory() as tmp:
        write_stats(Path(tmp) / "stats.npz", *normalize_stats)
        normalize = GlobalMVN(Path(tmp) / "stats.npz")

    def ours(alignment):
        stream = KaldiStreamingFrontend(KaldiFbankFrontend(stream_alignment=alignment))
        feats = torch.cat([stream.push(padded[i:i + 1000]) for i in
                           range(0, padded.numel(), 1000)], dim=1)
        feats, _ = normalize(feats.clone(), torch.tensor([feats.size(1)]))
        out, _ = encoder.forward_chunk(feats.float(), encoder.init_streaming_state(1))
        return out

    import warnings
    with torch.no_grad(), cpu_for_cuda(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its torch.tensor(tensor) copy warning
        buffer, pe_index, theirs = [None] * BLOCKS, 0, []
        for start in range(0, padded.numel(), step):
            window = processor.process(padded[start:start + step])
            out, buffer, _, _, pe_index = release_encoder.infer(window, buffer, 0, None,
                                                                pe_index)
            theirs.append(out)
        theirs = torch.cat(theirs, 1)
        mine, lookahead = ours("release"), ours("lookahead")
    chunks = padded.numel() // step
    name = f"encoder, release streaming alignment ({chunks} chunks of {step} samples)"
    common = min(theirs.size(1), lookahead.size(1))
    return ({name: max_diff(theirs, mine)},
            max_diff(theirs[:, :common], lookahead[:, :common]))


TEXTS = ["Hello there, how are you", "Steps: 1. open the door 2. go in.", "(a) list\n\tthis*",
         "价格是3.5元、很便宜", "第一步：1. 打开", "It is 3.14 today;", "Done!", "",
         "中文（测试）结束，", "tilde~and_under`tick", "Ratio 1:  2. Wait"]


def text_parity(src: Path):
    """The release's post_process vs release_text_normalize on sample texts."""
    from espnet_freeze_omni.release.text_norm import release_text_normalize

    try:
        from models.pipeline import inferencePipeline
    except Exception as e:  # noqa: BLE001 - report and go on
        print(f"release pipeline not importable ({type(e).__name__}: {e}): text not compared")
        return None
    same = 0
    for text in TEXTS:
        theirs = inferencePipeline.post_process(None, text)
        mine = release_text_normalize(text)
        same += theirs == mine
        if theirs != mine:
            print(f"  text differs: {text!r}: release {theirs!r}, ours {mine!r}")
    return same, len(TEXTS)


def decoder_parity(LLM2TTSCodecAR, convert_decoder, gen):
    from transformers.cache_utils import DynamicCache

    from espnet_freeze_omni.speech_decoder.decoder import SpeechDecoder

    args = argparse.Namespace(
        idim=DEC_HIDDEN, odim=CODES, encoder_pre_norm_type="ln", encoder_drop_rate=0.0,
        encoder_criterion="ce", encoder_upsample_rate=1, kv_cache_prefix_finetune=1,
        transformer_attention_dim=DEC_HIDDEN, transformer_linear_units=DEC_UNITS,
        transformer_num_blocks=DEC_BLOCKS, transformer_attention_heads=DEC_HEADS,
        transformer_dropout_rate=0.1, encoder_output_dim=DEC_HIDDEN)
    release = LLM2TTSCodecAR(DEC_HIDDEN, CODES, args).eval()
    randomize(release, gen, scale=0.2)
    converted, _ = convert_decoder(release.state_dict(), Path("<release decoder>"))
    ours = SpeechDecoder(LLM_HIDDEN, vocab_size=CODES, hidden_size=DEC_HIDDEN,
                         num_heads=DEC_HEADS, intermediate_size=DEC_UNITS,
                         num_layers=DEC_BLOCKS, num_pre_layers=DEC_BLOCKS // 2,
                         use_prefix=True).eval()
    ours.load_state_dict({k[len("speech_decoder."):]: v for k, v in converted.items()},
                         strict=True)
    for group in (release.layers, release.layers_pre_nn, release.layers_prefix):
        for i, layer in enumerate(group):
            group[i] = LegacyLayer(layer)

    tokens = 5
    text = torch.randn(1, tokens, LLM_HIDDEN, generator=gen)
    prefix = torch.randn(1, tokens, LLM_HIDDEN, generator=gen)
    codes = [3, 7, 1, 12, 5]
    with torch.no_grad():
        # the release's infer(), step by step, with teacher-forced codes instead of sampling
        hid = text.reshape(1, -1, DEC_HIDDEN)
        pre = prefix.reshape(1, -1, DEC_HIDDEN)
        hid = release.pre_nn_forward(hid, [hid.size(1)])
        bos = release.embedding(torch.full((1, 1), CODES, dtype=torch.long))
        hid = torch.cat([bos, hid], dim=1)
        cache = DynamicCache()
        release.kv_cache_prefix_forward(pre, [pre.size(1)], cache)
        release.transformer_infer(hid, torch.arange(hid.size(1)), cache)
        theirs, token = [], CODES + 1
        for code in [None] + codes:
            token = CODES + 1 if code is None else code
            emb = release.embedding(torch.full((1, 1), token, dtype=torch.long))
            seen = cache.get_seq_length() - pre.size(1)
            out = release.transformer_infer(emb, torch.arange(seen, seen + 1), cache)
            theirs.append(release.out_fnn(release.norm(out))[0, -1])
        theirs = torch.stack(theirs)

        logits, our_cache, position = ours.prefill(text, prefix)
        mine = [logits[0]]
        for code in codes:
            mine.append(ours.step(torch.tensor([[code]]), position, our_cache)[0])
            position += 1
        mine = torch.stack(mine)
    return {f"speech decoder logits ({len(codes) + 1} steps)": max_diff(theirs, mine)}


# the release's codec/model.json architecture (HiFi-GAN v1 sizes, 8 * 5 * 5 * 3 = 600), a
# tiny one whose second stage has an odd kernel - rate (one extra sample, trimmed by ours; two
# stages: the release's Encoder cannot run it, so no encoder there) and a tiny 4-stage one
# with an odd kernel - rate whose encoder makes fewer frames than samples / 24
CODEC_CONFIGS = {
    "release sizes": dict(upsample_rates=[8, 5, 5, 3], upsample_kernel_sizes=[16, 11, 11, 5],
                          upsample_initial_channel=512, resblock_kernel_sizes=[3, 7, 11],
                          resblock_dilation_sizes=[[1, 3, 5]] * 3, tokens=25),
    "tiny, odd k-u": dict(upsample_rates=[4, 3], upsample_kernel_sizes=[8, 4],
                          upsample_initial_channel=256, resblock_kernel_sizes=[3, 5],
                          resblock_dilation_sizes=[[1, 2, 1], [1, 1, 1]], tokens=40),
    "tiny 4 stages, odd k-u": dict(upsample_rates=[2, 2, 3, 2],
                                   upsample_kernel_sizes=[4, 3, 3, 4],
                                   upsample_initial_channel=256, resblock_kernel_sizes=[3, 5],
                                   resblock_dilation_sizes=[[1, 2, 1], [1, 1, 1]], tokens=40),
}
ENCODE_SECONDS = 2.0


def codec_parity(src: Path, gen: torch.Generator):
    import json

    from espnet_freeze_omni.codec.ticodec import TiCodec
    from espnet_freeze_omni.release.convert import convert_codec

    try:
        from models.decoder.ticodec.models import Encoder, Generator, Quantizer
        from models.decoder.ticodec.vqvae import VQVAE, AttrDict
    except Exception as e:  # noqa: BLE001 - report and go on without the codec
        print(f"release codec not importable: {type(e).__name__}: {e}")
        return {}
    results = {}
    for name, sizes in CODEC_CONFIGS.items():
        sizes = dict(sizes)
        num_tokens = sizes.pop("tokens")
        h = AttrDict(resblock="1", n_codes=1024, n_code_groups=1, residul_layer=1,
                     global_code_num=8, global_feature_conv=[128, 64, 128, 3, 1],
                     codebook_loss_lambda=1.0, commitment_loss_lambda=0.25,
                     sampling_rate=24000,
                     global_tokens=[int(t) for t in torch.randint(0, 1024, (8,), generator=gen)],
                     **sizes)
        encodes = len(sizes["upsample_rates"]) == 4  # the release's Encoder needs 32 * 2^4
        parts = {"generator": Generator(h), "quantizer": Quantizer(h)}
        if encodes:
            parts["encoder"] = Encoder(h)
        for part in parts.values():
            randomize(part, gen)
            with torch.no_grad():  # weight-norm gains near 1: a signal that neither dies out
                for pname, p in part.named_parameters():  # nor saturates the tanh
                    if pname.endswith("weight_g"):
                        p.copy_(1 + torch.randn(p.shape, generator=gen) * 0.1)
                for bname, b in part.named_buffers():  # BatchNorm statistics that matter
                    if bname.endswith("running_mean"):
                        b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
                    elif bname.endswith("running_var"):
                        b.copy_(0.5 + torch.rand(b.shape, generator=gen))
        wav = None
        if encodes:
            # a waveform with some structure (two chirps + noise), whole tokens long; codebooks
            # spread like the encoder's outputs on it, so the picks are not all one row
            spt = int(np.prod(sizes["upsample_rates"]))
            n = int(ENCODE_SECONDS * 24000) // spt * spt
            t = torch.arange(n, dtype=torch.float32) / 24000
            wav = (0.3 * torch.sin(2 * np.pi * (200 + 300 * t) * t)
                   + 0.2 * torch.sin(2 * np.pi * (1500 - 400 * t) * t)
                   + 0.05 * torch.randn(n, generator=gen))[None]
            with torch.no_grad():
                feats, global_vec = parts["encoder"].eval()(wav[:, None])
                quantizer = parts["quantizer"]
                books = [(quantizer.quantizer_modules[0], feats)] + [
                    (m, global_vec) for m in quantizer.quantizer_modules_globaltokens]
                for book, ref in books:
                    w = book.embedding.weight
                    w.copy_(ref.mean() + ref.std() * torch.randn(w.shape, generator=gen))
                # the local rows: frames of the encoder output plus noise, near real outputs
                frames = feats[0].t()
                pick = torch.randint(0, frames.size(0), (w.size(0),), generator=gen)
                local_book = quantizer.quantizer_modules[0].embedding.weight
                local_book.copy_(frames[pick] + 0.5 * frames.std(0) * torch.randn(
                    local_book.shape, generator=gen))
        with tempfile.TemporaryDirectory() as tmp:
            codec_dir = Path(tmp) / "codec"
            codec_dir.mkdir()
            (codec_dir / "model.json").write_text(json.dumps(h))
            torch.save({k: v.state_dict() for k, v in parts.items()}, codec_dir / "final.pt")
            with contextlib.redirect_stdout(None):  # its remove_weight_norm prints
                release = VQVAE(str(codec_dir / "model.json"), str(codec_dir / "final.pt"),
                                with_encoder=encodes).eval()
                release.generator.remove_weight_norm()
                if encodes:
                    release.encoder.remove_weight_norm()  # as llm2tts does
            conf, state, _, _ = convert_codec(codec_dir / "model.json", codec_dir / "final.pt")
        ours = TiCodec(conf, state)
        tokens = torch.randint(0, 1024, (num_tokens,), generator=gen)
        with torch.no_grad():
            theirs = release(tokens[None, :, None],
                             torch.tensor(h.global_tokens)[None, None])[0, 0]
        mine = torch.from_numpy(ours.decode(tokens.numpy()))
        extra = theirs.numel() - mine.numel()
        key = (f"codec PCM, {name} ({num_tokens} tokens, {mine.numel()} samples"
               + (f", release +{extra} trimmed" if extra else "") + ")")
        results[key] = max_diff(theirs[:mine.numel()], mine)
        print(f"  codec {name}: PCM rms {float(mine.pow(2).mean().sqrt()):.3f}, "
              f"context_tokens {ours.context_tokens}")
        if encodes:
            results.update(encode_parity(name, release, ours, wav))
    return results


def encode_parity(name: str, release, ours, wav: torch.Tensor):
    """The release's VQVAE.encode (and its Encoder's continuous output) vs ours on `wav`."""
    with torch.no_grad():
        feats, global_vec = release.encoder(wav[:, None])
        local, glob = release.encode(wav)  # (1, T, 1), (1, 1, global_code_num)
        mine_local, mine_glob, mine_feats = ours.model.encode(wav)
        mine_vec = ours.model.encoder(wav)[1]
    local, glob = local[..., 0], glob[:, 0]
    same = int((local == mine_local).sum())
    tag = f"{name}, {wav.size(1)} samples -> {local.size(1)} frames"
    print(f"  codec encode {tag}: local tokens {same}/{local.numel()} equal "
          f"({len(set(local.flatten().tolist()))} distinct ids), global tokens "
          f"{'equal' if torch.equal(glob, mine_glob) else 'DIFFER'} "
          f"({glob.flatten().tolist()} / {mine_glob.flatten().tolist()})")
    # ours through AbsCodec.encode: n = samples / spt tokens (zeros appended if short)
    via_codec = ours.encode(wav[0].numpy(), 24000)
    common = min(len(via_codec), local.size(1))
    print(f"  codec encode {name}: TiCodec.encode gives {len(via_codec)} tokens, "
          f"{int((torch.from_numpy(via_codec[:common]) == local[0, :common]).sum())}/{common} "
          "equal to the release's")
    return {f"codec encoder output, {tag}": max_diff(feats, mine_feats),
            f"codec global vector, {name}": max_diff(global_vec, mine_vec),
            f"codec local token mismatches, {name}": float(local.numel() - same),
            f"codec global token mismatches, {name}": float((glob != mine_glob).sum())}


if __name__ == "__main__":
    sys.exit(main())
