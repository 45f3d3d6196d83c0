"""TiCodec decoding: the codec of the authors' Freeze-Omni release, behind AbsCodec.

The release's `codec/` (TiCodec: "time-invariant" codec) turns one stream of local tokens
plus a fixed set of global tokens into 24 kHz audio. This module is written from the
architecture (docs/release_import.md), not from the release's code:

    tokens (T,) --local codebook--> (embed_dim=512, T)
      --conv_pre (k 7)--> C0 channels
      for each stage i (rate u_i, kernel k_i):
          LeakyReLU(0.1) -> ConvTranspose1d(C_i -> C_i/2, k_i, stride u_i, padding (k_i-u_i)//2)
          -> mean over the multi-receptive-field residual blocks
          -> + the global embedding when the stage has as many channels as it (128)
      --LeakyReLU(0.1), conv_post (k 7) -> 1 channel, tanh--> (T * prod(u_i),) samples

The global embedding is the concatenation of one row of each of the `global_code_num`
global codebooks (128 / global_code_num wide each), picked by `global_tokens` of the
release's codec/model.json: a fixed voice. A residual block of type "1" runs, for each
dilation d, x += conv_d1(lrelu(conv_dd(lrelu(x)))); type "2" runs x += conv_dd(lrelu(x)).

The release wraps every convolution in weight_norm; release/convert.py folds those into
plain weights (w = g * v / ||v||), so the modules here hold ordinary Conv1d weights.

Encoding (when the converted checkpoint had the release's `encoder`, i.e. the config has
`global_feature_conv`) mirrors the generator:

    wav (L,) in [-1, 1] at 24 kHz --conv_pre (1 -> 32, k 7)-->
      for each stage i of the *reversed* (rate, kernel) list, channels 32*2^i -> 32*2^(i+1):
          LeakyReLU(0.1) -> Conv1d(k_i, stride u_i, padding (k_i-u_i)//2)
          -> residual blocks (kernels/dilations reversed), each followed by a GroupNorm
             (channels/16 groups, eps 1e-6) applied to the running *sum* of the blocks so far,
             then divided by the number of blocks
          -> after stage n//2 - 1 (128 channels): the GlobalTokenEncoder reads this map:
             3 x (Conv1d without bias, LeakyReLU 0.1) -> mean over time
             -> Linear, LeakyReLU 0.1, BatchNorm1d (running statistics: eval mode)
      --LeakyReLU (slope 0.01, torch's default), conv_post (k 3) -> 512 channels-->
    local tokens: nearest row (squared Euclidean, first on ties) of the local codebook
    global tokens: the 128-wide global vector split into `global_code_num` pieces, each
    matched against its own global codebook (not the local one).

**Encoding is utterance-global**: GroupNorm normalizes over the whole utterance and the
global encoder mean-pools over it, so a token depends on all of the audio given (and on the
zeros `AbsCodec.encode` pads to a whole token), not only on its neighbourhood. Encode each
utterance in one call; chunked encoding gives other tokens. The release's `Encoder.linear`
(Linear 128 -> 128) is never used by its forward pass and is not converted.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from espnet_freeze_omni.codec.abs_codec import AbsCodec

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "ticodec.pth"
LRELU_SLOPE = 0.1
PRE_POST_KERNEL = 7  # conv_pre and conv_post
# fixed in the release's code (not in model.json): the local codebook / conv_pre input
# width and the width of the global embedding
RELEASE_EMBED_DIM = 512
RELEASE_GLOBAL_DIM = 128
ENCODER_BASE_CHANNELS = 32  # the encoder's conv_pre width, fixed in the release's code
ENCODER_PRE_KERNEL, ENCODER_POST_KERNEL = 7, 3
GROUPNORM_CHANNELS, GROUPNORM_EPS = 16, 1e-6  # GroupNorm(channels // 16, channels, eps)


@dataclasses.dataclass
class TiCodecConfig:
    """The decoding side of a TiCodec model.json."""

    upsample_rates: List[int]
    upsample_kernel_sizes: List[int]
    upsample_initial_channel: int
    resblock_kernel_sizes: List[int]
    resblock_dilation_sizes: List[List[int]]
    n_codes: int
    global_code_num: int
    global_tokens: List[int]
    resblock: str = "1"
    sample_rate: int = 24000
    embed_dim: int = RELEASE_EMBED_DIM
    global_dim: int = RELEASE_GLOBAL_DIM
    # [in, hidden, out, kernel, stride] of the GlobalTokenEncoder; None: no encoder (decode only)
    global_feature_conv: Optional[List[int]] = None

    @property
    def can_encode(self) -> bool:
        return self.global_feature_conv is not None

    def encoder_channels(self, stage: int) -> int:
        """Encoder channels after its downsampling stage `stage` (-1: after conv_pre)."""
        return ENCODER_BASE_CHANNELS * 2 ** (stage + 1)

    @property
    def encoder_global_stage(self) -> int:
        """The encoder stage whose output feeds the GlobalTokenEncoder."""
        return len(self.upsample_rates) // 2 - 1

    def encoder_frames(self, num_samples: int) -> int:
        """Frames the encoder makes of `num_samples` samples (fewer than
        num_samples / samples_per_token when a stage has an odd kernel - rate)."""
        frames = num_samples
        for u, k in reversed(list(zip(self.upsample_rates, self.upsample_kernel_sizes))):
            frames = (frames + 2 * ((k - u) // 2) - k) // u + 1
        return max(frames, 0)

    @property
    def samples_per_token(self) -> int:
        return int(np.prod(self.upsample_rates))

    def channels(self, stage: int) -> int:
        """Channels after upsampling stage `stage` (-1: after conv_pre)."""
        return self.upsample_initial_channel // (2 ** (stage + 1))

    @property
    def global_stage(self) -> Optional[int]:
        """The stage whose output gets the global embedding (None: no stage is that wide)."""
        for i in range(len(self.upsample_rates)):
            if self.channels(i) == self.global_dim:
                return i
        return None

    def validate(self, where: str = "TiCodec config") -> "TiCodecConfig":
        def bad(key, why):
            raise ValueError(f"{where}: {key} {why}")

        if len(self.upsample_rates) != len(self.upsample_kernel_sizes) or not self.upsample_rates:
            bad("upsample_kernel_sizes", f"{self.upsample_kernel_sizes} must pair with "
                                         f"upsample_rates {self.upsample_rates}")
        for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes):
            if u < 1 or k < u:
                bad("upsample_kernel_sizes", f"{self.upsample_kernel_sizes}: each kernel must "
                                             f"be >= its rate ({self.upsample_rates})")
        if self.channels(len(self.upsample_rates) - 1) < 1:
            bad("upsample_initial_channel", f"{self.upsample_initial_channel} is too small to "
                                            f"halve {len(self.upsample_rates)} times")
        if self.resblock not in ("1", "2"):
            bad("resblock", f"is {self.resblock!r}: '1' or '2'")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes) \
                or not self.resblock_kernel_sizes:
            bad("resblock_dilation_sizes", "must pair with resblock_kernel_sizes")
        wanted = 3 if self.resblock == "1" else 2
        for d in self.resblock_dilation_sizes:
            if len(d) != wanted:
                bad("resblock_dilation_sizes", f"{self.resblock_dilation_sizes}: resblock "
                                               f"{self.resblock} takes {wanted} dilations each")
        if self.global_code_num < 1 or self.global_dim % self.global_code_num:
            bad("global_code_num", f"{self.global_code_num} must divide {self.global_dim}")
        if len(self.global_tokens) != self.global_code_num:
            bad("global_tokens", f"has {len(self.global_tokens)} entries, global_code_num is "
                                 f"{self.global_code_num}")
        outside = [t for t in self.global_tokens if not 0 <= t < self.n_codes]
        if outside:
            bad("global_tokens", f"{outside} outside [0, n_codes={self.n_codes})")
        if self.global_feature_conv is not None:
            self._validate_encoder(bad)
        return self

    def _validate_encoder(self, bad) -> None:
        gfc = self.global_feature_conv
        if len(gfc) != 5 or any(int(v) < 1 for v in gfc):
            bad("global_feature_conv", f"{gfc}: five positive ints [in, hidden, out, kernel, "
                                       "stride]")
        stages = len(self.upsample_rates)
        if stages < 2 or self.encoder_channels(stages - 1) != self.embed_dim:
            bad("upsample_rates", f"{self.upsample_rates}: the release's Encoder doubles 32 "
                                  f"channels per stage into a fixed {self.embed_dim}-channel "
                                  f"conv_post, so it encodes only with "
                                  f"{int(np.log2(self.embed_dim // ENCODER_BASE_CHANNELS))} "
                                  "stages")
        width = self.encoder_channels(self.encoder_global_stage)
        if gfc[0] != width:
            bad("global_feature_conv", f"{gfc}: its input width must be {width} (the encoder's "
                                       f"channels after stage {self.encoder_global_stage})")
        if gfc[2] != self.global_dim:
            bad("global_feature_conv", f"{gfc}: its output width must be {self.global_dim} "
                                       "(the global codebooks')")
        if gfc[3] < gfc[4]:
            bad("global_feature_conv", f"{gfc}: kernel below stride")

    # ------------------------------------------------------------------ the release json
    @classmethod
    def from_release_json(cls, path: Union[str, os.PathLike], with_encoder: bool = False
                          ) -> "TiCodecConfig":
        """Parse the release's codec/model.json; ValueError naming the file and the key.
        `with_encoder`: also read `global_feature_conv` (the checkpoint has an encoder)."""
        import json

        path = Path(path)
        try:
            h = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not readable as JSON ({e})") from None
        if not isinstance(h, dict):
            raise ValueError(f"{path}: not a JSON object")

        def get(key, kind, default=None):
            if key not in h:
                if default is not None:
                    return default
                raise ValueError(f"{path}: missing key {key!r}")
            try:
                return kind(h[key])
            except (TypeError, ValueError):
                raise ValueError(f"{path}: key {key!r} = {h[key]!r} is not "
                                 f"{getattr(kind, '__name__', kind)}") from None

        def ints(value):
            return [int(v) for v in value]

        def int_lists(value):
            return [ints(v) for v in value]

        for key, wanted in (("n_code_groups", 1), ("residul_layer", 1)):
            value = get(key, int)
            if value != wanted:
                raise ValueError(f"{path}: {key} = {value} is not implemented (only {wanted}: "
                                 "the speech decoder predicts one token stream)")
        conf = cls(
            upsample_rates=get("upsample_rates", ints),
            upsample_kernel_sizes=get("upsample_kernel_sizes", ints),
            upsample_initial_channel=get("upsample_initial_channel", int),
            resblock_kernel_sizes=get("resblock_kernel_sizes", ints),
            resblock_dilation_sizes=get("resblock_dilation_sizes", int_lists),
            n_codes=get("n_codes", int),
            global_code_num=get("global_code_num", int),
            global_tokens=get("global_tokens", lambda v: ints(np.asarray(v).reshape(-1))),
            resblock=get("resblock", str),
            sample_rate=get("sampling_rate", int, 24000),
            global_feature_conv=get("global_feature_conv", ints) if with_encoder else None,
        )
        return conf.validate(str(path))


# ---------------------------------------------------------------------------- modules
def _same_padding(kernel: int, dilation: int = 1) -> int:
    return (kernel * dilation - dilation) // 2


class ResBlock(torch.nn.Module):
    """Residual convolutions at one kernel size: type "1" (convs1 + convs2) or "2" (convs)."""

    def __init__(self, channels: int, kernel: int, dilations: Sequence[int], kind: str = "1"):
        super().__init__()

        def conv(d):
            return torch.nn.Conv1d(channels, channels, kernel, 1, dilation=d,
                                   padding=_same_padding(kernel, d))

        self.kind = kind
        if kind == "1":
            self.convs1 = torch.nn.ModuleList([conv(d) for d in dilations])
            self.convs2 = torch.nn.ModuleList([conv(1) for _ in dilations])
        else:
            self.convs = torch.nn.ModuleList([conv(d) for d in dilations])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "1":
            for first, second in zip(self.convs1, self.convs2):
                x = x + second(F.leaky_relu(first(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        else:
            for c in self.convs:
                x = x + c(F.leaky_relu(x, LRELU_SLOPE))
        return x


class TiCodecGenerator(torch.nn.Module):
    """Codebook embeddings (B, embed_dim, T) + global embedding (B, global_dim) -> audio."""

    def __init__(self, conf: TiCodecConfig):
        super().__init__()
        self.conf = conf
        self.conv_pre = torch.nn.Conv1d(conf.embed_dim, conf.upsample_initial_channel,
                                        PRE_POST_KERNEL, 1, padding=PRE_POST_KERNEL // 2)
        self.ups = torch.nn.ModuleList()
        self.resblocks = torch.nn.ModuleList()
        for i, (u, k) in enumerate(zip(conf.upsample_rates, conf.upsample_kernel_sizes)):
            self.ups.append(torch.nn.ConvTranspose1d(conf.channels(i - 1), conf.channels(i), k, u,
                                                     padding=(k - u) // 2))
            for rk, rd in zip(conf.resblock_kernel_sizes, conf.resblock_dilation_sizes):
                self.resblocks.append(ResBlock(conf.channels(i), rk, rd, conf.resblock))
        self.conv_post = torch.nn.Conv1d(conf.channels(len(self.ups) - 1), 1, PRE_POST_KERNEL,
                                         1, padding=PRE_POST_KERNEL // 2)
        self.num_kernels = len(conf.resblock_kernel_sizes)
        self.global_stage = conf.global_stage

    def forward(self, x: torch.Tensor, global_emb: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(x)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            total = blocks[0](x)
            for block in blocks[1:]:
                total = total + block(x)
            x = total / self.num_kernels
            if i == self.global_stage:
                x = x + global_emb[:, :, None]
        return torch.tanh(self.conv_post(F.leaky_relu(x, LRELU_SLOPE)))


class GlobalFeatureEncoder(torch.nn.Module):
    """The release's GlobalTokenEncoder: (B, in, T) -> (B, out), one vector per utterance.

    `conv`: three bias-free Conv1d (kernel, stride, padding (kernel - stride) // 2), each
    followed by LeakyReLU(0.1); the time mean; `fn`: Linear, LeakyReLU(0.1), BatchNorm1d.
    The layer indices (conv.0/2/4, fn.0/2) follow the release's Sequential layout."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int, kernel: int,
                 stride: int):
        super().__init__()
        pad = (kernel - stride) // 2
        layers: List[torch.nn.Module] = []
        for c_in, c_out in ((in_channels, hidden), (hidden, hidden), (hidden, out_channels)):
            layers += [torch.nn.Conv1d(c_in, c_out, kernel, stride, pad, bias=False),
                       torch.nn.LeakyReLU(LRELU_SLOPE)]
        self.conv = torch.nn.Sequential(*layers)
        self.fn = torch.nn.Sequential(torch.nn.Linear(out_channels, out_channels),
                                      torch.nn.LeakyReLU(LRELU_SLOPE),
                                      torch.nn.BatchNorm1d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.conv(x).mean(dim=2))


class TiCodecEncoder(torch.nn.Module):
    """wav (B, L) -> continuous local features (B, embed_dim, T) and the global vector
    (B, global_dim). Utterance-global: GroupNorm and the global encoder's mean see all of
    the input (see the module docstring for the layout)."""

    def __init__(self, conf: TiCodecConfig):
        super().__init__()
        self.conf = conf
        stages = list(reversed(list(zip(conf.upsample_rates, conf.upsample_kernel_sizes))))
        blocks = list(reversed(list(zip(conf.resblock_kernel_sizes,
                                        conf.resblock_dilation_sizes))))
        self.conv_pre = torch.nn.Conv1d(1, ENCODER_BASE_CHANNELS, ENCODER_PRE_KERNEL, 1,
                                        padding=ENCODER_PRE_KERNEL // 2)
        self.ups = torch.nn.ModuleList()  # downsampling convs; named as in the release
        self.resblocks = torch.nn.ModuleList()
        self.normalize = torch.nn.ModuleList()
        for i, (u, k) in enumerate(stages):
            ch = conf.encoder_channels(i)
            self.ups.append(torch.nn.Conv1d(conf.encoder_channels(i - 1), ch, k, u,
                                            padding=(k - u) // 2))
            for rk, rd in blocks:
                self.resblocks.append(ResBlock(ch, rk, rd, conf.resblock))
                self.normalize.append(torch.nn.GroupNorm(ch // GROUPNORM_CHANNELS, ch,
                                                         eps=GROUPNORM_EPS))
        self.conv_post = torch.nn.Conv1d(conf.encoder_channels(len(stages) - 1), conf.embed_dim,
                                         ENCODER_POST_KERNEL, 1,
                                         padding=ENCODER_POST_KERNEL // 2)
        self.global_encoder = GlobalFeatureEncoder(*conf.global_feature_conv)
        self.num_kernels = len(blocks)
        self.global_stage = conf.encoder_global_stage

    def forward(self, wav: torch.Tensor):
        x = self.conv_pre(wav[:, None])
        global_vec = None
        for i, down in enumerate(self.ups):
            x = down(F.leaky_relu(x, LRELU_SLOPE))
            total = None
            for j in range(i * self.num_kernels, (i + 1) * self.num_kernels):
                y = self.resblocks[j](x)
                total = self.normalize[j](y if total is None else total + y)
            x = total / self.num_kernels
            if i == self.global_stage:
                global_vec = self.global_encoder(x)
        # the release ends with torch's default slope (0.01) here, not LRELU_SLOPE
        return self.conv_post(F.leaky_relu(x)), global_vec


def nearest_rows(x: torch.Tensor, book: torch.Tensor) -> torch.Tensor:
    """(N, D) vectors -> (N,) index of the closest row of `book` (V, D) in squared Euclidean
    distance, |x|^2 + |e|^2 - 2 x.e evaluated in that order; the first index on ties."""
    dist = x.pow(2).sum(dim=1, keepdim=True) + book.pow(2).sum(dim=1)
    dist = dist - 2 * torch.matmul(x, book.t())
    return dist.argmin(dim=1)


class TiCodecQuantizer(torch.nn.Module):
    """The codebook lookups: one local codebook and `global_code_num` global ones."""

    def __init__(self, conf: TiCodecConfig):
        super().__init__()
        self.codebook = torch.nn.Embedding(conf.n_codes, conf.embed_dim)
        self.global_codebooks = torch.nn.ModuleList(
            torch.nn.Embedding(conf.n_codes, conf.global_dim // conf.global_code_num)
            for _ in range(conf.global_code_num))

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) local tokens -> (B, embed_dim, T)."""
        return self.codebook(tokens).transpose(1, 2)

    def embed_global(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, global_code_num) global tokens -> (B, global_dim)."""
        return torch.cat([book(tokens[:, j]) for j, book in enumerate(self.global_codebooks)],
                         dim=-1)

    def quantize(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, embed_dim, T) continuous features -> (B, T) local tokens."""
        b, d, t = feats.shape
        flat = feats.transpose(1, 2).reshape(b * t, d)
        return nearest_rows(flat, self.codebook.weight).reshape(b, t)

    def quantize_global(self, vec: torch.Tensor) -> torch.Tensor:
        """(B, global_dim) -> (B, global_code_num): piece j against global codebook j."""
        width = vec.size(1) // len(self.global_codebooks)
        return torch.stack([nearest_rows(vec[:, j * width:(j + 1) * width], book.weight)
                            for j, book in enumerate(self.global_codebooks)], dim=1)


class TiCodecModel(torch.nn.Module):
    """generator.* + quantizer.*: tokens -> waveform."""

    def __init__(self, conf: TiCodecConfig):
        super().__init__()
        self.conf = conf.validate()
        self.generator = TiCodecGenerator(conf)
        self.quantizer = TiCodecQuantizer(conf)
        self.encoder = TiCodecEncoder(conf) if conf.can_encode else None
        self.register_buffer("global_tokens", torch.tensor(conf.global_tokens, dtype=torch.long),
                             persistent=False)

    def forward(self, tokens: torch.Tensor, global_tokens: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
        """(B, T) tokens -> (B, T * samples_per_token) audio (the tail past that trimmed)."""
        if global_tokens is None:
            global_tokens = self.global_tokens[None].expand(tokens.size(0), -1)
        wav = self.generator(self.quantizer.embed(tokens),
                             self.quantizer.embed_global(global_tokens))[:, 0]
        # a stage whose kernel - rate is odd adds one sample at the end
        return wav[:, :tokens.size(1) * self.conf.samples_per_token]

    def encode(self, wav: torch.Tensor):
        """(B, L) audio in [-1, 1] -> (local tokens (B, T), global tokens (B, global_code_num),
        continuous features (B, embed_dim, T)), T = conf.encoder_frames(L). Utterance-global
        (GroupNorm, mean pooling): every token depends on all of `wav`."""
        if self.encoder is None:
            raise NotImplementedError(
                "this TiCodec has no encoder (the converted checkpoint had no 'encoder' "
                "entry, or the codec was packed before encoding was implemented): it only "
                "decodes")
        feats, global_vec = self.encoder(wav)
        return (self.quantizer.quantize(feats), self.quantizer.quantize_global(global_vec),
                feats)


def token_reach(conf: TiCodecConfig) -> int:
    """Tokens either side of a token that can change its audio: the support of an impulse
    sent through the generator's convolutions with all-positive kernels (no cancellation),
    so exactly the structural receptive field in tokens."""
    spt = conf.samples_per_token
    half = 16
    while True:
        n = 2 * half + 1
        x = torch.zeros(1, 1, n, dtype=torch.float64)
        x[..., half] = 1.0

        def conv(y, k, d=1):
            out = F.conv1d(y, torch.ones(1, 1, k, dtype=y.dtype), dilation=d,
                           padding=_same_padding(k, d))
            return (out > 0).to(y.dtype)

        x = conv(x, PRE_POST_KERNEL)
        for u, k in zip(conf.upsample_rates, conf.upsample_kernel_sizes):
            x = F.conv_transpose1d(x, torch.ones(1, 1, k, dtype=x.dtype), stride=u,
                                   padding=(k - u) // 2)
            x = (x > 0).to(x.dtype)
            total = torch.zeros_like(x)
            for rk, rd in zip(conf.resblock_kernel_sizes, conf.resblock_dilation_sizes):
                y = x
                for d in rd:
                    step = conv(y, rk, d)
                    if conf.resblock == "1":
                        step = conv(step, rk)
                    y = ((y + step) > 0).to(y.dtype)
                total = total + y
            x = (total > 0).to(x.dtype)
        x = conv(x, PRE_POST_KERNEL)[0, 0, :n * spt]
        hit = torch.nonzero(x).flatten() // spt
        reach = int(max(half - int(hit.min()), int(hit.max()) - half))
        if reach < half:
            return reach
        half *= 2


# ---------------------------------------------------------------------------- the codec
class TiCodec(AbsCodec):
    """AbsCodec with TiCodec (a dir of config.yaml + ticodec.pth, as the release importer
    writes it). Decoding uses the config's fixed global tokens (a fixed voice); encoding
    (when the config has `global_feature_conv`) gives the release's local tokens, and
    `encode_global` the utterance's global tokens. Encoding is utterance-global (GroupNorm,
    mean pooling): give `encode` one whole utterance."""

    def __init__(self, conf: TiCodecConfig, state_dict: Optional[Dict[str, torch.Tensor]] = None,
                 device: str = "cpu", dtype: str = "float32"):
        self.conf = conf.validate()
        self.model = TiCodecModel(conf)
        if state_dict is not None:
            self.model.load_state_dict(state_dict, strict=True)
        self.device = device
        self.model.to(device=device, dtype=getattr(torch, dtype)).eval()
        self.sample_rate = conf.sample_rate
        self.samples_per_token = conf.samples_per_token
        self.vocab_size = conf.n_codes
        self._reach: Optional[int] = None

    @property
    def context_tokens(self) -> int:
        """Tokens either side that can change a token's audio (token_reach of the config)."""
        if self._reach is None:
            self._reach = token_reach(self.conf)
        return self._reach

    @torch.no_grad()
    def _decode(self, tokens: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(tokens).to(self.device)[None]
        return self.model(x)[0].float().cpu().numpy()

    @property
    def can_encode(self) -> bool:
        return self.model.encoder is not None

    @torch.no_grad()
    def _encode_both(self, wav: np.ndarray):
        """wav (n * samples_per_token,) -> (n local tokens, global tokens). When a stage has
        an odd kernel - rate the encoder makes fewer frames than n (the release returns
        those); here zeros are appended until it makes n and the rest is cut."""
        n = len(wav) // self.samples_per_token
        pad = 0
        while self.conf.encoder_frames(len(wav) + pad) < n:
            pad += self.samples_per_token
        x = torch.from_numpy(np.pad(np.asarray(wav, dtype=np.float32), (0, pad)))
        param = next(self.model.parameters())
        local, glob, _ = self.model.encode(x.to(device=param.device, dtype=param.dtype)[None])
        return local[0, :n].cpu().numpy(), glob[0].cpu().numpy()

    def _encode(self, wav: np.ndarray) -> np.ndarray:
        """Local tokens of one whole utterance (encoding is utterance-global: see the module
        docstring); the global tokens of the same audio: `encode_global`."""
        return self._encode_both(wav)[0]

    def encode_with_global(self, wav, sample_rate: int):
        """(local tokens (T,) as `encode` gives them, global tokens (global_code_num,))."""
        from espnet_freeze_omni.data.audio import resample, to_mono_float

        wav = resample(to_mono_float(wav), sample_rate, self.sample_rate)
        n = -(-len(wav) // self.samples_per_token)
        if n == 0:
            raise ValueError("no audio: the global tokens need at least one sample")
        wav = np.pad(wav, (0, n * self.samples_per_token - len(wav)))
        local, glob = self._encode_both(wav)
        return local.astype(np.int64), glob.astype(np.int64)

    def encode_global(self, wav, sample_rate: int) -> np.ndarray:
        """The utterance's global ("time-invariant") tokens (global_code_num,): the voice
        the release's encoder hears; decode with `model(tokens, global_tokens)` to use it."""
        return self.encode_with_global(wav, sample_rate)[1]

    # ------------------------------------------------------------------ files
    def save(self, out_dir: Union[str, os.PathLike], provenance: Optional[Dict[str, Any]] = None
             ) -> Path:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / CONFIG_FILE, "w", encoding="utf-8") as f:
            yaml.safe_dump(dict(codec="ticodec", config=dataclasses.asdict(self.conf),
                                provenance=provenance or {}), f, sort_keys=False)
        torch.save({k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                   out_dir / WEIGHTS_FILE)
        return out_dir

    @classmethod
    def from_config(cls, **conf) -> "TiCodec":
        if "path" not in conf:
            raise ValueError("ticodec codec config needs 'path' (a dir with config.yaml and "
                             f"{WEIGHTS_FILE})")
        return cls.from_dir(conf.pop("path"), **conf)

    @classmethod
    def from_dir(cls, path: Union[str, os.PathLike], model_file: Optional[str] = None,
                 device: str = "cpu", dtype: str = "float32") -> "TiCodec":
        path = Path(path)
        weights = Path(model_file) if model_file else path / WEIGHTS_FILE
        for f in (path / CONFIG_FILE, weights):
            if not f.is_file():
                raise FileNotFoundError(f"{f} missing: not a TiCodec dir")
        with open(path / CONFIG_FILE, encoding="utf-8") as f:
            saved = yaml.safe_load(f)
        if not isinstance(saved, dict) or saved.get("codec") != "ticodec":
            raise ValueError(f"{path / CONFIG_FILE} is not a TiCodec config (codec: ticodec)")
        conf = TiCodecConfig(**saved["config"])
        state = torch.load(weights, map_location="cpu", weights_only=True)
        return cls(conf, state, device=device, dtype=dtype)


def fold_weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """weight_norm's weight (dim 0): g * v / ||v||, the norm over all dims but the first."""
    dims = tuple(range(1, v.dim()))
    norm = v.double().pow(2).sum(dim=dims, keepdim=True).sqrt()
    return (g.double() * v.double() / norm).to(v.dtype)


__all__ = ["TiCodec", "TiCodecConfig", "TiCodecEncoder", "TiCodecModel", "fold_weight_norm",
           "nearest_rows", "token_reach"]
