"""Freeze-Omni speech decoder: frozen-LLM text embeddings + hidden states -> codec tokens."""
from espnet_freeze_omni.speech_decoder.decoder import SpeechDecoder, build_decoder_attention_mask

__all__ = ["SpeechDecoder", "build_decoder_attention_mask"]
