"""Speaking captions and answers aloud (espeak-ng), on a thread of its own. No Qt.

Queue: one text is spoken at a time, so voices never overlap, and at most one caption waits behind
the one being spoken: a newer caption replaces a waiting one (it is stale once the scene moved
on), so speech lags the overlay by one caption at most. Answers are queued apart and spoken
first: a question the user asked is never dropped for a caption.

Meaning: a caption is spoken only when it says something new. Two captions "say the same" when
the Jaccard similarity of their content-word sets (lower case, punctuation, stop words and plural
"s" removed) is at least SAME_MEANING, compared with the last caption accepted for speaking; so
"a picture of a dog on a couch" and "a photo of the dogs on a couch" are one thing, "a cat on a
couch" another. A word-set measure costs microseconds and needs no model (a text-embedding
cosine, as some Pi projects use, would cost a model call per caption on the inference thread).

Text is untrusted (a caption can hold anything the decoder wrote): it goes to espeak-ng on
standard input, never as an argument, so it cannot be read as an option, and it is cut to
MAX_SPOKEN_CHARS.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import threading
from collections import deque
from pathlib import Path
from typing import Callable, Protocol

log = logging.getLogger(__name__)

ESPEAK = "espeak-ng"
INSTALL_HINT = "espeak-ng is not installed, so nothing can be spoken (on Raspberry Pi OS / Debian: " \
               "sudo apt install espeak-ng)"
SAME_MEANING = 0.6  # content-word Jaccard similarity at or above which two captions say the same
MAX_SPOKEN_CHARS = 300  # a caption is a sentence; anything longer is not worth a minute of speech
MAX_WAITING_ANSWERS = 3
SPEAK_TIMEOUT = 60.0  # s: a hung synthesiser is killed rather than silencing the app for good
STOP_WORDS = frozenset(
    "a an the of in on at to with and or is are was be there this that these those it its some "
    "picture pictures photo photos photograph image images view close up".split())


def content_words(text: str) -> frozenset[str]:
    """The words that carry a caption's meaning: lower case, without stop words, singular."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return frozenset(_singular(w) for w in words if w not in STOP_WORDS)


def _singular(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def similarity(a: str, b: str) -> float:
    """Jaccard similarity of the content words of ``a`` and ``b``, 0..1 (1 when both have none)."""
    wa, wb = content_words(a), content_words(b)
    if not wa and not wb:
        return 1.0
    return len(wa & wb) / len(wa | wb)


def spoken_text(text: str) -> str:
    """``text`` as it is handed to the synthesiser: one line, at most MAX_SPOKEN_CHARS."""
    return " ".join(text.split())[:MAX_SPOKEN_CHARS]


class Speaker(Protocol):
    def say(self, text: str) -> None:
        """Speak ``text``, returning when done (blocking: the queue's thread calls it)."""

    def stop(self) -> None:
        """Cut the speech in progress short (from any thread)."""


class EspeakSpeaker:
    """espeak-ng through a subprocess, text on standard input."""

    def __init__(self, executable: str, voice: str = "en", words_per_minute: int = 165):
        self.executable, self.voice, self.words_per_minute = executable, voice, words_per_minute
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None

    def command(self, wav: str | Path | None = None) -> list[str]:
        out = ["-w", str(wav)] if wav is not None else []
        return [self.executable, "-v", self.voice, "-s", str(self.words_per_minute), *out, "--stdin"]

    def say(self, text: str) -> None:
        self._run(text, self.command())

    def render(self, text: str, wav: str | Path) -> None:
        """Write the speech of ``text`` to the WAV file ``wav`` instead of the speakers."""
        self._run(text, self.command(wav))

    def _run(self, text: str, command: list[str]) -> None:
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        with self._lock:
            self._process = process
        try:
            _, err = process.communicate(spoken_text(text), timeout=SPEAK_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise OSError(f"{ESPEAK} did not finish within {SPEAK_TIMEOUT:.0f} s") from None
        finally:
            with self._lock:
                self._process = None
        if process.returncode not in (0, -15):  # -15: stop() cut it short
            raise OSError(f"{ESPEAK} failed (status {process.returncode}): {err.strip()[:200]}")

    def stop(self) -> None:
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                self._process.terminate()


def default_speaker() -> Speaker | None:
    """espeak-ng if it is installed, else None (the caller says so: see INSTALL_HINT)."""
    path = shutil.which(ESPEAK)
    return EspeakSpeaker(path) if path else None


class SpeechQueue:
    """Speaks offered captions and answers on its own thread (see the module docstring).

    ``offer_caption`` / ``offer_answer`` never block (the GUI thread calls them). ``on_error``
    is called (on the speech thread) with a message when speaking fails; ``spoken`` lists what
    was spoken, for the curious and for tests."""

    def __init__(self, speaker: Speaker, threshold: float = SAME_MEANING,
                 on_error: Callable[[str], None] | None = None):
        self.speaker, self.threshold, self.on_error = speaker, threshold, on_error
        self._cond = threading.Condition()
        self._caption: str | None = None  # the caption waiting to be spoken
        self._answers: deque[str] = deque(maxlen=MAX_WAITING_ANSWERS)
        self._last_caption: str | None = None  # the last caption accepted (waiting or spoken)
        self._stopping = False
        self.dropped = 0  # captions replaced while waiting
        self.spoken: list[str] = []
        self._thread = threading.Thread(target=self._run, name="speech", daemon=True)
        self._thread.start()

    def offer_caption(self, text: str) -> bool:
        """Queue ``text`` unless it says what the last accepted caption said; True if queued."""
        text = spoken_text(text)
        with self._cond:
            if self._stopping or not text:
                return False
            if self._last_caption is not None and similarity(text, self._last_caption) >= self.threshold:
                return False
            if self._caption is not None:
                self.dropped += 1
            self._caption = self._last_caption = text
            self._cond.notify()
            return True

    def offer_answer(self, text: str) -> None:
        text = spoken_text(text)
        with self._cond:
            if not self._stopping and text:
                self._answers.append(text)
                self._cond.notify()

    def shutdown(self, timeout: float | None = 2.0) -> bool:
        """Stop speaking (the current text is cut short) and end the thread; True if it ended
        within ``timeout`` (None: do not wait at all)."""
        with self._cond:
            self._stopping = True
            self._caption = None
            self._answers.clear()
            self._cond.notify_all()
        self.speaker.stop()
        if timeout is None:
            return not self._thread.is_alive()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and self._caption is None and not self._answers:
                    self._cond.wait()
                if self._stopping:
                    return
                if self._answers:
                    text = self._answers.popleft()
                else:
                    text, self._caption = self._caption, None
            try:
                self.speaker.say(text)
            except Exception as e:  # no synthesiser, a broken voice: say so, keep the app running
                log.warning("speech failed: %s", e)
                if self.on_error is not None:
                    self.on_error(f"Speech failed: {e}")
                continue
            self.spoken.append(text)
