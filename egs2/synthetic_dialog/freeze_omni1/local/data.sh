#!/usr/bin/env bash
# data/{train,dev,test} (ASR), data/{qa_train,qa_test} (spoken questions + side talk, with
# turn_info), data/{tts_train,tts_dev} (assistant answers in one voice, for the codec and the
# speech decoder) and data/local/world/ (facts, dialogs, repeat dialogs, reference answers),
# all generated from one seed by espnet_freeze_omni.bin.make_synthetic_corpus, and
# data/duplex_test (espnet_freeze_omni.data.duplex_sets): a duplex test set after
# Full-Duplex-Bench v1 from the held-out test questions and side talk, --num_duplex_test
# items per scenario (pause inside a question, smooth turn end, a second question over the
# answer, side talk), with duplex_info (scenario and times measured on the audio); the
# recipe decodes it with the duplex runner (stage 15) and scores its take-over rates and
# latencies (stage 16). With --unseen_test true (the default), also data/qa_test_unseen: the
# qa_test questions and side talk (same ids; references data/local/world/qa_test_unseen_refs.jsonl)
# spoken in voices, speeds, pitches and noise no training set uses (listed in the README and in
# espnet_freeze_omni/data/espeak.py UNSEEN_TEST_CONDITIONS); `local/data.sh --sets
# qa_test_unseen` makes only it. Nothing is downloaded.
set -euo pipefail

seed=0
num_train=2000            # ASR utterances (texts of dev/test never occur in train)
num_dev=100
num_test=100
num_qa_train=3000         # Q/A pairs in the train dialogs (LLM training, text)
num_qa_test=200           # test questions (held out by text)
num_spoken_qa_train=3000  # train questions also spoken for speech input stage 3: all of
                          # them (600 gave 53 % spoken-QA accuracy, 1500 79 %, 3000 86.5 %: README)
num_side_talk_train=200   # spoken speech not addressed to the assistant (label 2)
num_side_talk_test=50
num_paused_qa_train=600   # spoken train questions with a 0.5-2 s pause inside (labelled listen):
                          # the state head learns that a pause does not end the turn
num_people=120
num_countries=24
num_tts_train=2500        # assistant answers in the assistant voice (test answers held out;
                          # 2500 x 12 epochs: spoken-answer CER 13.6 %, 1500 x 20: 16.7 %)
num_tts_dev=100
num_repeat_train=1500     # "Repeat after me: ..." text dialogs (the LLM learns to copy)
num_duplex_test=25        # data/duplex_test: items per duplex scenario (5 scenarios; 25 make
                          # 125 items, 14 min of audio: ~9 s to speak; 0: no duplex set)
unseen_test=true          # data/qa_test_unseen: qa_test in held-out voices, speeds, pitches, noise
voice_pool=diverse        # voices of the ASR and QA sets (espeak.pick_voice): diverse (3 accents x
                          # every espeak-ng variant not held out, speeds 130-210, pitches 30-70)
                          # or classic (the six voices on a 4x3 grid the recipe had before)
augment=true              # data/local/augment/{noise,rirs}.scp for espnet's on-the-fly noise and
                          # reverberation in training (run.sh passes them): synthesized brown,
                          # hum and babble noise, synthesized RIRs, the espnet wheel's samples
sets=""                   # speak only these data dirs, comma separated (e.g. tts_train,tts_dev,
                          # duplex_test,qa_test_unseen); empty: all. The text artifacts are
                          # always (re)written.
nj=2
help_message="Usage: local/data.sh [--seed 0] [--num_train 2000] ... (see the variables in $0)"
. utils/parse_options.sh
. ./path.sh

# duplex_test is made below from the corpus' texts; the other sets by make_synthetic_corpus
corpus_sets=$(echo "${sets}" | tr ',' '\n' | grep -vx duplex_test | paste -sd' ' - || true)
text_only=false
[ -n "${sets}" ] && [ -z "${corpus_sets}" ] && text_only=true

python3 -m espnet_freeze_omni.bin.make_synthetic_corpus --out data --seed "${seed}" \
    --num_train "${num_train}" --num_dev "${num_dev}" --num_test "${num_test}" \
    --num_qa_train "${num_qa_train}" --num_qa_test "${num_qa_test}" \
    --num_spoken_qa_train "${num_spoken_qa_train}" \
    --num_side_talk_train "${num_side_talk_train}" --num_side_talk_test "${num_side_talk_test}" \
    --num_paused_qa_train "${num_paused_qa_train}" \
    --num_people "${num_people}" --num_countries "${num_countries}" \
    --num_tts_train "${num_tts_train}" --num_tts_dev "${num_tts_dev}" \
    --num_repeat_train "${num_repeat_train}" ${corpus_sets:+--sets "${corpus_sets}"} \
    --text_only "${text_only}" --unseen_test "${unseen_test}" --voice_pool "${voice_pool}" \
    --nj "${nj}"

if [ "${augment}" = true ] && [ -f data/train/wav.scp ]; then
    python3 -m espnet_freeze_omni.bin.make_augmentation_data --out data/local/augment \
        --babble_wav_scp data/train/wav.scp --seed "${seed}"
fi

if [ "${num_duplex_test}" -gt 0 ] && { [ -z "${sets}" ] || [[ ",${sets}," == *",duplex_test,"* ]]; }; then
    rm -rf data/duplex_test data/local/wav/duplex_test
    python3 -m espnet_freeze_omni.data.duplex_sets \
        --refs data/local/world/qa_test_refs.jsonl \
        --side_talk data/local/world/side_talk_test.txt \
        --out data/duplex_test --wav_dir data/local/wav/duplex_test \
        --num_items "${num_duplex_test}" --seed "${seed}" --nj "${nj}"
fi
