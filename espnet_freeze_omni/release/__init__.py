"""Importing the authors' released Freeze-Omni checkpoints (docs/release_import.md).

    convert.py      release dir -> our configs + state dicts -> a packed model zip
    keymap.py       the release's parameter names and ours
    kaldi_fbank.py  the release's Kaldi fbank features as an espnet frontend (+ streaming)
    text_norm.py    the release's text clean-up before the speech decoder

This package is imported lazily: nothing here may import the model or task modules at
package import time (models/speech_input.py imports kaldi_fbank).
"""
