"""The demo page in a real browser: Debian's chromium driven by Playwright.

Chromium's fake capture device plays a spoken question (espeak-ng) as the microphone, in a
loop; the page captures it with its AudioWorklet, streams it to the in-process server, and
plays the answer through its playback worklet. The tiny model's state head is untrained, so
the page asks for VAD turn detection (?turn_detection=server_vad). Skipped where chromium or
Playwright is missing (tools/setup_env.sh installs chromium; pip install -e .[test] Playwright).
SERVE_DEMO_SCREENSHOT=<png> keeps the page's screenshot there.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from test_speech2speech import s2s, work  # noqa: F401 (fixtures)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium",
                       "/usr/bin/chromium-browser")


def chromium_binary():
    for path in CHROMIUM_CANDIDATES:
        if Path(path).is_file():
            return path
    return shutil.which("chromium")


@pytest.fixture(scope="module")
def question_wav(tmp_path_factory):
    """A spoken question with silence around it: the VAD hears a turn start and end."""
    from espnet_freeze_omni.data.espeak import synthesize

    root = tmp_path_factory.mktemp("browser")
    speech, rate = soundfile.read(synthesize("what color is the sky", root / "q.wav"),
                                  dtype="float32")
    pad = np.zeros(int(1.5 * rate), dtype=np.float32)
    path = root / "question.wav"
    soundfile.write(path, np.concatenate([pad[:rate // 2], speech, pad]), rate, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def server(s2s):
    from espnet_freeze_omni.serve.server import ServerLimits, VoiceServer

    running = VoiceServer([s2s], ServerLimits(max_sessions=2)).start_in_thread()
    yield running
    running.stop()


def test_page_answers_a_spoken_question_and_plays_it(server, question_wav, tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api")
    binary = chromium_binary()
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=binary, headless=True, args=[
            "--no-sandbox",
            "--use-fake-ui-for-media-stream",  # grants the microphone without asking
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={question_wav}",
            "--autoplay-policy=no-user-gesture-required",
        ])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            messages = []
            page.on("console", lambda m: messages.append(m.text))
            page.goto(f"{server.url}/?turn_detection=server_vad&autostart=1")
            # an answer arrives, its audio is played, and its text is on the page
            page.wait_for_function(
                "window.demo.stats.responsesDone >= 1 && window.demo.stats.played > 2400",
                timeout=90_000)
            stats = page.evaluate("window.demo.stats")
            assert stats["sessionUpdated"] and stats["audioDeltas"] > 0
            assert stats["states"] > 0  # the state head's decisions are shown
            assert not stats["errors"], stats["errors"]
            assert stats["latencies"] and stats["latencies"][0] >= 0
            assert stats["serverLatencies"]
            answer = page.inner_text(".assistant")
            assert answer.strip() == stats["transcripts"][0].strip()
            shot = tmp_path / "serve_demo.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("SERVE_DEMO_SCREENSHOT"):  # docs/images/serve_demo.png
                shutil.copy(shot, os.environ["SERVE_DEMO_SCREENSHOT"])
        finally:
            browser.close()
