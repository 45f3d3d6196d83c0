#!/usr/bin/env python3
"""Convert the authors' released Freeze-Omni checkpoints into our packed model.

    python -m espnet_freeze_omni.bin.import_release --release_dir DIR --llm_path QWEN2_DIR \
        --out exp/release/freeze_omni_model.zip

The release's TiCodec (DIR/codec) is converted too; `--codec_dir` packs one of our codecs
instead.

The zip loads like a recipe-trained one (Speech2Speech.from_pretrained, its session,
bin/speech2speech). What is converted, what is not, and how the converted model differs
from the release: docs/release_import.md and espnet_freeze_omni/release/convert.py.
"""
from espnet_freeze_omni.release.convert import main

if __name__ == "__main__":
    main()
