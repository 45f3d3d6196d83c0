"""The codec registry: which backends exist and how a config dict names one.

    {"type": "embedded", "path": DIR, [decoding overrides]}
        -> EmbeddedCodec.from_dir(DIR) (what train_embedded_codec saved)
    {"type": "espnet_gan_codec", "model_file": F, "train_config": C, ["device": "cpu"]}
        -> EspnetGanCodec wrapping espnet2.bin.gan_codec_inference.AudioCoding
    {"type": "ticodec", "path": DIR, ["model_file": F], ["device": "cpu"]}
        -> TiCodec.from_dir(DIR) (the release's codec, as the release importer saved it)

The backends import `abs_codec` (the interface), never this package's names, so the
registry can import them without a cycle. A new backend is one line in `codec_choices`.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Union

from espnet2.train.class_choices import ClassChoices

from espnet_freeze_omni.codec.abs_codec import AbsCodec
from espnet_freeze_omni.codec.embedded import EmbeddedCodec
from espnet_freeze_omni.codec.espnet_codec import EspnetGanCodec
from espnet_freeze_omni.codec.ticodec import TiCodec
from espnet_freeze_omni.data.yaml_mapping import read_yaml_mapping

codec_choices = ClassChoices(
    "codec",
    classes=dict(embedded=EmbeddedCodec, espnet_gan_codec=EspnetGanCodec, ticodec=TiCodec),
    type_check=AbsCodec,
    default="embedded",
)


def load_codec(conf: Union[Dict[str, Any], str, os.PathLike]) -> AbsCodec:
    """Build a codec from a config dict (or a YAML file holding one), see above."""
    if not isinstance(conf, dict):
        conf = read_yaml_mapping(conf, "codec config")
    conf = dict(conf)
    kind = conf.pop("type", None)
    if kind not in codec_choices.classes:
        raise ValueError(f"unknown codec type {kind!r}: use "
                         f"{' or '.join(repr(k) for k in codec_choices.classes)}")
    return codec_choices.get_class(kind).from_config(**conf)
