"""espnet-freeze-omni: Freeze-Omni (frozen-LLM speech-to-speech dialogue) on ESPnet."""
from setuptools import find_packages, setup

setup(
    name="espnet_freeze_omni",
    version="0.1.0",
    description="Freeze-Omni speech-to-speech dialogue with a frozen LLM, as an ESPnet plugin",
    packages=find_packages(include=["espnet_freeze_omni", "espnet_freeze_omni.*"]),
    package_data={"espnet_freeze_omni": ["serve/static/*"]},
    python_requires=">=3.12",
    install_requires=[
        "espnet[train]==202611",
        "espnet_model_zoo",
        "torch",
        "torchaudio",  # Kaldi fbank of imported release checkpoints (release/kaldi_fbank.py)
        "transformers>=4.45",
        "sentencepiece",
        "kaldiio",
        "soundfile",
        "jiwer",
        "numpy",
        "pyyaml",
        "tqdm",
        "matplotlib",
        "silero-vad",
        # the voice server (espnet_freeze_omni/serve): HTTP + websocket, the Realtime client
        "aiohttp",
        "websockets",
        "openai",
    ],
    # playwright drives Debian's chromium (tools/setup_env.sh) in tests/test_serve_browser.py
    extras_require={"test": ["pytest", "playwright"]},
)
