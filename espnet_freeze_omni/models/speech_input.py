"""Speech-input models for the three Freeze-Omni training stages.

    stage 1  EncoderCTCModel       fbank -> StreamingChunkEncoder -> CTC
    stage 2  LLMASRModel           ... -> ConvAdapter -> frozen LLM, target = the transcript
    stage 3  SpokenDialogModel     ... -> frozen LLM, target = the LLM's own answer,
                                   plus the state head (listen / respond / ignore) per chunk

Each stage's model extends the previous one, so parameter names line up and `--init_param`
carries stage N into stage N+1 unchanged. The frozen LLM is held outside the module tree
(`hold_frozen_llm`): it never enters a state_dict, the optimizer or espnet's initializer.
Parameter names follow the authors' release where a module has a counterpart there
(`encoder`, `task_embeddings`, `prompt_embeddings`, `predictor_head`; their `adpter` is our
`adapter`).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from espnet2.asr.ctc import CTC
from espnet2.asr.encoder.abs_encoder import AbsEncoder
from espnet2.asr.frontend.abs_frontend import AbsFrontend
from espnet2.asr.specaug.abs_specaug import AbsSpecAug
from espnet2.layers.abs_normalize import AbsNormalize
from espnet2.legacy.nets.e2e_asr_common import ErrorCalculator
from espnet2.torch_utils.device_funcs import force_gatherable
from espnet2.train.abs_espnet_model import AbsESPnetModel

from espnet_freeze_omni.adapter import AbsAdapter
from espnet_freeze_omni.llm.chat_template import ChatTemplate
from espnet_freeze_omni.llm.frozen_llm import FrozenLLM, hold_frozen_llm

# Duplex states predicted by the state head after every audio chunk (SPEC §1).
STATE_LISTEN, STATE_RESPOND, STATE_IGNORE = 0, 1, 2
NUM_STATE_LOGITS = 4  # the release's head has 4 outputs; only the first 3 are used


def _lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class EncoderCTCModel(AbsESPnetModel):
    """Stage 1: the streaming chunk encoder trained with CTC on ASR data.

    Every argument after the vocabulary is keyword-only: the stages below add theirs and
    hand the rest on unchanged, so no constructor repeats another's argument list.
    """

    # Whether the Task must load a frozen LLM (`--llm_conf path=...`) to build the model.
    needs_llm: bool = False

    def __init__(
        self,
        vocab_size: int,
        token_list: Sequence[str],
        *,
        frontend: Optional[AbsFrontend],
        specaug: Optional[AbsSpecAug],
        normalize: Optional[AbsNormalize],
        encoder: AbsEncoder,
        ctc: CTC,
        report_cer: bool = True,
        sym_space: str = "<space>",
        sym_blank: str = "<blank>",
    ):
        super().__init__()
        self.vocab_size = vocab_size
        self.token_list = list(token_list)
        self.frontend = frontend
        self.specaug = specaug
        self.normalize = normalize
        self.encoder = encoder
        self.ctc = ctc
        self.error_calculator = (
            ErrorCalculator(self.token_list, sym_space, sym_blank, report_cer, False)
            if report_cer else None
        )

    # ------------------------------------------------------------------ features / encoder
    def _extract_feats(
        self, speech: torch.Tensor, speech_lengths: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        speech = speech[:, : speech_lengths.max()]
        if self.frontend is None:  # features were dumped: speech already is (B, T, D)
            return speech, speech_lengths
        return self.frontend(speech, speech_lengths)

    def encode(
        self, speech: torch.Tensor, speech_lengths: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Waveform -> encoder frames (B, T/4, D) with lengths."""
        feats, feats_lengths = self._extract_feats(speech, speech_lengths)
        if self.specaug is not None and self.training:
            feats, feats_lengths = self.specaug(feats, feats_lengths)
        if self.normalize is not None:
            feats, feats_lengths = self.normalize(feats, feats_lengths)
        enc, enc_lengths, _ = self.encoder(feats, feats_lengths)
        return enc, enc_lengths

    def collect_feats(
        self, speech: torch.Tensor, speech_lengths: torch.Tensor, **kwargs
    ) -> Dict[str, torch.Tensor]:
        feats, feats_lengths = self._extract_feats(speech, speech_lengths)
        return {"feats": feats, "feats_lengths": feats_lengths}

    def _ctc_loss(
        self, enc: torch.Tensor, enc_lengths: torch.Tensor,
        text: torch.Tensor, text_lengths: torch.Tensor,
    ) -> Tuple[torch.Tensor, Optional[float]]:
        text = text[:, : text_lengths.max()]
        loss = self.ctc(enc, enc_lengths, text, text_lengths)
        cer = None
        if not self.training and self.error_calculator is not None:
            hyp = self.ctc.argmax(enc).detach()
            cer = self.error_calculator(hyp.cpu(), text.cpu(), is_ctc=True)
        return loss, cer

    def forward(
        self,
        speech: torch.Tensor,
        speech_lengths: torch.Tensor,
        text: Optional[torch.Tensor] = None,
        text_lengths: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], torch.Tensor]:
        if text is None:
            raise ValueError("stage 1 (CTC) needs a 'text' data entry with the transcripts")
        enc, enc_lengths = self.encode(speech, speech_lengths)
        loss, cer = self._ctc_loss(enc, enc_lengths, text, text_lengths)
        stats = dict(loss=loss.detach(), loss_ctc=loss.detach(), cer_ctc=cer)
        loss, stats, weight = force_gatherable((loss, stats, speech.shape[0]), loss.device)
        return loss, stats, weight

    @torch.no_grad()
    def ctc_greedy_decode(
        self, speech: torch.Tensor, speech_lengths: torch.Tensor
    ) -> List[List[int]]:
        """Best-path CTC decoding (blank = 0, repeats merged) of a batch."""
        enc, enc_lengths = self.encode(speech, speech_lengths)
        best = self.ctc.argmax(enc)
        out = []
        for seq, n in zip(best.tolist(), enc_lengths.tolist()):
            ids, prev = [], -1
            for t in seq[:n]:
                if t != prev and t != 0:
                    ids.append(t)
                prev = t
            out.append(ids)
        return out


class LLMASRModel(EncoderCTCModel):
    """Stage 2: encoder + adapter feed the frozen LLM, which must reproduce the transcript.

    The LLM sees  [chat prefix] [task embeddings] [audio embeddings] [chat suffix] [target]
    and only the target tokens are scored. `ctc_weight` > 0 keeps the CTC loss as an
    auxiliary task (it also keeps `ctc.*` trained for streaming ASR decoding).

    Optionally the same frozen LLM reading the transcript as text is the teacher
    (`distill_weight`, `distill_hidden_weight`): the target alone says only which token
    the LLM must produce, while its text-in run shows how it gets there. The first weight
    scores the KL divergence of the target-token distributions, the second the distance
    of every layer's hidden states over the closing of the user turn and the target, the
    positions both runs share. The text-in prompt is the preprocessor's `llm_question`
    (stage 2: the ASR instruction and the transcript; stage 3: the question).
    """

    needs_llm = True

    def __init__(
        self,
        vocab_size: int,
        token_list: Sequence[str],
        *,
        adapter: AbsAdapter,
        llm: FrozenLLM,
        ctc_weight: float = 0.0,
        task_num: int = 4,
        asr_instruction: Optional[str] = None,
        distill_weight: float = 0.0,
        distill_hidden_weight: float = 0.0,
        **kwargs,  # EncoderCTCModel's
    ):
        super().__init__(vocab_size, token_list, **kwargs)
        if adapter.output_size() != llm.hidden_size:
            raise ValueError(
                f"adapter output size {adapter.output_size()} != hidden size "
                f"{llm.hidden_size} of the LLM at {llm.path}"
            )
        self.adapter = adapter
        hold_frozen_llm(self, llm)
        self.ctc_weight = ctc_weight
        self.distill_weight = distill_weight
        self.distill_hidden_weight = distill_hidden_weight
        # A few trainable special embeddings that tell the frozen LLM "this is audio to
        # transcribe"; the release calls them task embeddings.
        self.task_embeddings = torch.nn.Embedding(task_num, llm.hidden_size)
        # Optional text instruction in the user turn before the task embeddings (e.g.
        # "Repeat after me:" for an LLM taught to copy on that cue). Without it the adapter
        # may learn to carry the instruction inside the audio embeddings, and a stage-3
        # model (adapter frozen) then keeps repeating the question instead of answering.
        instruction = (ChatTemplate(llm.tokenizer).question_ids(asr_instruction)
                       if asr_instruction else [])
        self.register_buffer("asr_instruction_ids", torch.tensor(instruction, dtype=torch.long),
                             persistent=False)

    # ------------------------------------------------------------------ LLM input assembly
    def audio_embeddings(
        self, speech: torch.Tensor, speech_lengths: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Waveform -> (LLM-space audio embeddings, their lengths, encoder out, lengths)."""
        enc, enc_lengths = self.encode(speech, speech_lengths)
        emb, emb_lengths = self.adapter(enc, enc_lengths)
        return emb, emb_lengths, enc, enc_lengths

    def before_audio(self, batch_size: int, device: torch.device, task: str = "default") -> torch.Tensor:
        """Trainable vectors placed between the chat prefix and the audio.

        `task="asr"` always selects the stage-2 task embeddings, so a stage-3 model (which
        keeps them, frozen) still transcribes through the LLM."""
        ids = torch.arange(self.task_embeddings.num_embeddings, device=device)
        learned = self.task_embeddings(ids)
        if self.asr_instruction_ids.numel():
            text = self.llm.embed_tokens(self.asr_instruction_ids.to(device)).to(learned.dtype)
            learned = torch.cat([text, learned], dim=0)
        return learned.unsqueeze(0).expand(batch_size, -1, -1)

    def assemble(
        self,
        prefix: torch.Tensor, prefix_lengths: torch.Tensor,
        audio: torch.Tensor, audio_lengths: torch.Tensor,
        suffix: torch.Tensor, suffix_lengths: torch.Tensor,
        target: torch.Tensor, target_lengths: torch.Tensor,
        task: str = "default",
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Concatenate each item's pieces without inner padding, then right-pad the batch.

        Returns inputs_embeds (B, L, H), attention_mask (B, L), labels (B, L) where labels
        hold the token each position must predict (-100 elsewhere), and audio_start (B,)
        the position of each item's first audio embedding. With `task="text"` the audio
        slot holds embedded question tokens and no learned vectors precede them: the
        plain text-in prompt of the same LLM.
        """
        llm = self.llm
        device = audio.device
        batch = audio.size(0)
        if task == "text":  # `audio` holds the question's token embeddings: the text-in input
            learned = audio.new_zeros(batch, 0, audio.size(-1))
        else:
            learned = self.before_audio(batch, device, task).to(audio.dtype)
        pieces, label_rows, audio_start = [], [], []
        for b in range(batch):
            p_ids = prefix[b, : prefix_lengths[b]]
            s_ids = suffix[b, : suffix_lengths[b]]
            t_ids = target[b, : target_lengths[b]]
            text_emb = llm.embed_tokens(torch.cat([p_ids, s_ids, t_ids]).to(device)).to(audio.dtype)
            np_, ns = p_ids.numel(), s_ids.numel()
            parts = [
                text_emb[:np_], learned[b], audio[b, : audio_lengths[b]],
                text_emb[np_: np_ + ns], text_emb[np_ + ns:],
            ]
            seq = torch.cat(parts, dim=0)
            labels = torch.full((seq.size(0),), -100, dtype=torch.long, device=device)
            n_target = t_ids.numel()
            if n_target > 0:
                # position i predicts token i+1: the last suffix token predicts target[0]
                first = seq.size(0) - n_target
                labels[first - 1: seq.size(0) - 1] = t_ids.to(device)
            pieces.append(seq)
            label_rows.append(labels)
            audio_start.append(np_ + learned.size(1))
        max_len = max(p.size(0) for p in pieces)
        hidden = pieces[0].size(1)
        inputs = audio.new_zeros(batch, max_len, hidden)
        labels = torch.full((batch, max_len), -100, dtype=torch.long, device=device)
        mask = torch.zeros(batch, max_len, dtype=torch.long, device=device)
        for b, (seq, lab) in enumerate(zip(pieces, label_rows)):
            inputs[b, : seq.size(0)] = seq
            labels[b, : lab.size(0)] = lab
            mask[b, : seq.size(0)] = 1
        return inputs, mask, labels, torch.tensor(audio_start, device=device)

    @staticmethod
    def shared_prefix_length(prefix: torch.Tensor, prefix_lengths: torch.Tensor) -> int:
        """How many leading chat-prefix tokens every item of the batch has in common."""
        n = int(prefix_lengths.min())
        if n == 0:
            return 0
        same = (prefix[:, :n] == prefix[:1, :n]).all(0)
        return n if bool(same.all()) else int(same.long().argmin())

    def run_llm_for_loss(
        self, inputs: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, shared: int
    ):
        """The frozen LLM on an assembled batch, computing only what the losses need.

        The first `shared` positions are the same chat-prefix text in every row and no
        trainable parameter comes before them, so their keys/values are computed once
        (batch 1, no gradient) and repeated over the batch instead of being pushed forward
        and backward for every row: in stage 2 that prefix is about a quarter of each
        sequence. The vocabulary projection runs only on columns that hold a label.
        Returns the LLM output for positions `shared:` (logits at the kept columns) and
        the labels of those columns.
        """
        past = None
        if shared > 0:
            with torch.no_grad():
                past = self.llm.prefill(inputs[:1, :shared].detach(),
                                        logits_to_keep=1).past_key_values
            past.batch_repeat_interleave(inputs.size(0))
        rest_labels = labels[:, shared:]
        keep = (rest_labels != -100).any(0).nonzero().squeeze(-1)
        out = self.llm(inputs[:, shared:], attention_mask=mask, past_key_values=past,
                       logits_to_keep=keep)
        return out, rest_labels[:, keep]

    @staticmethod
    def _token_loss(logits: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy over labelled positions and token accuracy."""
        valid = labels != -100
        if not valid.any():
            zero = logits.sum() * 0.0
            return zero, torch.tensor(float("nan"), device=logits.device)
        sel_logits, sel_labels = logits[valid].float(), labels[valid]
        loss = F.cross_entropy(sel_logits, sel_labels)
        acc = (sel_logits.argmax(-1) == sel_labels).float().mean()
        return loss, acc

    def forward(
        self,
        speech: torch.Tensor,
        speech_lengths: torch.Tensor,
        llm_prefix: Optional[torch.Tensor] = None,
        llm_prefix_lengths: Optional[torch.Tensor] = None,
        llm_suffix: Optional[torch.Tensor] = None,
        llm_suffix_lengths: Optional[torch.Tensor] = None,
        llm_target: Optional[torch.Tensor] = None,
        llm_target_lengths: Optional[torch.Tensor] = None,
        text: Optional[torch.Tensor] = None,
        text_lengths: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], torch.Tensor]:
        if llm_target is None or llm_prefix is None or llm_suffix is None:
            raise ValueError(
                "the LLM stages need the preprocessor's llm_prefix/llm_suffix/llm_target: "
                "keep --use_preprocessor true and give --llm_conf path=<LLM dir>"
            )
        audio, audio_lengths, enc, enc_lengths = self.audio_embeddings(speech, speech_lengths)
        audio_lengths = self.answered_audio_lengths(audio_lengths, kwargs.get("turn_info"))
        inputs, mask, labels, audio_start = self.assemble(
            llm_prefix, llm_prefix_lengths, audio, audio_lengths,
            llm_suffix, llm_suffix_lengths, llm_target, llm_target_lengths,
        )
        shared = self.shared_prefix_length(llm_prefix, llm_prefix_lengths)
        out, kept_labels = self.run_llm_for_loss(inputs, mask, labels, shared)
        loss_llm, acc = self._token_loss(out.logits, kept_labels)
        stats = dict(loss_llm=loss_llm.detach(), acc=acc.detach())
        loss = loss_llm
        batch = dict(kwargs, llm_prefix=llm_prefix, llm_prefix_lengths=llm_prefix_lengths,
                     llm_suffix=llm_suffix, llm_suffix_lengths=llm_suffix_lengths,
                     llm_target=llm_target, llm_target_lengths=llm_target_lengths)
        extra = self._extra_losses(out, kept_labels, mask, shared, audio_lengths,
                                   audio_start - shared, batch)
        for name, (value, weight, value_stats) in extra.items():
            loss = loss + weight * value
            stats.update(value_stats)
        if self.ctc_weight > 0 and text is not None:
            loss_ctc, cer = self._ctc_loss(enc, enc_lengths, text, text_lengths)
            loss = loss + self.ctc_weight * loss_ctc
            stats.update(loss_ctc=loss_ctc.detach(), cer_ctc=cer)
        stats["loss"] = loss.detach()
        loss, stats, weight = force_gatherable((loss, stats, speech.shape[0]), loss.device)
        return loss, stats, weight

    def answered_audio_lengths(self, audio_lengths: torch.Tensor,
                               turn_info: Optional[torch.Tensor]) -> torch.Tensor:
        """How much of each utterance's audio the answer follows: all of it (stage 3 may
        cut it, see SpokenDialogModel)."""
        return audio_lengths

    def _extra_losses(self, out, kept_labels, mask, shared, audio_lengths, audio_start,
                      batch) -> dict:
        """Losses added to the target's: {name: (value, weight, stats)}. `out` is the LLM
        output from position `shared` on, `audio_start` counts from there too."""
        if self.distill_weight > 0 or self.distill_hidden_weight > 0:
            return self._distill_losses(out, kept_labels, mask, shared, batch)
        return {}

    def _distill_losses(self, out, kept_labels, mask, shared, batch) -> dict:
        question = batch.get("llm_question")
        if question is None:
            raise ValueError(
                "distill_weight/distill_hidden_weight need the transcripts: give the stage "
                "a 'text' data entry (the preprocessor turns it into llm_question)"
            )
        q_lengths = batch["llm_question_lengths"]
        suffix_lengths, target_lengths = batch["llm_suffix_lengths"], batch["llm_target_lengths"]
        with torch.no_grad():
            q_emb = self.llm.embed_tokens(question.clamp(min=0)).float()
            t_inputs, t_mask, t_labels, _ = self.assemble(
                batch["llm_prefix"], batch["llm_prefix_lengths"], q_emb, q_lengths,
                batch["llm_suffix"], suffix_lengths, batch["llm_target"], target_lengths,
                task="text",
            )
            teacher, t_kept = self.run_llm_for_loss(t_inputs, t_mask, t_labels, shared)
        losses = {}
        if self.distill_weight > 0:
            # boolean indexing walks both row by row, positions ascending: row b gives its
            # target_lengths[b] answer positions in the same order in student and teacher
            s_logits = out.logits[kept_labels != -100]
            t_logits = teacher.logits[t_kept != -100]
            if s_logits.size(0) != t_logits.size(0):
                raise RuntimeError("distillation: student and teacher answer positions differ")
            if s_logits.size(0) == 0:
                kl = out.logits.sum() * 0.0
            else:
                kl = F.kl_div(F.log_softmax(s_logits, -1), F.log_softmax(t_logits, -1),
                              log_target=True, reduction="batchmean")
            losses["distill"] = (kl, self.distill_weight, dict(loss_distill=kl.detach()))
        if self.distill_hidden_weight > 0:
            # the user-turn closing + answer: the last (suffix + target) positions of each row;
            # rows without an answer (speech not addressed to the assistant) are left out
            span = torch.where(target_lengths > 0, suffix_lengths + target_lengths,
                               torch.zeros_like(target_lengths))
            offs = torch.arange(int(span.max().clamp(min=1)), device=span.device)
            valid = offs[None, :] < span[:, None]
            s_pos = (mask.sum(1) - span - shared)[:, None] + offs[None, :]
            t_pos = (t_mask.sum(1) - span - shared)[:, None] + offs[None, :]
            s_pos = s_pos.masked_fill(~valid, 0)
            t_pos = t_pos.masked_fill(~valid, 0)
            total = out.hidden.new_zeros(())
            for s_layer, t_layer in zip(out.layers, teacher.layers):
                idx = s_pos[..., None].expand(-1, -1, s_layer.size(-1))
                s_h = torch.gather(s_layer.float(), 1, idx)
                t_h = torch.gather(t_layer.float(), 1, t_pos[..., None].expand_as(idx))
                # relative distance: the residual stream's scale grows with depth
                rel = (s_h - t_h).pow(2).sum(-1) / t_h.pow(2).sum(-1).clamp(min=1e-6)
                total = total + (rel * valid).sum() / valid.sum().clamp(min=1)
            hid = total / len(out.layers)
            losses["distill_hidden"] = (hid, self.distill_hidden_weight,
                                        dict(loss_distill_hidden=hid.detach()))
        return losses


class SpokenDialogModel(LLMASRModel):
    """Stage 3: multi-round spoken Q&A plus the duplex state head.

    `prompt_num` trainable prompt embeddings replace the task embeddings before the audio;
    the answer target is what the frozen LLM itself said to the text question. The state
    head reads the LLM's hidden state at the last audio position of every chunk; the label
    of a chunk is `listen` until `turn_end_delay` seconds after the speech ended, then the
    utterance's label (respond, or ignore for speech not addressed to the assistant).

    The text-in teacher (`distill_weight`, `distill_hidden_weight`, see LLMASRModel) reads
    the question as text and answers it; side talk (no answer) is left out of it.
    """

    def __init__(
        self,
        vocab_size: int,
        token_list: Sequence[str],
        *,
        prompt_num: int = 25,
        state_weight: float = 1.0,
        turn_end_delay: float = 0.32,
        answer_at_random_turn_end: bool = False,
        frame_shift: float = 0.01,
        state_rule: str = "argmax",
        **kwargs,  # LLMASRModel's and EncoderCTCModel's
    ):
        super().__init__(vocab_size, token_list, **kwargs)
        # how a live session decides from the state probabilities (duplex_session.decide_state):
        # "argmax", or "release" (imported release checkpoints: the authors' thresholds)
        self.state_rule = state_rule
        hidden = self.llm.hidden_size
        self.prompt_embeddings = torch.nn.Embedding(prompt_num, hidden)
        self.predictor_head = torch.nn.Linear(hidden, NUM_STATE_LOGITS)
        self.state_weight = state_weight
        self.turn_end_delay = turn_end_delay
        self.answer_at_random_turn_end = answer_at_random_turn_end
        self.frame_shift = frame_shift

    def before_audio(self, batch_size: int, device: torch.device, task: str = "default") -> torch.Tensor:
        if task == "asr":
            return super().before_audio(batch_size, device, task)
        ids = torch.arange(self.prompt_embeddings.num_embeddings, device=device)
        return self.prompt_embeddings(ids).unsqueeze(0).expand(batch_size, -1, -1)

    # ------------------------------------------------------------------ chunk geometry
    @property
    def embeddings_per_chunk(self) -> int:
        """LLM embeddings produced per encoder chunk (2 for chunk 4 and adapter stride 2)."""
        return max(1, self.encoder.chunk_size // self.adapter.stride)

    @property
    def chunk_seconds(self) -> float:
        return self.encoder.chunk_size * 4 * self.frame_shift

    def chunk_state_labels(self, audio_lengths: torch.Tensor, turn_info: torch.Tensor) -> torch.Tensor:
        """(B, C) state label per chunk from turn_info rows (label, speech_end_seconds)."""
        per = self.embeddings_per_chunk
        n_chunks = (audio_lengths + per - 1) // per
        max_chunks = int(n_chunks.max())
        chunk_end = (torch.arange(max_chunks, device=audio_lengths.device) + 1) * self.chunk_seconds
        label = turn_info[:, 0].round().long()
        speech_end = turn_info[:, 1]
        after = chunk_end[None, :] >= (speech_end[:, None] + self.turn_end_delay)
        labels = torch.where(after, label[:, None], torch.full_like(after, STATE_LISTEN, dtype=torch.long))
        labels = labels.masked_fill(~_lengths_to_mask(n_chunks, max_chunks), -100)
        return labels

    def state_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Softmax-ready logits over the 3 used states."""
        return self.predictor_head(hidden)[..., :3]

    def answered_audio_lengths(self, audio_lengths: torch.Tensor,
                               turn_info: Optional[torch.Tensor]) -> torch.Tensor:
        """With `answer_at_random_turn_end`, in training: each addressed turn's audio is cut
        at a chunk end drawn uniformly between the first chunk labelled respond and the end
        of the recording, and the answer follows there. A live session answers when its
        state head says respond, often 0.3-0.6 s after the speech ended, while the corpus'
        recordings all end in the same trailing silence: a model trained only on whole
        recordings has never been asked to answer that early (on the embedded recipe it then
        answered 15 % of the spoken questions through the session against 95 % offline).
        The encoder is chunk-causal, so cutting its output equals cutting the audio."""
        if not (self.training and self.answer_at_random_turn_end) or turn_info is None:
            return audio_lengths
        per = self.embeddings_per_chunk
        turn_info = turn_info.float()
        first = torch.ceil((turn_info[:, 1] + self.turn_end_delay) / self.chunk_seconds).long()
        n_chunks = (audio_lengths + per - 1) // per
        first = torch.minimum(first.clamp(min=1), n_chunks)
        draw = torch.rand(first.shape, device=first.device)
        cut = first + (draw * (n_chunks - first + 1).float()).long().clamp(max=n_chunks - first)
        addressed = turn_info[:, 0].round().long() == STATE_RESPOND
        return torch.where(addressed, torch.minimum(cut * per, audio_lengths), audio_lengths)

    def _extra_losses(self, out, kept_labels, mask, shared, audio_lengths, audio_start,
                      batch) -> dict:
        extra = super()._extra_losses(out, kept_labels, mask, shared, audio_lengths,
                                      audio_start, batch)
        if batch.get("turn_info") is not None and self.state_weight > 0:
            extra["state"] = self._state_loss(out.hidden, audio_lengths, audio_start,
                                              batch["turn_info"])
        return extra

    def _state_loss(self, hidden, audio_lengths, audio_start, turn_info):
        labels = self.chunk_state_labels(audio_lengths, turn_info.float())
        per = self.embeddings_per_chunk
        chunk_idx = torch.arange(labels.size(1), device=hidden.device)
        # last audio embedding of chunk c: min((c+1)*per, n_audio) - 1
        last = torch.minimum((chunk_idx[None, :] + 1) * per, audio_lengths[:, None]) - 1
        pos = (audio_start[:, None] + last.clamp(min=0)).clamp(max=hidden.size(1) - 1)
        chunk_hidden = torch.gather(hidden, 1, pos[..., None].expand(-1, -1, hidden.size(-1)))
        logits = self.state_logits(chunk_hidden)
        valid = labels != -100
        loss = F.cross_entropy(logits[valid], labels[valid])
        pred = logits[valid].argmax(-1)
        acc = (pred == labels[valid]).float().mean()
        return loss, self.state_weight, dict(loss_state=loss.detach(), acc_state=acc.detach())
