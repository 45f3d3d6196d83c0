"""Backend A: a codec trained with espnet's own gan_codec task (e.g. SoundStream).

`conf/codec_soundstream_paper.yaml` configures SoundStream for the paper's token interface:
strides 8*5*5*3 = 600 samples per token at 24 kHz (40 Hz) and a single 1024-entry codebook
(quantizer_n_q 1). Train it with `python -m espnet2.bin.gan_codec_train --config ...`; this
class loads the result through `espnet2.bin.gan_codec_inference.AudioCoding`.
"""
from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np
import torch

from espnet_freeze_omni.codec.abs_codec import AbsCodec


class EspnetGanCodec(AbsCodec):
    """AbsCodec over an espnet gan_codec model (train_config + model_file)."""

    # SEANet encoder/decoder with LSTMs and non-causal convolutions: a token's audio can depend
    # on tokens arbitrarily far away, so streamed packets only approximate offline decoding
    context_tokens: Optional[int] = None

    @classmethod
    def from_config(cls, **conf) -> "EspnetGanCodec":
        missing = [k for k in ("model_file", "train_config") if k not in conf]
        if missing:
            raise ValueError(f"espnet_gan_codec config lacks {missing}")
        return cls(**conf)

    def __init__(self, model_file: Union[str, os.PathLike],
                 train_config: Union[str, os.PathLike], device: str = "cpu",
                 dtype: str = "float32"):
        from espnet2.bin.gan_codec_inference import AudioCoding

        self.coder = AudioCoding(train_config=str(train_config), model_file=str(model_file),
                                 device=device, dtype=dtype)
        self.device = device
        self.dtype = getattr(torch, dtype)
        meta = self.coder.model.meta_info()
        if meta["num_streams"] != 1:
            raise ValueError(
                f"{train_config}: the codec has {meta['num_streams']} codebooks; Freeze-Omni's "
                "speech decoder predicts one stream (set quantizer_n_q: 1)"
            )
        self.sample_rate = int(meta["fs"])
        self.samples_per_token = int(meta["frame_shift"])
        self.vocab_size = int(meta["code_size_per_stream"][0])

    @torch.no_grad()
    def _encode(self, wav: np.ndarray) -> np.ndarray:
        audio = torch.from_numpy(wav).to(self.device, self.dtype)
        codes = self.coder(audio, encode_only=True)["codes"]  # (n_q, batch, T)
        tokens = codes[0, 0].cpu().numpy()
        expected = len(wav) // self.samples_per_token
        if len(tokens) < expected:
            raise RuntimeError(f"codec gave {len(tokens)} tokens for {expected} frames")
        return tokens[:expected]

    @torch.no_grad()
    def _decode(self, tokens: np.ndarray) -> np.ndarray:
        codes = torch.from_numpy(tokens).view(1, 1, -1).to(self.device)
        # SEANet's transposed convolutions give exactly T * hop samples (AbsCodec checks)
        return self.coder.decode(codes)["resyn_audio"].reshape(-1).float().cpu().numpy()
