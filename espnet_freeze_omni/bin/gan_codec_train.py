#!/usr/bin/env python3
"""espnet2.bin.gan_codec_train (espnet's gan_codec task, e.g. SoundStream) with kill-safe
checkpoints: the same options and output, trained by ResumableGANTrainer
(espnet_freeze_omni/tasks/resumable_trainer.py), so that `--resume true` after a kill
during a save goes on from the last whole checkpoint instead of failing on a torn one.

    python -m espnet_freeze_omni.bin.gan_codec_train --config conf/codec_soundstream_tiny.yaml \
        --train_data_path_and_name_and_type dump/train/wav.scp,audio,sound ... --resume true
"""
from espnet2.tasks.gan_codec import GANCodecTask

from espnet_freeze_omni.tasks.resumable_trainer import ResumableGANTrainer


class ResumableGANCodecTask(GANCodecTask):
    trainer = ResumableGANTrainer


def get_parser():
    return ResumableGANCodecTask.get_parser()


def main(cmd=None):
    ResumableGANCodecTask.main(cmd=cmd)


if __name__ == "__main__":
    main()
