"""The frozen text LLM at the centre of Freeze-Omni.

Any Hugging Face causal LM (Qwen2-7B-Instruct in the paper, tiny Qwen2/Llama models in
the tests) is loaded from a local folder and never trained: its parameters have
`requires_grad=False` and it always runs in eval mode. Gradients still flow *through*
it to `inputs_embeds`, which is how the speech adapter and prompt embeddings upstream
learn to speak its language.

The LLM must never become a submodule of a trainable model: espnet's trainer would save
all its weights in every checkpoint and packed model, hand them to the optimizer, and
espnet's initializer would overwrite its embeddings and norms. Owners attach it with
`hold_frozen_llm()`, which keeps it out of `_modules`.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Union

import torch

from espnet_freeze_omni.llm.chat_template import end_of_turn_ids

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


@dataclass
class LLMOutput:
    """What one LLM call returns; logits and hidden are float32 whatever the LLM dtype."""

    logits: torch.Tensor  # (B, T, vocab)
    hidden: torch.Tensor  # (B, T, hidden): last layer, after the final norm
    past_key_values: Optional[object] = None  # transformers Cache, when use_cache
    # (B, T, hidden) after each decoder layer, in the LLM dtype: the residual stream, the
    # last one after the final norm (= `hidden`); the forward computes them anyway
    layers: Optional[tuple] = None


def _check_causal_lm_dir(path: Path):
    """Load the config of `path`, raising a clear error unless it is a causal-LM folder."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if not path.exists():
        raise FileNotFoundError(f"LLM directory not found: {path}")
    if not path.is_dir():
        raise FileNotFoundError(f"LLM path is not a directory: {path}")
    if not (path / "config.json").is_file():
        found = sorted(p.name for p in path.iterdir())
        shown = ", ".join(found[:10]) + (", ..." if len(found) > 10 else "") or "nothing"
        raise ValueError(
            f"{path} is not a Hugging Face model folder: no config.json (found: {shown})"
        )
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (ValueError, OSError, KeyError) as e:
        raise ValueError(f"{path}: cannot read config.json as a transformers config ({e})") from e

    model_type = config.model_type
    architectures = list(getattr(config, "architectures", None) or [])
    causal_classes = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    # Encoders (BERT, RoBERTa, ...) have a causal-LM head class too, but are not chat LLMs;
    # they are the model types that also have a masked-LM head.
    is_causal_type = (
        model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
        and not getattr(config, "is_encoder_decoder", False)
    )
    is_causal_arch = not architectures or any(
        a in causal_classes or a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures
    )
    if not (is_causal_type and is_causal_arch):
        raise ValueError(
            f"{path} does not hold a decoder-only causal LM: found model_type={model_type!r}, "
            f"architectures={architectures or None}"
        )
    return config


def load_llm_tokenizer(path: Union[str, os.PathLike]):
    """The LLM's tokenizer alone, for preprocessors (a 7B model need not load to tokenize).

    Same checks and errors as FrozenLLM: the folder must hold a causal LM.
    """
    from transformers import AutoTokenizer

    if path is None:
        raise ValueError("no LLM path given: name the local folder of the frozen LLM")
    path = Path(path)
    _check_causal_lm_dir(path)
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (ValueError, OSError, TypeError) as e:
        raise ValueError(f"{path}: cannot load a tokenizer ({e})") from e


class FrozenLLM(torch.nn.Module):
    """A Hugging Face causal LM + tokenizer, frozen, driven through `inputs_embeds`."""

    def __init__(self, path: Union[str, os.PathLike], dtype: str = "float32"):
        super().__init__()
        if path is None:
            raise ValueError("no LLM path given: name the local folder of the frozen LLM")
        path = Path(path)
        _check_causal_lm_dir(path)
        if isinstance(dtype, torch.dtype):
            torch_dtype = dtype
        elif dtype == "auto":
            torch_dtype = "auto"
        elif dtype in _DTYPES:
            torch_dtype = _DTYPES[dtype]
        else:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or 'auto', got {dtype!r}")

        from transformers import AutoModelForCausalLM

        self.tokenizer = load_llm_tokenizer(path)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                path, local_files_only=True, dtype=torch_dtype
            )
        except OSError as e:
            raise ValueError(f"{path}: cannot load the model weights ({e})") from e
        self.model = model
        self.path = str(path)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.train(False)

        config = self.model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.hidden_size = int(text_config.hidden_size)
        self.num_layers = int(text_config.num_hidden_layers)
        self.vocab_size = int(self.model.get_input_embeddings().num_embeddings)
        self.eos_token_ids: List[int] = end_of_turn_ids(self.tokenizer)
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else self.eos_token_ids[0])

    # -- frozen ------------------------------------------------------------------------

    def train(self, mode: bool = True):
        """Always eval: dropout in the frozen LLM would make its targets noisy."""
        return super().train(False)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def ensure_device(self, device: Union[str, torch.device]) -> "FrozenLLM":
        """Move to `device` if not there yet.

        The owner's `.to()` cannot reach the LLM (it is not a submodule), so the LLM
        follows its inputs instead.
        """
        device = torch.device(device)
        if self.device != device:
            self.model.to(device)
        return self

    # -- forward -----------------------------------------------------------------------

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids -> the LLM's input embeddings (LLM dtype, on the ids' device)."""
        self.ensure_device(ids.device)
        return self.model.get_input_embeddings()(ids)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        past_key_values=None,
        use_cache: bool = False,
        logits_to_keep: Union[int, torch.Tensor] = 0,
    ) -> LLMOutput:
        """Run the LLM on embeddings (B, T, D).

        attention_mask: (B, past + T), 1 = real token; left or right padding both work.
        logits_to_keep: compute logits for the last N positions only (0 = all), or, as a
            1-D tensor, for those positions; the vocabulary projection of a 7B LLM is large,
            and prompts need only the last.
        Gradients flow to `inputs_embeds`; the LLM's own weights never receive any.
        """
        self.ensure_device(inputs_embeds.device)
        kwargs = {}
        if attention_mask is not None:
            attention_mask = attention_mask.to(device=inputs_embeds.device, dtype=torch.long)
            # Positions count real tokens only, so a left-padded row sees the same
            # positions as the unpadded sequence (what transformers' generate does).
            positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            kwargs["position_ids"] = positions[:, -inputs_embeds.shape[1]:]
        out = self.model(
            inputs_embeds=inputs_embeds.to(self.dtype),
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_hidden_states=True,
            logits_to_keep=logits_to_keep,
            return_dict=True,
            **kwargs,
        )
        # hidden_states[-1] is the final-norm output in transformers (tied to last_hidden_state).
        return LLMOutput(
            logits=out.logits.float(),
            hidden=out.hidden_states[-1].float(),
            past_key_values=out.past_key_values if use_cache else None,
            layers=tuple(out.hidden_states[1:]),
        )

    # -- streaming steps (batch 1) -------------------------------------------------------

    def new_cache(self):
        """An empty K/V cache for this LLM."""
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def prefill(self, inputs_embeds: torch.Tensor, logits_to_keep: int = 0) -> LLMOutput:
        """Start a new K/V cache with `inputs_embeds` (1, T, D)."""
        return self.forward(inputs_embeds, past_key_values=self.new_cache(), use_cache=True,
                            logits_to_keep=logits_to_keep)

    def extend(self, inputs_embeds: torch.Tensor, past_key_values,
               logits_to_keep: int = 0) -> LLMOutput:
        """Append `inputs_embeds` (1, T, D) to `past_key_values` (the cache grows in place)."""
        return self.forward(inputs_embeds, past_key_values=past_key_values, use_cache=True,
                            logits_to_keep=logits_to_keep)

    @staticmethod
    def cache_length(past_key_values) -> int:
        """Number of positions held in a K/V cache (0 for None)."""
        return 0 if past_key_values is None else int(past_key_values.get_seq_length())

    @staticmethod
    def fork_cache(past_key_values, length: Optional[int] = None):
        """An independent copy of a K/V cache holding its first `length` positions (all by
        default): a dialogue listens to a new turn on a fork while the history it came
        from stays usable (the turn may turn out to be side talk)."""
        import copy

        fork = copy.deepcopy(past_key_values)
        total = FrozenLLM.cache_length(fork)
        if length is not None:
            if not 0 <= length <= total:
                raise ValueError(f"cannot fork {length} positions of a cache holding {total}")
            if length < total:
                # transformers 5 crops by a negative count of positions to remove
                fork.crop(length - total)
        return fork

    def extra_repr(self) -> str:
        return f"path={self.path!r}, dtype={self.dtype}, frozen=True"


def hold_frozen_llm(owner: torch.nn.Module, llm: FrozenLLM, name: str = "llm") -> FrozenLLM:
    """Make `owner.<name>` refer to `llm` without registering it as a submodule.

    `nn.Module.__setattr__` would put a Module into `owner._modules`, and from there into
    `state_dict()` (every checkpoint and packed model would carry the whole LLM),
    `parameters()` (the optimizer and `--freeze_param`), `.apply()` (espnet's initializer
    re-initializes embeddings and norms it finds) and `.to()`/`.half()`. Writing to the
    instance `__dict__` keeps the plain attribute lookup working while hiding it from all
    of those; the LLM follows its inputs' device by itself (`FrozenLLM.ensure_device`).
    """
    if not isinstance(llm, FrozenLLM):
        raise TypeError(f"hold_frozen_llm expects a FrozenLLM, got {type(llm).__name__}")
    for registry in (owner._modules, owner._parameters, owner._buffers):
        if name in registry:
            raise ValueError(f"{type(owner).__name__} already has a registered {name!r}")
    owner.__dict__[name] = llm
    return llm
