# Where the corpora and models of the paper-scale recipe live on this machine. Nothing is
# downloaded by the recipe: fetch each one yourself, then name it here. local/data.sh checks
# every path before it starts and names the variable of any that is missing.

# LibriSpeech root holding train-clean-100/ train-clean-360/ train-other-500/ dev-clean/
# dev-other/ test-clean/ test-other/ (or the folder holding LibriSpeech/), openslr.org/12
LIBRISPEECH=
# moss-003-sft multi-round Q&A, JSON lines (e.g. moss-003-sft-no-tools.jsonl of
# fnlp/moss-003-sft-data); several files: comma-separated
MOSS_SFT=
# Optional TTS corpus: 24 kHz speech (<name>.wav + <name>.normalized.txt, LibriTTS layout)
# for the codec and the speech decoder (stages 11-14). local/data.sh makes data/tts_train of
# it and run.sh passes --tts_train_set tts_train (validation stays on LibriSpeech dev). The
# assistant should speak with ONE voice: point it at a single-speaker corpus, or one speaker's
# folder of LibriTTS; many voices make the decoder's target ambiguous. Empty: the codec and
# the speech decoder train on train_960 (speed-perturbed) resampled to 24 kHz, as before.
CODEC_CORPUS=
# Spoken QA test sets (SPEC §4)
LLAMA_QUESTIONS=   # the TSV (Questions, Answer, Wav Filename) beside its 300 wavs, or its folder
WEB_QUESTIONS=     # the test JSON: a list of {"qText", "answers"}
TRIVIAQA=          # JSON lines {"question", "answer": {"aliases", "value"}} (or "answers": [...])
# The frozen LLM: your local Hugging Face folder of Qwen2-7B-Instruct (any causal LM works)
QWEN2_7B_INSTRUCT=
# A TTS command for the questions that have no recording, with {text} and {wav}, e.g.
#   TTS_CMD='my_tts --text {text} --out {wav}'   (any sample rate: sox converts)
# Empty: espeak-ng (robotic; fine for a first run, a neural TTS is closer to the paper).
TTS_CMD=
