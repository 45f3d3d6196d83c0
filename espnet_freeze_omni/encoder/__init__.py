"""Streaming speech encoder of Freeze-Omni."""
from espnet_freeze_omni.encoder.streaming_encoder import (
    StreamingChunkEncoder,
    StreamingState,
    chunk_attention_mask,
)

__all__ = ["StreamingChunkEncoder", "StreamingState", "chunk_attention_mask"]
