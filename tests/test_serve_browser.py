"""The demo page in a real browser: Debian's chromium driven by Playwright.

Chromium's fake capture device plays a spoken question (espeak-ng) as the microphone, in a
loop; the page captures it with its AudioWorklet, streams it to the in-process server, and
plays the answer through its playback worklet. The tiny model's state head is untrained, so
the page asks for VAD turn detection (?turn_detection=server_vad). Skipped where chromium or
Playwright is missing (tools/setup_env.sh installs chromium; pip install -e .[test] Playwright).
A second test loops the question so that it starts again while the answer plays (barge-in).
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


def launch(p, microphone_wav):
    """Headless chromium whose microphone plays `microphone_wav` in a loop."""
    binary = chromium_binary()
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return p.chromium.launch(executable_path=binary, headless=True, args=[
        "--no-sandbox",
        "--use-fake-ui-for-media-stream",  # grants the microphone without asking
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone_wav}",
        "--autoplay-policy=no-user-gesture-required",
    ])


def test_page_answers_a_spoken_question_and_plays_it(server, question_wav, tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as p:
        browser = launch(p, question_wav)
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


def test_page_barge_in_stops_playback_at_once(server, question_wav, tmp_path):
    """The microphone's loop starts the question again while the answer is being played:
    server VAD turns (interrupt_response on, the API's default) stop the answer as the user
    starts speaking, and the page drops the audio still queued when the event comes."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    speech, rate = soundfile.read(question_wav, dtype="float32")
    loud = np.flatnonzero(np.abs(speech) > 0.02)
    # speech again 0.8 s after it ended: past the VAD's 0.5 s silence, inside the answer
    looped = tmp_path / "again.wav"
    soundfile.write(looped, speech[max(0, loud[0] - rate // 10):loud[-1] + int(0.8 * rate)],
                    rate, subtype="PCM_16")
    with playwright_api.sync_playwright() as p:
        browser = launch(p, looped)
        try:
            page = browser.new_page()
            page.goto(f"{server.url}/?turn_detection=server_vad&autostart=1")
            page.wait_for_function("window.demo.stats.interrupted >= 1 && "
                                   "window.demo.stats.cuts.length >= 1", timeout=90_000)
            stats = page.evaluate("window.demo.stats")
        finally:
            browser.close()
    assert not stats["errors"], stats["errors"]
    cut = stats["cuts"][0]
    assert cut["queued"] == 0  # nothing of the interrupted answer is left to play
    assert cut["dropped"] > 0, stats  # it was cut while playing, not after it ended
    assert cut["afterMs"] < 100  # at once: the clear follows the event
