"""Freeze-Omni speech decoder: frozen-LLM text (and hidden states) -> codec tokens.

Reads top to bottom:

    SpeechDecoder
      llm_to_frames          each LLM-sized vector (e.g. 3584) -> (3584 / 896) decoder frames
      pre_nn_forward         2 bidirectional Llama layers over the text-token embeddings
      kv_cache_prefix_forward   NAR prefix decoder over the LLM's final hidden states; its
                             per-layer K/V are written into the cache that the main stack
                             then extends, so every main layer sees them as a prefix
      decode                 ONE 4-layer stack, shared weights: text part bidirectional (NAR),
                             codec part causal (AR); a single attention mask does both
      forward                teacher-forced training pass -> (logits, targets)
      prefill / step         incremental inference with a K/V cache; prefill(None) is the
                             unconditional context (BOS only) for classifier-free guidance

Token layout of the main stack (per utterance, prefix K/V in front if any):

    [BOS, text frames ...] [SOS, c_1, ..., c_T]   -> predicts [c_1, ..., c_T, EOS]

Vocabulary: codes 0..1023, then BOS, SOS, EOS, PAD (1028 in all), as in the authors'
release. Module names (`embedding`, `layers_pre_nn`, `layers`, `norm`, `out_fnn`,
`layers_prefix`, ...) match the release, so importing its checkpoint is a renaming
(prepend the owner's attribute name).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import nn
from transformers import LlamaConfig
from transformers.cache_utils import DynamicCache
from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, max_len) bool, True on valid positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def build_decoder_attention_mask(
    text_lens: torch.Tensor,
    text_max: int,
    codec_lens: torch.Tensor,
    codec_max: int,
    prefix_lens: Optional[torch.Tensor] = None,
    prefix_max: int = 0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The one mask that makes the shared stack NAR over text and AR over codec tokens.

    Queries: [text part (text_max)] [codec part (codec_max)], each padded on the right.
    Keys:    [prefix (prefix_max)] [text part] [codec part].
    A text query sees the valid prefix and every valid text position (bidirectional);
    a codec query sees the valid prefix, all valid text, and codec positions up to itself.
    Returns an additive float mask (B, 1, Q, K): 0 = attend, finfo.min = blocked.
    """
    batch = text_lens.size(0)
    device = text_lens.device
    if prefix_lens is None:
        prefix_lens = torch.zeros(batch, dtype=torch.long, device=device)
    prefix_valid = lengths_to_mask(prefix_lens, prefix_max)  # (B, P)
    text_valid = lengths_to_mask(text_lens, text_max)  # (B, Lt)
    codec_valid = lengths_to_mask(codec_lens, codec_max)  # (B, Tc)

    n_q = text_max + codec_max
    # Columns every valid query may see: prefix + text.
    context = torch.cat([prefix_valid, text_valid], dim=1)  # (B, P + Lt)
    context = context[:, None, :].expand(batch, n_q, -1)
    # Codec columns: only codec queries, causally, within the valid codec length.
    causal = torch.ones(codec_max, codec_max, dtype=torch.bool, device=device).tril()
    codec_cols = torch.zeros(batch, n_q, codec_max, dtype=torch.bool, device=device)
    codec_cols[:, text_max:, :] = causal[None] & codec_valid[:, None, :]
    allowed = torch.cat([context, codec_cols], dim=2)  # (B, Q, K)
    row_valid = torch.cat([text_valid, codec_valid], dim=1)  # (B, Q)
    allowed = allowed & row_valid[:, :, None]
    # Padded query rows would see nothing; let them see themselves so that softmax stays
    # finite (their outputs are never used).
    eye = torch.zeros(n_q, prefix_max + n_q, dtype=torch.bool, device=device)
    eye[:, prefix_max:] = torch.eye(n_q, dtype=torch.bool, device=device)
    allowed = allowed | (eye[None] & ~row_valid[:, :, None])

    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    mask = mask.masked_fill(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


class SpeechDecoder(nn.Module):
    """Pre-network + NAR/AR shared stack (+ optional NAR prefix decoder) -> codec logits.

    Args:
        llm_hidden_size: hidden size of the frozen LLM (its embeddings and hidden states
            come in at this size and are cut into `llm_hidden_size / hidden_size` frames).
        vocab_size: number of codec codes (the special tokens come on top).
        hidden_size, num_heads, intermediate_size: Llama layer geometry.
        num_layers: depth of the shared NAR/AR stack (and of the prefix decoder, whose
            per-layer K/V seed it one to one).
        num_pre_layers: depth of the pre-network over the text-token embeddings.
        use_prefix: build the NAR prefix decoder over the LLM's hidden states (stage 3).
        dropout_rate: attention dropout inside the Llama layers.
        input_dropout_rate: dropout on the incoming LLM text embeddings.
        codec_input_corruption: training only: the probability that a teacher-forced
            codec input token is replaced by a random code. Targets stay intact, so the
            stack cannot predict the next code from the previous ones alone and has to
            read the text (the role of Tacotron's always-on pre-net dropout). 0 in the
            paper configs.
        codec_input_self_sampling: training only: the probability that a teacher-forced
            codec input is replaced by the decoder's own prediction for that position,
            the argmax of a first teacher-forced pass without gradients (parallel
            scheduled sampling, Duckworth et al. 2019). Free-running, the decoder reads its
            own codes; trained only on true ones it drifts once it has made a few mistakes.
            Costs one extra forward pass per step; 0 (off) in the paper configs.
        guided_attention_layers, guided_attention_heads, guided_attention_sigma: training
            only: `forward(..., return_guided_attention_loss=True)` also returns the
            guided-attention loss of Tachibana et al. (2018) on the first
            `guided_attention_heads` heads of these main-stack layers: their attention from
            codec queries over the text frames is pushed towards the diagonal
            (penalty 1 - exp(-(n/N - t/T)^2 / (2 sigma^2))). Text and speech of an answer
            run in the same order, and the prior lets a small decoder find that alignment
            in far fewer steps. No layers (the default) means no loss.
        restart_codec_positions: number the codec part from 0 like the text part, instead
            of continuing after the text (the release's layout, the default). The first
            codec position then sits at relative offset 0 from the first text frame whatever
            the text length, a start anchor that a small decoder otherwise has to find
            through BOS.
        normalize_llm_frames: scale every incoming LLM frame (text embeddings and hidden
            states) to unit RMS, the scale of the codec embeddings the same stack reads. No
            weights, so the release's checkpoint layout is unchanged. A small LLM's
            embeddings can be 25x smaller than those, and then the residual stream starts
            out holding almost nothing of the text
            (docs/experiments/2026-11-22-speech-decoder-little-data.md).
            Off (as in the release) by default.
        condition_dropout: training only: the share of answers whose text (and prefix)
            the stack is not shown: it then reads BOS alone and learns unconditional speech
            with the same weights. Classifier-free guidance (Ho & Salimans 2022) at
            inference (`generate_codec_tokens(guidance_scale=...)`) pushes the conditional
            prediction away from that one, towards what the text adds. 0 (off, as in the
            release) by default.
    """

    def __init__(
        self,
        llm_hidden_size: int,
        vocab_size: int = 1024,
        hidden_size: int = 896,
        num_heads: int = 14,
        intermediate_size: int = 4864,
        num_layers: int = 4,
        num_pre_layers: int = 2,
        use_prefix: bool = False,
        dropout_rate: float = 0.1,
        input_dropout_rate: float = 0.0,
        codec_input_corruption: float = 0.0,
        codec_input_self_sampling: float = 0.0,
        guided_attention_layers: Sequence[int] = (),
        guided_attention_heads: int = 1,
        guided_attention_sigma: float = 0.2,
        restart_codec_positions: bool = False,
        normalize_llm_frames: bool = False,
        condition_dropout: float = 0.0,
        max_position_embeddings: int = 4096,
        rope_theta: float = 10000.0,
        rms_norm_eps: float = 1e-6,
        attn_implementation: str = "sdpa",
    ):
        super().__init__()
        if llm_hidden_size % hidden_size != 0:
            raise ValueError(
                f"LLM hidden size {llm_hidden_size} is not a multiple of the speech "
                f"decoder hidden size {hidden_size}: each LLM vector must reshape into "
                f"whole decoder frames"
            )
        self.llm_hidden_size = llm_hidden_size
        self.frames_per_llm_vector = llm_hidden_size // hidden_size
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.use_prefix = use_prefix
        if not 0.0 <= codec_input_corruption < 1.0:
            raise ValueError(f"codec_input_corruption must be in [0, 1), got {codec_input_corruption}")
        if not 0.0 <= codec_input_self_sampling <= 1.0:
            raise ValueError(
                f"codec_input_self_sampling must be in [0, 1], got {codec_input_self_sampling}"
            )
        if not 0.0 <= condition_dropout < 1.0:
            raise ValueError(f"condition_dropout must be in [0, 1), got {condition_dropout}")
        bad = [i for i in guided_attention_layers if not 0 <= i < num_layers]
        if bad:
            raise ValueError(
                f"guided_attention_layers {bad} are outside the {num_layers}-layer stack"
            )
        if guided_attention_layers and not 1 <= guided_attention_heads <= num_heads:
            raise ValueError(
                f"guided_attention_heads must be in [1, {num_heads}], got {guided_attention_heads}"
            )
        self.codec_input_corruption = codec_input_corruption
        self.codec_input_self_sampling = codec_input_self_sampling
        self.guided_attention_layers = tuple(guided_attention_layers)
        self.guided_attention_heads = guided_attention_heads
        self.guided_attention_sigma = guided_attention_sigma
        self.restart_codec_positions = restart_codec_positions
        self.normalize_llm_frames = normalize_llm_frames
        self.condition_dropout = condition_dropout
        self.rms_norm_eps = rms_norm_eps
        # Special tokens sit right after the codes, in the release's order.
        self.bos_id = vocab_size
        self.sos_id = vocab_size + 1
        self.eos_id = vocab_size + 2
        self.pad_id = vocab_size + 3
        self.num_embeddings = vocab_size + 4

        def llama_config(num_hidden_layers: int) -> LlamaConfig:
            return LlamaConfig(
                vocab_size=self.num_embeddings,
                hidden_size=hidden_size,
                intermediate_size=intermediate_size,
                num_hidden_layers=num_hidden_layers,
                num_attention_heads=num_heads,
                max_position_embeddings=max_position_embeddings,
                rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
                rms_norm_eps=rms_norm_eps,
                attention_dropout=dropout_rate,
                bos_token_id=self.bos_id,
                eos_token_id=self.eos_id,
                pad_token_id=self.pad_id,
                attn_implementation=attn_implementation,
            )

        self.config = llama_config(num_layers)
        pre_config = llama_config(num_pre_layers)

        self.embedding = nn.Embedding(self.num_embeddings, hidden_size, padding_idx=self.pad_id)
        self.dropout = nn.Dropout(p=input_dropout_rate)
        self.layers_pre_nn = nn.ModuleList(
            [LlamaDecoderLayer(pre_config, i) for i in range(num_pre_layers)]
        )
        self.rotary_emb_pre_nn = LlamaRotaryEmbedding(config=pre_config)
        self.layers = nn.ModuleList(
            [LlamaDecoderLayer(self.config, i) for i in range(num_layers)]
        )
        self.norm = LlamaRMSNorm(hidden_size, eps=rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=self.config)
        self.out_fnn = nn.Linear(hidden_size, self.num_embeddings)
        if use_prefix:
            # Same layer indices as the main stack: prefix layer i writes cache slot i,
            # which main layer i then extends with its own K/V.
            self.layers_prefix = nn.ModuleList(
                [LlamaDecoderLayer(self.config, i) for i in range(num_layers)]
            )
            self.rotary_emb_prefix = LlamaRotaryEmbedding(config=self.config)

    # ------------------------------------------------------------------ inputs
    def llm_to_frames(
        self, x: torch.Tensor, lengths: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, N, llm_hidden) -> (B, N * r, hidden), lengths * r, r = llm_hidden / hidden."""
        if x.size(-1) != self.llm_hidden_size:
            raise ValueError(
                f"expected LLM vectors of size {self.llm_hidden_size}, got {x.size(-1)} "
                f"(speech decoder hidden size {self.hidden_size})"
            )
        batch, n, _ = x.shape
        r = self.frames_per_llm_vector
        x = x.reshape(batch, n * r, self.hidden_size).to(self.embedding.weight.dtype)
        if self.normalize_llm_frames:
            x = nn.functional.rms_norm(x, (self.hidden_size,), eps=self.rms_norm_eps)
        return x, lengths * r

    def _bidirectional_stack(
        self,
        layers: nn.ModuleList,
        rotary: LlamaRotaryEmbedding,
        x: torch.Tensor,
        lengths: torch.Tensor,
        cache: Optional[DynamicCache] = None,
    ) -> torch.Tensor:
        """Full (non-causal) attention over the valid part of x, positions from 0."""
        batch, n, _ = x.shape
        position_ids = torch.arange(n, device=x.device)[None].expand(batch, n)
        position_embeddings = rotary(x, position_ids)
        mask = build_decoder_attention_mask(
            lengths, n, torch.zeros_like(lengths), 0, dtype=x.dtype
        )
        for layer in layers:
            x = layer(
                x,
                attention_mask=mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=cache is not None,
                position_embeddings=position_embeddings,
            )
        return x

    def pre_nn_forward(self, hidden: torch.Tensor, hidden_lens: torch.Tensor) -> torch.Tensor:
        """Pre-network: 2 bidirectional layers over the text frames."""
        return self._bidirectional_stack(
            self.layers_pre_nn, self.rotary_emb_pre_nn, hidden, hidden_lens
        )

    def kv_cache_prefix_forward(
        self, prefix: torch.Tensor, prefix_lens: torch.Tensor, cache: DynamicCache
    ) -> None:
        """NAR prefix decoder over hidden-state frames; fills `cache` with its K/V."""
        if not self.use_prefix:
            raise ValueError("this speech decoder was built without a prefix decoder (use_prefix)")
        self._bidirectional_stack(
            self.layers_prefix, self.rotary_emb_prefix, prefix, prefix_lens, cache
        )

    def encode_text(
        self, text_embeds: torch.Tensor, text_lens: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """LLM text embeddings (B, N, llm_hidden) -> [BOS, pre-net(frames)], lengths."""
        frames, frame_lens = self.llm_to_frames(text_embeds, text_lens)
        frames = self.pre_nn_forward(self.dropout(frames), frame_lens)
        bos = self.embedding.weight[self.bos_id].expand(frames.size(0), 1, -1)
        return torch.cat([bos, frames], dim=1), frame_lens + 1

    def encode_prefix(
        self, prefix: Optional[torch.Tensor], prefix_lens: Optional[torch.Tensor]
    ) -> Tuple[Optional[DynamicCache], Optional[torch.Tensor]]:
        """LLM hidden states (B, M, llm_hidden) -> a cache holding the prefix K/V."""
        if prefix is None:
            return None, None
        frames, frame_lens = self.llm_to_frames(prefix, prefix_lens)
        cache = DynamicCache()
        self.kv_cache_prefix_forward(frames, frame_lens, cache)
        return cache, frame_lens

    # ------------------------------------------------------------------ the shared stack
    def decode(
        self,
        text_states: torch.Tensor,
        text_lens: torch.Tensor,
        codec_in: torch.Tensor,
        codec_lens: torch.Tensor,
        cache: Optional[DynamicCache] = None,
        prefix_lens: Optional[torch.Tensor] = None,
        guide: bool = False,
    ):
        """One pass of the NAR/AR stack; returns logits (B, Tc, V) over the codec part.

        With `guide`, returns (logits, guided-attention loss) instead.

        `codec_in` holds token ids starting with SOS (padding may be any id < V).
        Positions restart at 0 for the text part whether or not a prefix is cached, as in
        the release, so a stage-2 stack sees the same positions once the prefix is added.
        Positions are per utterance (codec part right after that utterance's text, or from
        0 with `restart_codec_positions`), so a padded batch trains on exactly the
        positions inference uses.
        """
        batch, text_max, _ = text_states.shape
        codec_max = codec_in.size(1)
        prefix_max = cache.get_seq_length() if cache is not None else 0
        if prefix_max and prefix_lens is None:
            prefix_lens = torch.full((batch,), prefix_max, device=text_lens.device)

        codec_states = self.embedding(codec_in)
        x = torch.cat([text_states, codec_states], dim=1)
        text_pos = torch.arange(text_max, device=x.device)[None].expand(batch, -1)
        codec_start = torch.zeros_like(text_lens) if self.restart_codec_positions else text_lens
        codec_pos = codec_start[:, None] + torch.arange(codec_max, device=x.device)[None]
        position_ids = torch.cat([text_pos, codec_pos], dim=1)
        position_embeddings = self.rotary_emb(x, position_ids)
        mask = build_decoder_attention_mask(
            text_lens, text_max, codec_lens, codec_max, prefix_lens, prefix_max, dtype=x.dtype
        )
        guide_losses = []
        for i, layer in enumerate(self.layers):
            if guide and i in self.guided_attention_layers:
                guide_losses.append(
                    self._guided_attention_loss(
                        layer, x, position_embeddings, text_lens, text_max, codec_lens
                    )
                )
            x = layer(
                x,
                attention_mask=mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=cache is not None,
                position_embeddings=position_embeddings,
            )
        logits = self.out_fnn(self.norm(x[:, text_max:]))
        if not guide:
            return logits
        loss = torch.stack(guide_losses).mean() if guide_losses else logits.new_zeros(())
        return logits, loss

    def _guided_attention_loss(
        self,
        layer: LlamaDecoderLayer,
        x: torch.Tensor,
        position_embeddings: Tuple[torch.Tensor, torch.Tensor],
        text_lens: torch.Tensor,
        text_max: int,
        codec_lens: torch.Tensor,
    ) -> torch.Tensor:
        """Diagonal prior on where the guided heads of `layer` look within the text.

        Recomputes those heads' queries (codec part) and keys (text part) from the layer's
        input, exactly as the layer does, and takes the softmax over the valid text frames
        only: the loss is about WHICH text frame a codec position reads, whatever share of
        attention goes to earlier codec positions.
        """
        attn = layer.self_attn
        heads, head_dim = self.guided_attention_heads, attn.head_dim
        groups = attn.num_key_value_groups
        h = layer.input_layernorm(x)
        batch, n, _ = h.shape
        q = attn.q_proj(h).view(batch, n, -1, head_dim).transpose(1, 2)[:, :heads]
        k = attn.k_proj(h).view(batch, n, -1, head_dim).transpose(1, 2)
        k = k.repeat_interleave(groups, dim=1)[:, :heads]
        cos, sin = position_embeddings
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        q, k = q[:, :, text_max:], k[:, :, :text_max]  # codec queries, text keys
        scores = torch.matmul(q, k.transpose(-1, -2)) * attn.scaling  # (B, h, Tc, Lt)
        text_valid = lengths_to_mask(text_lens, text_max)
        scores = scores.masked_fill(~text_valid[:, None, None, :], torch.finfo(scores.dtype).min)
        probs = scores.float().softmax(dim=-1)

        codec_max = q.size(2)
        n_pos = torch.arange(codec_max, device=x.device, dtype=torch.float32)
        t_pos = torch.arange(text_max, device=x.device, dtype=torch.float32)
        n_rel = n_pos[None, :] / codec_lens[:, None].clamp(min=1).float()  # (B, Tc)
        t_rel = t_pos[None, :] / text_lens[:, None].clamp(min=1).float()  # (B, Lt)
        dist = n_rel[:, :, None] - t_rel[:, None, :]
        penalty = 1.0 - torch.exp(-(dist**2) / (2.0 * self.guided_attention_sigma**2))
        # an answer shown no text (condition_dropout: BOS alone) has nothing to align with
        rows = lengths_to_mask(codec_lens, codec_max) & (text_lens > 1)[:, None]  # (B, Tc)
        per_row = (probs * penalty[:, None]).sum(-1)  # (B, h, Tc)
        per_row = per_row * rows[:, None].float()
        return per_row.sum() / (rows.sum().clamp(min=1) * heads)

    def forward(
        self,
        text_embeds: torch.Tensor,
        text_lens: torch.Tensor,
        codec: torch.Tensor,
        codec_lens: torch.Tensor,
        prefix: Optional[torch.Tensor] = None,
        prefix_lens: Optional[torch.Tensor] = None,
        return_guided_attention_loss: bool = False,
    ):
        """Teacher-forced pass.

        Args:
            text_embeds: (B, N, llm_hidden) frozen-LLM embeddings of the text tokens.
            text_lens: (B,) number of valid text tokens.
            codec: (B, T) codec codes, padding anything (e.g. -1) beyond codec_lens.
            codec_lens: (B,)
            prefix, prefix_lens: (B, M, llm_hidden), (B,) the LLM's final hidden states;
                required when the decoder has a prefix decoder, ignored otherwise.
            return_guided_attention_loss: also return the guided-attention loss (a scalar;
                zero when the decoder has no guided layers).
        Returns:
            logits (B, T + 1, V) and targets (B, T + 1): codes, EOS, then PAD (ignore);
            then the guided-attention loss if asked for.
        """
        if self.use_prefix and prefix is None:
            raise ValueError("this speech decoder has a prefix decoder: pass the LLM hidden states")
        batch, t_max = codec.shape
        valid = lengths_to_mask(codec_lens, t_max)
        codes = codec.masked_fill(~valid, self.pad_id).long()
        sos = torch.full((batch, 1), self.sos_id, dtype=torch.long, device=codec.device)
        target = torch.cat([codes, torch.full_like(sos, self.pad_id)], dim=1)
        target = target.scatter(1, codec_lens[:, None].long(), self.eos_id)

        text_states, text_state_lens = self.encode_text(text_embeds, text_lens)
        if self.training and self.condition_dropout > 0:
            # the hidden answers keep BOS only (its length 1) and no prefix, exactly the
            # context `prefill(None)` gives at inference
            hidden = torch.rand(batch, device=codec.device) < self.condition_dropout
            text_state_lens = text_state_lens.masked_fill(hidden, 1)
            if prefix_lens is not None:
                prefix_lens = prefix_lens.masked_fill(hidden, 0)
        if self.training and self.codec_input_self_sampling > 0:
            own = self._teacher_forced_argmax(
                text_states.detach(), text_state_lens, torch.cat([sos, codes], dim=1),
                codec_lens + 1, prefix, prefix_lens,
            )
            hit = (torch.rand(codes.shape, device=codes.device) < self.codec_input_self_sampling) & valid
            codes = torch.where(hit, own, codes)
        if self.training and self.codec_input_corruption > 0:
            noise = torch.randint_like(codes, self.vocab_size)
            hit = (torch.rand(codes.shape, device=codes.device) < self.codec_input_corruption) & valid
            codes = torch.where(hit, noise, codes)
        codec_in = torch.cat([sos, codes], dim=1)

        cache, frame_prefix_lens = (
            self.encode_prefix(prefix, prefix_lens) if self.use_prefix else (None, None)
        )
        out = self.decode(
            text_states, text_state_lens, codec_in, codec_lens + 1, cache, frame_prefix_lens,
            guide=return_guided_attention_loss,
        )
        if return_guided_attention_loss:
            logits, guide_loss = out
            return logits, target, guide_loss
        return out, target

    @torch.no_grad()
    def _teacher_forced_argmax(
        self,
        text_states: torch.Tensor,
        text_state_lens: torch.Tensor,
        codec_in: torch.Tensor,
        codec_in_lens: torch.Tensor,
        prefix: Optional[torch.Tensor],
        prefix_lens: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """(B, T) the most likely code at each codec position given the true history.

        Its own prefix cache: `decode` appends to the cache it is given."""
        cache, frame_prefix_lens = (
            self.encode_prefix(prefix, prefix_lens) if self.use_prefix else (None, None)
        )
        logits = self.decode(
            text_states, text_state_lens, codec_in, codec_in_lens, cache, frame_prefix_lens
        )
        # position t predicts code t; the last position predicts EOS and is not an input
        return logits[:, :-1, : self.vocab_size].argmax(-1)

    # ------------------------------------------------------------------ incremental inference
    @torch.no_grad()
    def prefill(
        self, text_embeds: Optional[torch.Tensor], prefix: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, DynamicCache, int]:
        """One utterance (batch 1, no padding): prefix, text and SOS in a single pass.

        `text_embeds` None gives the unconditional context, BOS alone and no prefix, the
        one `condition_dropout` trains (for classifier-free guidance).
        Returns the logits (1, V) for the first codec token, the cache, and the position
        of the next token to feed.
        """
        text_states, text_lens, cache, prefix_lens = self._inference_context(text_embeds, prefix)
        if cache is None:
            cache = DynamicCache()
        sos = torch.full((1, 1), self.sos_id, dtype=torch.long, device=text_states.device)
        logits = self.decode(text_states, text_lens, sos, torch.ones_like(text_lens), cache,
                             prefix_lens)
        next_position = 1 if self.restart_codec_positions else int(text_lens[0]) + 1
        return logits[:, -1], cache, next_position

    def _inference_context(
        self, text_embeds: Optional[torch.Tensor], prefix: Optional[torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[DynamicCache], Optional[torch.Tensor]]:
        """(text states, their length, prefix cache or None, prefix length) for batch 1."""
        if text_embeds is None:
            bos = self.embedding.weight[self.bos_id].view(1, 1, -1)
            return bos, torch.ones(1, dtype=torch.long, device=bos.device), None, None
        one = torch.ones(1, dtype=torch.long, device=text_embeds.device)
        text_states, text_lens = self.encode_text(text_embeds, one * text_embeds.size(1))
        if self.use_prefix and prefix is not None:
            cache, prefix_lens = self.encode_prefix(prefix, one * prefix.size(1))
            return text_states, text_lens, cache, prefix_lens
        return text_states, text_lens, None, None

    @torch.no_grad()
    def step(self, token: torch.Tensor, position: int, cache: DynamicCache) -> torch.Tensor:
        """Feed one codec token (1, 1) at `position`; returns logits (1, V) for the next.

        A single query may see every cached key, so no mask is needed.
        """
        x = self.embedding(token)
        position_ids = torch.full((1, 1), position, dtype=torch.long, device=x.device)
        position_embeddings = self.rotary_emb(x, position_ids)
        for layer in self.layers:
            x = layer(
                x,
                attention_mask=None,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
                position_embeddings=position_embeddings,
            )
        return self.out_fnn(self.norm(x))[:, -1]

    @torch.no_grad()
    def logits_uncached(
        self,
        text_embeds: Optional[torch.Tensor],
        codes: torch.Tensor,
        prefix: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Reference for the cache: recompute everything for [SOS, codes]; logits (1, V).

        `text_embeds` None: the unconditional context, as in `prefill`."""
        text_states, text_lens, cache, prefix_lens = self._inference_context(text_embeds, prefix)
        sos = torch.full((1, 1), self.sos_id, dtype=torch.long, device=text_states.device)
        codec_in = torch.cat([sos, codes.view(1, -1).long()], dim=1)
        logits = self.decode(
            text_states, text_lens, codec_in, torch.ones_like(text_lens) * codec_in.size(1),
            cache, prefix_lens,
        )
        return logits[:, -1]
