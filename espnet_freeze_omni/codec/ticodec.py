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

Encoding needs the release's Encoder and GlobalTokenEncoder, which are not implemented
(`_encode` says so): use TiCodec for decoding the release's decoder output, and tokenize
fine-tuning data with the release's own code.
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
        return self

    # ------------------------------------------------------------------ the release json
    @classmethod
    def from_release_json(cls, path: Union[str, os.PathLike]) -> "TiCodecConfig":
        """Parse the release's codec/model.json; ValueError naming the file and the key."""
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


class TiCodecModel(torch.nn.Module):
    """generator.* + quantizer.*: tokens -> waveform."""

    def __init__(self, conf: TiCodecConfig):
        super().__init__()
        self.conf = conf.validate()
        self.generator = TiCodecGenerator(conf)
        self.quantizer = TiCodecQuantizer(conf)
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
    """AbsCodec decoding with TiCodec (a dir of config.yaml + ticodec.pth, as the release
    importer writes it); the voice is the config's fixed global tokens."""

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

    def _encode(self, wav: np.ndarray) -> np.ndarray:
        raise NotImplementedError(
            "TiCodec encoding is not implemented: the release's Encoder (conv_pre, ups, "
            "resblocks with GroupNorm, conv_post) and GlobalTokenEncoder were not converted "
            "(docs/release_import.md); this backend only decodes")

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


__all__ = ["TiCodec", "TiCodecConfig", "TiCodecModel", "fold_weight_norm", "token_reach"]
