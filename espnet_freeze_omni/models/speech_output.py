"""Speech-output model (stages 2 and 3 of SPEC §2), as an espnet `AbsESPnetModel`.

    text ids --frozen LLM embedding table--> SpeechDecoder --> codec logits, CE loss
                                              ^
    stage 3: [chat prompt, answer] --frozen LLM--> final hidden states of the answer
             (the prefix; computed on the fly, never stored)

The frozen LLM is held with `hold_frozen_llm`, so it is neither in `state_dict()` (no
checkpoint carries it) nor in `parameters()` (no optimizer or `--freeze_param` sees it).
Stage 3 freezes everything but the prefix decoder and the pre-network through
`--freeze_param`; frozen sub-blocks are kept in eval mode (no dropout), as the release did.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from espnet2.legacy.nets.pytorch_backend.nets_utils import pad_list
from espnet2.torch_utils.device_funcs import force_gatherable
from espnet2.train.abs_espnet_model import AbsESPnetModel

from espnet_freeze_omni.llm.chat_template import DEFAULT_SYSTEM_PROMPT, ChatTemplate
from espnet_freeze_omni.llm.finer_tokens import FinerTokenSplitter
from espnet_freeze_omni.release.text_norm import ReleaseTextNormalizer
from espnet_freeze_omni.llm.frozen_llm import FrozenLLM, hold_frozen_llm
from espnet_freeze_omni.speech_decoder.decoder import SpeechDecoder


class SpeechOutputModel(AbsESPnetModel):
    """Frozen-LLM text (+ hidden states) -> codec tokens, trained with cross-entropy.

    Args:
        speech_decoder: the SpeechDecoder; with `use_prefix` the model feeds it the
            LLM's hidden states of the answer (stage 3).
        llm: the FrozenLLM (held, not registered).
        system_prompt: system turn of the chat template used to compute hidden states.
        guided_attention_weight: weight of the speech decoder's guided-attention loss
            (its `guided_attention_layers`) added to the cross-entropy; 0 = off.
        decoder_bpe_merges: the speech decoder reads the answer's tokens split again with
            only the first N merges of the LLM's BPE (`FinerTokenSplitter`): shorter
            pieces of the same vocabulary, embedded by the same table. The prefix (the
            LLM's hidden states) stays one vector per LLM token. None = the LLM's tokens.
        decoder_text_norm: "release": the speech decoder reads the answer as the authors'
            release feeds it (decoded, cleaned up by release/text_norm.py, tokenized again;
            imported checkpoints). None = the ids themselves (or decoder_bpe_merges).
    """

    def __init__(
        self,
        speech_decoder: SpeechDecoder,
        llm: FrozenLLM,
        *,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        guided_attention_weight: float = 0.0,
        decoder_bpe_merges: Optional[int] = None,
        decoder_text_norm: Optional[str] = None,
    ):
        super().__init__()
        if decoder_text_norm not in (None, "release"):
            raise ValueError(f"decoder_text_norm must be null or 'release', got "
                             f"{decoder_text_norm!r}")
        if decoder_text_norm is not None and decoder_bpe_merges is not None:
            raise ValueError("decoder_text_norm and decoder_bpe_merges both rewrite what the "
                             "speech decoder reads: set one of them")
        if guided_attention_weight > 0 and not speech_decoder.guided_attention_layers:
            raise ValueError(
                "guided_attention_weight > 0 needs speech_decoder_conf guided_attention_layers"
            )
        self.guided_attention_weight = guided_attention_weight
        if speech_decoder.llm_hidden_size != llm.hidden_size:
            raise ValueError(
                f"speech decoder expects LLM hidden size {speech_decoder.llm_hidden_size}, "
                f"the frozen LLM has {llm.hidden_size}"
            )
        self.speech_decoder = speech_decoder
        hold_frozen_llm(self, llm)
        self.token_splitter = None
        if decoder_bpe_merges is not None:
            self.token_splitter = FinerTokenSplitter(llm.tokenizer, decoder_bpe_merges)
        elif decoder_text_norm == "release":
            self.token_splitter = ReleaseTextNormalizer(llm.tokenizer)
        self.template = ChatTemplate(llm.tokenizer, system_prompt=system_prompt)

    # ------------------------------------------------------------------ frozen LLM inputs
    @torch.no_grad()
    def embed_text(self, text: torch.Tensor, text_lengths: torch.Tensor) -> torch.Tensor:
        """Token ids (B, N), padded with -1 -> the frozen LLM's embeddings (B, N, H)."""
        self._check_ids(text, text_lengths, self.llm.vocab_size, "text token", "LLM vocabulary")
        ids = text.clamp(min=0)  # padding positions are masked downstream
        return self.llm.embed_tokens(ids).to(self.speech_decoder.embedding.weight.dtype)

    def decoder_text_ids(
        self, text: torch.Tensor, text_lengths: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The answer's token ids (B, N), padded with -1 -> the ids the speech decoder reads:
        the same, or with `decoder_bpe_merges` each token split into finer pieces."""
        if self.token_splitter is None:
            return text, text_lengths
        rows = [self.token_splitter.split(text[b, : int(n)].tolist())
                for b, n in enumerate(text_lengths)]
        lengths = torch.tensor([len(r) for r in rows], dtype=text_lengths.dtype,
                               device=text.device)
        out = pad_list([torch.tensor(r, dtype=torch.long, device=text.device) for r in rows], -1)
        return out, lengths

    @torch.no_grad()
    def answer_hidden_states(
        self,
        text: torch.Tensor,
        text_lengths: torch.Tensor,
        question: Optional[torch.Tensor] = None,
        question_lengths: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The LLM's final hidden state for every answer token, as at inference time.

        The LLM reads `<system><user>question</user><assistant>answer`; the hidden state
        that goes with answer token i is the one at the position that PREDICTS it (the
        last prompt position for the first token), exactly what a streaming dialogue hands
        to the speech decoder with each generated token.
        """
        batch = text.size(0)
        prefix, suffix = self.template.prefix_ids(), self.template.suffix_ids()
        sequences: List[List[int]] = []
        starts: List[int] = []
        for b in range(batch):
            q = []
            if question is not None:
                q = question[b, : int(question_lengths[b])].tolist()
            prompt = prefix + q + suffix
            answer = text[b, : int(text_lengths[b])].tolist()
            sequences.append(prompt + answer)
            starts.append(len(prompt) - 1)
        max_len = max(len(s) for s in sequences)
        device = text.device
        ids = torch.full((batch, max_len), self.llm.pad_token_id, dtype=torch.long, device=device)
        mask = torch.zeros(batch, max_len, dtype=torch.long, device=device)
        for b, s in enumerate(sequences):  # right padding: causal rows never see it
            ids[b, : len(s)] = torch.tensor(s, dtype=torch.long, device=device)
            mask[b, : len(s)] = 1
        hidden = self.llm(self.llm.embed_tokens(ids), attention_mask=mask).hidden
        n_max = int(text_lengths.max())
        index = torch.tensor(starts, device=device)[:, None] + torch.arange(n_max, device=device)
        index = index.clamp(max=max_len - 1)
        out = hidden.gather(1, index[:, :, None].expand(-1, -1, hidden.size(-1)))
        return out.to(self.speech_decoder.embedding.weight.dtype), text_lengths

    # ------------------------------------------------------------------ training
    def forward(
        self,
        text: torch.Tensor,
        text_lengths: torch.Tensor,
        codec_tokens: torch.Tensor,
        codec_tokens_lengths: torch.Tensor,
        question: Optional[torch.Tensor] = None,
        question_lengths: Optional[torch.Tensor] = None,
        utt_id: Optional[Sequence[str]] = None,
        **kwargs,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], torch.Tensor]:
        batch = text.size(0)
        text = text[:, : int(text_lengths.max())]
        codec_tokens = codec_tokens[:, : int(codec_tokens_lengths.max())]
        self._check_ids(
            codec_tokens, codec_tokens_lengths, self.speech_decoder.vocab_size,
            "codec token", "codec vocabulary", utt_id,
        )
        self._check_ids(text, text_lengths, self.llm.vocab_size, "text token", "LLM vocabulary", utt_id)

        decoder_text, decoder_text_lengths = self.decoder_text_ids(text, text_lengths)
        text_embeds = self.embed_text(decoder_text, decoder_text_lengths)
        prefix = prefix_lengths = None
        if self.speech_decoder.use_prefix:
            prefix, prefix_lengths = self.answer_hidden_states(
                text, text_lengths, question, question_lengths
            )
        logits, target, guide_loss = self.speech_decoder(
            text_embeds, decoder_text_lengths, codec_tokens, codec_tokens_lengths,
            prefix, prefix_lengths,
            return_guided_attention_loss=True,  # zero, and free, without guided layers
        )
        pad = self.speech_decoder.pad_id
        loss_ce = F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=pad
        )
        loss = loss_ce + self.guided_attention_weight * guide_loss
        with torch.no_grad():
            valid = target != pad
            acc = ((logits.argmax(-1) == target) & valid).sum().float() / valid.sum().clamp(min=1)
        stats = dict(loss=loss.detach(), loss_ce=loss_ce.detach(), acc=acc.detach())
        if self.speech_decoder.guided_attention_layers:
            stats["loss_guided_att"] = guide_loss.detach()
        loss, stats, weight = force_gatherable((loss, stats, batch), loss.device)
        return loss, stats, weight

    def collect_feats(
        self,
        text: torch.Tensor,
        text_lengths: torch.Tensor,
        **kwargs,
    ) -> Dict[str, torch.Tensor]:
        # No features to normalize: collect_stats only needs the shape files.
        return {}

    def train(self, mode: bool = True):
        """Keep blocks whose parameters are all frozen (stage 3) in eval mode.

        espnet's `--freeze_param` only turns gradients off; dropout inside the frozen
        stack would still perturb what the trainable prefix decoder learns to fit.
        """
        super().train(mode)
        if mode:
            for module in self.speech_decoder.children():
                params = list(module.parameters())
                if params and not any(p.requires_grad for p in params):
                    module.eval()
        return self

    # ------------------------------------------------------------------ checks
    @staticmethod
    def _check_ids(
        ids: torch.Tensor,
        lengths: torch.Tensor,
        vocab: int,
        what: str,
        vocab_name: str,
        utt_id: Optional[Sequence[str]] = None,
    ) -> None:
        valid = torch.arange(ids.size(1), device=ids.device)[None] < lengths[:, None]
        bad = valid & ((ids < 0) | (ids >= vocab))
        if bool(bad.any()):
            b, t = (int(i) for i in bad.nonzero()[0])
            where = f"utterance {utt_id[b]}" if utt_id is not None else f"batch item {b}"
            raise ValueError(
                f"{where}: {what} id {int(ids[b, t])} is outside the {vocab_name} [0, {vocab})"
            )
