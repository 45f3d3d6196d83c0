"""The release's parameter names and ours (RELEASE.md §2-3), as pure functions of a key.

``audio_llm_target(key)`` / ``decoder_target(key)`` give our name for a release key, DROP
for a key that is deliberately left out, or None for a key we do not know (an error in
the converter: every tensor of the release must land somewhere).
"""
from __future__ import annotations

import re
from typing import Optional

DROP = "<drop>"

# audiollm/final.pt -> the speech-input model (SpokenDialogModel)
_AUDIO_LLM_RULES = (
    # the release's frozen LLM, when saved with the model: ours is loaded from --llm_path
    (r"llm_decoder\..*", DROP),
    (r"encoder\.enc\.0\.core\.conv\.([02])\.(weight|bias)", r"encoder.embed.conv.\1.\2"),
    (r"encoder\.enc\.0\.core\.out\.0\.(weight|bias)", r"encoder.embed.out.0.\1"),
    # Transformer.embed = Linear, LayerNorm, Dropout, ReLU (transformer-input-layer: linear)
    (r"encoder\.enc\.1\.embed\.([01])\.(weight|bias)", r"encoder.input_layer.\1.\2"),
    (r"encoder\.enc\.1\.encoders\.(\d+)\.self_attn\.linear_(q|k|v|out)\.(weight|bias)",
     r"encoder.encoders.\1.self_attn.linear_\2.\3"),
    (r"encoder\.enc\.1\.encoders\.(\d+)\.self_attn\.linear_pos\.weight",
     r"encoder.encoders.\1.self_attn.linear_pos.weight"),
    (r"encoder\.enc\.1\.encoders\.(\d+)\.self_attn\.pos_bias_(u|v)",
     r"encoder.encoders.\1.self_attn.pos_bias_\2"),
    (r"encoder\.enc\.1\.encoders\.(\d+)\.feed_forward\.w_([12])\.(weight|bias)",
     r"encoder.encoders.\1.feed_forward.w_\2.\3"),
    (r"encoder\.enc\.1\.encoders\.(\d+)\.norm([12])\.(weight|bias)",
     r"encoder.encoders.\1.norm\2.\3"),
    (r"encoder\.enc\.1\.after_norm\.(weight|bias)", r"encoder.after_norm.\1"),
    # CNNSubsampling with one conv (norm: layer, activation: gelu)
    (r"adpter\.conv1d2\.(weight|bias)", r"adapter.conv1d2.\1"),
    (r"adpter\.bn2\.(weight|bias)", r"adapter.bn2.\1"),
    (r"adpter\.project\.(weight|bias)", r"adapter.project.\1"),
    (r"task_embeddings\.weight", "task_embeddings.weight"),
    (r"prompt_embeddings\.weight", "prompt_embeddings.weight"),
    (r"predictor_head\.(weight|bias)", r"predictor_head.\1"),
)
# handled by the converter itself (they become normalize.mean / normalize.std + stats npz)
CMVN_KEYS = ("encoder.global_cmvn.mean", "encoder.global_cmvn.istd")

# decoder/final.pt -> the speech-output model's speech_decoder
_DECODER_RULES = (
    (r"embedding\.weight", "speech_decoder.embedding.weight"),
    (r"(layers|layers_pre_nn|layers_prefix)\.(\d+)\.(self_attn\.[qkvo]_proj\.weight|"
     r"mlp\.(gate|up|down)_proj\.weight|input_layernorm\.weight|"
     r"post_attention_layernorm\.weight)", r"speech_decoder.\1.\2.\3"),
    (r"norm\.weight", "speech_decoder.norm.weight"),
    (r"out_fnn\.(weight|bias)", r"speech_decoder.out_fnn.\1"),
)
# RoPE inverse frequencies (non-persistent in recent transformers, saved by older ones):
# checked against theta 1e4 by the converter, then dropped (ours are computed)
ROPE_KEY = re.compile(r"rotary_emb(_pre_nn|_prefix)?\.inv_freq")


def _apply(rules, key: str) -> Optional[str]:
    for pattern, target in rules:
        match = re.fullmatch(pattern, key)
        if match:
            return target if target == DROP else match.expand(target)
    return None


def audio_llm_target(key: str) -> Optional[str]:
    """Our speech-input model's key for a release audiollm/final.pt key (DROP, or None)."""
    return _apply(_AUDIO_LLM_RULES, key)


def decoder_target(key: str) -> Optional[str]:
    """Our speech-output model's key for a release decoder/final.pt key (None: unknown)."""
    return _apply(_DECODER_RULES, key)


def audio_llm_source(target: str) -> Optional[str]:
    """The release key our speech-input `target` comes from (for "missing" messages)."""
    inverse = (
        (r"encoder\.embed\.(.*)", r"encoder.enc.0.core.\1"),
        (r"encoder\.input_layer\.(.*)", r"encoder.enc.1.embed.\1"),
        (r"encoder\.encoders\.(.*)", r"encoder.enc.1.encoders.\1"),
        (r"encoder\.after_norm\.(.*)", r"encoder.enc.1.after_norm.\1"),
        (r"adapter\.(.*)", r"adpter.\1"),
        (r"normalize\.(mean|std)", r"encoder.global_cmvn.\1"),
        (r"(task_embeddings|prompt_embeddings|predictor_head)\.(.*)", r"\1.\2"),
    )
    return _apply(inverse, target)


# codec/final.pt ({'generator': sd, 'quantizer': sd, 'encoder': sd}, flattened to
# "<group>.<key>") -> our TiCodecModel (codec/ticodec.py). weight_g / weight_v keep their
# suffix here: the converter folds each pair into the plain `.weight`.
_CODEC_RULES = (
    (r"generator\.(conv_pre|conv_post|ups\.\d+|resblocks\.\d+\.convs[12]?\.\d+)\."
     r"(weight_g|weight_v|weight|bias)", r"generator.\1.\2"),
    (r"quantizer\.quantizer_modules\.0\.embedding\.weight", "quantizer.codebook.weight"),
    (r"quantizer\.quantizer_modules_globaltokens\.(\d+)\.embedding\.weight",
     r"quantizer.global_codebooks.\1.weight"),
    # Encoder (weight-normed convs; GroupNorms and conv_post plain) + its GlobalTokenEncoder
    (r"encoder\.(conv_pre|conv_post|ups\.\d+|resblocks\.\d+\.convs[12]?\.\d+)\."
     r"(weight_g|weight_v|weight|bias)", r"encoder.\1.\2"),
    (r"encoder\.normalize\.(\d+)\.(weight|bias)", r"encoder.normalize.\1.\2"),
    (r"encoder\.GlobalTokenEncoder\.(conv\.[024]\.weight|fn\.0\.(?:weight|bias)"
     r"|fn\.2\.(?:weight|bias|running_mean|running_var|num_batches_tracked))",
     r"encoder.global_encoder.\1"),
    # Encoder.linear (Linear 128 -> 128, LeakyReLU): built but never called by its forward
    (r"encoder\.linear\.0\.(weight|bias)", DROP),
)


def codec_target(key: str) -> Optional[str]:
    """Our TiCodecModel key for a flattened release codec key (DROP, or None: unknown)."""
    return _apply(_CODEC_RULES, key)


def codec_source(target: str) -> Optional[str]:
    """The release codec key(s) our TiCodecModel `target` comes from (for messages)."""
    inverse = (
        (r"generator\.(.*)\.weight", r"generator.\1.weight_g/weight_v"),
        (r"generator\.(.*)", r"generator.\1"),
        (r"quantizer\.codebook\.weight", "quantizer.quantizer_modules.0.embedding.weight"),
        (r"quantizer\.global_codebooks\.(\d+)\.weight",
         r"quantizer.quantizer_modules_globaltokens.\1.embedding.weight"),
        (r"encoder\.global_encoder\.(.*)", r"encoder.GlobalTokenEncoder.\1"),
        (r"encoder\.(conv_post|normalize\.\d+)\.(.*)", r"encoder.\1.\2"),
        (r"encoder\.(.*)\.weight", r"encoder.\1.weight_g/weight_v"),
        (r"encoder\.(.*)", r"encoder.\1"),
    )
    return _apply(inverse, target)
