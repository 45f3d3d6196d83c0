"""Incremental log-mel features, identical to espnet's offline ``DefaultFrontend``.

The duplex session feeds the speech-input model audio as it arrives from the
microphone, in pieces of whatever size the transport delivers. The offline
``DefaultFrontend`` needs the whole waveform: ``torch.stft(center=True)``
reflect-pads both ends, so its first and last frames depend on the edges of the
utterance. Recomputing the features of the whole utterance on every new piece
would cost quadratic time and unbounded memory, and features computed piece by
piece with independent padding would not match what the model was trained on.

``StreamingFrontend`` wraps the trained model's own ``DefaultFrontend`` and
returns each feature frame once, as soon as every sample it covers has arrived.
It keeps only the samples that the frames still to come need (under ``n_fft``
of them, plus the ``n_fft // 2 + 1`` most recent ones for the right-edge
reflection), and ``flush()`` applies the same right-edge reflect padding as the
offline frontend. For any split of a waveform into pieces, the concatenated
outputs of ``push()`` and ``flush()`` equal ``frontend(wav[None], lengths)[0]``.

Example::

    stream = StreamingFrontend(model.frontend)
    for piece in microphone_pieces:
        feats = stream.push(piece)      # (1, n, n_mels), n may be 0
        ...
    feats = stream.flush()              # the utterance's last frames

`streaming_frontend_for(frontend)` picks the streaming class for any model's frontend.
"""

from typing import Optional, Union

import numpy as np
import torch

from espnet2.asr.frontend.default import DefaultFrontend

__all__ = ["StreamingFrontend", "UtteranceTooShortError"]


class UtteranceTooShortError(ValueError):
    """The utterance is too short for the offline frontend to featurize it.

    ``torch.stft(center=True)`` refuses signals of at most ``n_fft // 2`` samples
    (its reflect padding needs more samples than it pads), and with
    ``center=False`` a signal shorter than ``n_fft`` has no frame; the offline
    frontend raises then too, so the streaming one does not make up frames.
    """


class StreamingFrontend:
    """Compute ``DefaultFrontend`` features incrementally, one utterance at a time.

    Args:
        frontend: the model's ``espnet2.asr.frontend.default.DefaultFrontend``.
            Its STFT settings, window and ``logmel`` module (the mel filters) are
            used as they are. Single-channel input only.

    Attributes:
        sample_rate: the rate (Hz) the pushed samples must have.
        hop_length: samples per feature frame.
        n_mels: feature dimension.
        num_frames: frames returned so far in the current utterance.
    """

    def __init__(self, frontend: DefaultFrontend):
        _check_streamable(frontend)
        stft = frontend.stft
        self.frontend = frontend
        self.logmel = frontend.logmel
        self.n_fft = int(stft.n_fft)
        self.win_length = int(stft.win_length)
        self.hop_length = int(stft.hop_length)
        self.center = bool(stft.center)
        self.normalized = bool(stft.normalized)
        self.onesided = bool(stft.onesided)
        self.n_mels = int(frontend.n_mels)
        self.sample_rate = int(self.logmel.mel_options["sr"])
        # torch.stft(center=True) pads n_fft // 2 samples on each side (for odd n_fft too)
        self._pad = self.n_fft // 2 if self.center else 0

        # The features are computed in the frontend's dtype and on its device, as
        # the offline frontend would for input of that dtype.
        melmat = self.logmel.melmat
        self._dtype = melmat.dtype
        self._device = melmat.device
        if stft.window is not None:
            # built the same way Stft.forward builds it (float32: it casts to float)
            window_fn = getattr(torch, f"{stft.window}_window")
            self._window: Optional[torch.Tensor] = window_fn(
                self.win_length, dtype=torch.float32, device=self._device
            )
        else:
            self._window = None
        self.reset()

    # ------------------------------------------------------------------ public

    def reset(self) -> None:
        """Forget the current utterance; the next ``push`` starts a new one."""
        # Samples received in this utterance (original signal, no padding).
        self._num_samples = 0
        # Samples of the (left-)padded signal from padded index _buf_start on.
        # In center mode, until more than n_fft // 2 samples have arrived the left
        # reflection cannot be built yet, so _buf then holds the raw samples and
        # _padded is False.
        self._buf = torch.zeros(0, dtype=self._dtype, device=self._device)
        self._buf_start = 0
        self._padded = not self.center
        # The last n_fft // 2 + 1 original samples: the right-edge reflection at
        # flush needs x[L-1-pad .. L-2], and _buf may have dropped some of them.
        self._tail = torch.zeros(0, dtype=self._dtype, device=self._device)
        self.num_frames = 0

    @torch.no_grad()
    def push(self, samples: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
        """Add audio; return the new frames that no later sample can change.

        Args:
            samples: 1-D float waveform piece at ``sample_rate`` (any length, 0 too).

        Returns:
            Tensor (1, n, n_mels) of the frames completed by this piece.
        """
        x = self._as_1d(samples)
        if x.numel() == 0:
            return self._empty()
        self._num_samples += x.numel()
        keep = self._pad + 1
        self._tail = torch.cat([self._tail, x[-keep:]])[-keep:]
        self._buf = torch.cat([self._buf, x])
        if not self._padded:
            if self._num_samples <= self._pad:
                # the left reflection needs x[1 .. pad]: wait for more audio
                return self._empty()
            # Padded index i < pad holds x[pad - i] (torch's "reflect" mode).
            left = self._buf[1 : self._pad + 1].flip(0)
            self._buf = torch.cat([left, self._buf])
            self._padded = True
        return self._emit()

    @torch.no_grad()
    def flush(self) -> torch.Tensor:
        """End the utterance: return its remaining frames and start a new one.

        With ``center=True`` the right edge is reflect-padded exactly as
        ``torch.stft`` pads it offline. A flush with no audio pushed returns no
        frames.

        Raises:
            UtteranceTooShortError: the utterance had samples but too few for the
                offline frontend (which raises on it too). The state is reset
                first, so the object can be reused.
        """
        n = self._num_samples
        if n == 0:
            self.reset()
            return self._empty()
        if self.center and n <= self._pad:
            self.reset()
            raise UtteranceTooShortError(
                f"utterance of {n} samples is too short: the offline frontend's "
                f"reflect padding (center=True, n_fft={self.n_fft}) needs more than "
                f"{self._pad} samples"
            )
        if not self.center and n < self.n_fft:
            self.reset()
            raise UtteranceTooShortError(
                f"utterance of {n} samples is too short: with center=False the "
                f"offline frontend needs at least n_fft={self.n_fft} samples"
            )
        if self._pad > 0:
            # Padded index pad + L + j holds x[L - 2 - j], j < pad ("reflect").
            right = self._tail[:-1].flip(0)
            self._append_padded(right)
        out = self._emit()
        self.reset()
        return out

    # ----------------------------------------------------------------- helpers

    def _as_1d(self, samples) -> torch.Tensor:
        if isinstance(samples, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(samples))
        elif torch.is_tensor(samples):
            x = samples.detach()
        else:
            raise TypeError(
                f"samples must be a numpy array or torch tensor, not {type(samples)}"
            )
        if x.dim() != 1:
            raise ValueError(
                "StreamingFrontend takes 1-D single-channel samples, got shape "
                f"{tuple(x.shape)} (multi-channel input is not supported)"
            )
        if not torch.is_floating_point(x):
            raise TypeError(f"samples must be floating point, got {x.dtype}")
        return x.to(device=self._device, dtype=self._dtype)

    def _empty(self) -> torch.Tensor:
        return torch.zeros(1, 0, self.n_mels, dtype=self._dtype, device=self._device)

    def _padded_length(self) -> int:
        """Samples of the padded signal available so far (before the right pad)."""
        return self._buf_start + self._buf.numel()

    def _append_padded(self, x: torch.Tensor) -> None:
        self._buf = torch.cat([self._buf, x])
        self._drop_consumed()

    def _drop_consumed(self) -> None:
        # Frame t starts at padded index t * hop: samples before the next frame's
        # start are never needed again (with hop > n_fft, some never at all).
        first_needed = self.num_frames * self.hop_length
        drop = min(max(first_needed - self._buf_start, 0), self._buf.numel())
        if drop:
            self._buf = self._buf[drop:]
            self._buf_start += drop

    def _emit(self) -> torch.Tensor:
        """Featurize every frame of the padded signal so far that lies inside it."""
        self._drop_consumed()
        # Frame t covers padded samples [t * hop, t * hop + n_fft).
        available = self._padded_length()
        if available < self.n_fft:
            return self._empty()
        last = (available - self.n_fft) // self.hop_length  # last complete frame
        if last < self.num_frames:
            return self._empty()
        start = self.num_frames * self.hop_length - self._buf_start
        stop = last * self.hop_length + self.n_fft - self._buf_start
        segment = self._buf[start:stop]
        # center=False on the already padded segment gives exactly frames
        # num_frames .. last of the offline torch.stft(center=True) call.
        spec = torch.stft(
            segment.float(),
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self._window,
            center=False,
            normalized=self.normalized,
            onesided=self.onesided,
            return_complex=True,
        )
        # Same steps as DefaultFrontend.forward: real/imag in the input dtype,
        # power spectrum, then the frontend's own LogMel (mel filters and log).
        spec = torch.view_as_real(spec).to(self._dtype).transpose(0, 1)  # (T, F, 2)
        power = spec[..., 0] ** 2 + spec[..., 1] ** 2
        feats, _ = self.logmel(power[None], None)
        self.num_frames = last + 1
        self._drop_consumed()
        return feats


def _check_streamable(frontend) -> None:
    """Raise ValueError naming what in ``frontend`` cannot be computed incrementally."""
    # An exact type check: a subclass may change forward(), which we reimplement.
    if type(frontend) is not DefaultFrontend:
        raise ValueError(
            "StreamingFrontend supports only espnet2.asr.frontend.default."
            f"DefaultFrontend, not {type(frontend).__module__}."
            f"{type(frontend).__qualname__}"
        )
    if frontend.stft is None:
        raise ValueError(
            "StreamingFrontend needs a DefaultFrontend that computes the STFT "
            "(apply_stft=False takes precomputed spectra, not audio)"
        )
    enh = frontend.frontend
    # The default frontend_conf builds a Frontend with neither WPE nor a
    # beamformer, which leaves single-channel spectra untouched; either one
    # means a multi-channel model whose features a 1-D stream cannot reproduce.
    if enh is not None and (
        getattr(enh, "use_wpe", False) or getattr(enh, "use_beamformer", False)
    ):
        raise ValueError(
            "StreamingFrontend does not support a DefaultFrontend with a speech "
            "enhancement frontend (WPE or beamformer: multi-channel input)"
        )
    logmel = frontend.logmel
    if not hasattr(logmel, "melmat") or not hasattr(logmel, "mel_options"):
        raise ValueError(
            f"StreamingFrontend needs espnet's LogMel, not {type(logmel).__name__}"
        )


def streaming_frontend_for(frontend):
    """The streaming twin of a model's frontend: StreamingFrontend for espnet's
    DefaultFrontend, KaldiStreamingFrontend for the release's Kaldi fbank (kaldi_fbank)."""
    from espnet_freeze_omni.release.kaldi_fbank import (
        KaldiFbankFrontend,
        KaldiStreamingFrontend,
    )

    if isinstance(frontend, KaldiFbankFrontend):
        return KaldiStreamingFrontend(frontend)
    return StreamingFrontend(frontend)
