"""CAPTCHAs (XEP-0158) for registration in ``captcha`` mode.

The answer is six digits, so the image and the spoken version (for people
who cannot read the image) say the same thing. Challenges live in the
database (storage/invites.py), so the web form and any node can check an
answer; each allows one guess. Images and audio come from the ``captcha``
package and are rendered on the hash pool's threads: both cost CPU (an
audio clip about half a second), which must not stall the reactor.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

if TYPE_CHECKING:
    from chatbx_server.server import Server

#: digits in an answer
ANSWER_LENGTH = 6


def new_answer() -> str:
    return "".join(secrets.choice("0123456789") for _ in range(ANSWER_LENGTH))


def image_png(answer: str) -> bytes:
    """The answer as a distorted PNG image (slow: run on a thread)."""
    from captcha.image import ImageCaptcha

    return bytes(ImageCaptcha(width=240, height=90).generate(answer, format="png").getvalue())


def audio_wav(answer: str) -> bytes:
    """The answer spoken, as WAV with noise (slow: run on a thread)."""
    from captcha.audio import AudioCaptcha

    return bytes(AudioCaptcha().generate(answer))


@defer.inlineCallbacks
def new_challenge(server: "Server") -> Any:
    """Store a new challenge; fires with (challenge id, PNG bytes)."""
    challenge_id = secrets.token_hex(16)
    answer = new_answer()
    png = yield server.stores.users.hasher.run(image_png, answer)
    yield server.stores.invites.add_challenge(challenge_id, answer,
                                              server.config.registration.captcha_lifetime)
    return challenge_id, png
