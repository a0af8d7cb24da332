"""The pairing phrase: how the user tells *their* agent from anyone else's.

An enrollment code is a bearer secret: whoever types it first gets the
agent credential.  So the browser, not the code, decides which agent may act.
Each agent run makes an ephemeral Ed25519 key pair and sends the public key
with the code; the server answers with a random nonce it chose *after*
seeing the key, and both sides derive four words from
``SHA-256(label ‖ workflow id ‖ nonce ‖ public key)``.  The agent prints
its words, the page shows the words of the agent that redeemed the code, and
the user confirms the card only if they are the same (like pairing a
Bluetooth device by comparing numbers).

Because the nonce comes after the key, an agent cannot grind keys until its
words match someone else's; 32 bits make an accidental match one in four
billion.  Shared by the server and the agent, so both compute the words the
same way (the agent never just prints what a server tells it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PHRASE_WORDS = 4
NONCE_BYTES = 16
_LABEL = b"openxpki-py pairing v1\x00"

# 256 short, common English words, distinct in their first three letters and
# hard to mishear: one byte of the hash each.  Changing the list changes every
# phrase: it is part of the API (docs/api.md), like the label above.
WORDS: tuple[str, ...] = (
    "acid", "actor", "adult", "agent", "alarm", "album", "alley", "amber",
    "angle", "ankle", "apple", "april", "arena", "armor", "arrow", "atlas",
    "attic", "audio", "avoid", "awake", "bacon", "badge", "baker", "bamboo",
    "banjo", "barrel", "basket", "beach", "bench", "berry", "bicycle", "bingo",
    "biscuit", "blanket", "blossom", "boat", "bottle", "bounce", "bridge", "broom",
    "bucket", "buffalo", "butter", "cabin", "cactus", "camel", "candle", "coral",
    "carpet", "castle", "cedar", "cello", "chalk", "cherry", "chimney", "circus",
    "clover", "cobalt", "coffee", "comet", "copper", "cotton", "coyote", "crayon",
    "cricket", "crystal", "cupboard", "curtain", "daisy", "dance", "debut", "delta",
    "denim", "desert", "dial", "dinner", "diver", "dolphin", "domino", "donkey",
    "dragon", "drum", "duck", "dune", "eagle", "earth", "echo", "eclipse",
    "elbow", "elder", "elephant", "ember", "empty", "engine", "envelope", "equal",
    "eraser", "errand", "exit", "fabric", "falcon", "feather", "fence", "ferry",
    "fiddle", "finger", "flame", "flute", "forest", "fossil", "fountain", "fox",
    "frost", "fudge", "galaxy", "garden", "gopher", "gecko", "geyser", "ginger",
    "giraffe", "glacier", "globe", "goose", "gorilla", "gravel", "guitar", "gumbo",
    "habit", "hammer", "harbor", "hinge", "hazel", "helmet", "hermit", "hiking",
    "hippo", "hockey", "honey", "hornet", "hotel", "husky", "igloo", "image",
    "index", "iodine", "inlet", "insect", "iris", "island", "ivory", "jacket",
    "jaguar", "jelly", "jewel", "jigsaw", "jockey", "journey", "juggle", "jungle",
    "kayak", "kernel", "kettle", "kidney", "kingdom", "kitten", "koala", "ladder",
    "lagoon", "lantern", "laptop", "lemon", "leopard", "lettuce", "library", "lizard",
    "lobster", "locket", "lotus", "lumber", "magnet", "mango", "marble", "meadow",
    "melon", "mirror", "mitten", "monkey", "mosaic", "muffin", "museum", "mural",
    "napkin", "nectar", "needle", "nephew", "nickel", "noodle", "nugget", "nutmeg",
    "oasis", "ocean", "octopus", "olive", "omelet", "onion", "orbit", "orchid",
    "otter", "oyster", "paddle", "panda", "parrot", "peanut", "pebble", "pencil",
    "pepper", "piano", "pillow", "pirate", "planet", "plum", "pocket", "polar",
    "potato", "pretzel", "puppet", "pyramid", "quartz", "quiet", "quota", "rabbit",
    "radio", "raisin", "ranch", "raven", "record", "ribbon", "rocket", "rubber",
    "saddle", "salmon", "sandal", "scarf", "seal", "shadow", "silver", "skate",
    "sofa", "spider", "squid", "stable", "sugar", "summit", "tablet", "tango",
)


def new_agent_key() -> Ed25519PrivateKey:
    """One per agent run; it never leaves the process."""
    return Ed25519PrivateKey.generate()


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The raw 32-byte public key, base64url without padding, as the API carries it."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_b64(text: str, *, size: int) -> bytes:
    """base64url (padding optional) of exactly ``size`` bytes; ValueError otherwise."""
    if not isinstance(text, str) or len(text) > 2 * size + 4:
        raise ValueError("not base64url text")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url text") from None
    if len(raw) != size:
        raise ValueError(f"expected {size} bytes, got {len(raw)}")
    return raw


def parse_public_key(text: str) -> Ed25519PublicKey:
    """The agent's public key from the API; ValueError if it is not an Ed25519 key."""
    return Ed25519PublicKey.from_public_bytes(decode_b64(text, size=32))


def pairing_phrase(workflow_id: int, nonce: bytes, agent_key: Ed25519PublicKey) -> str:
    """Four words both the page and the agent show for one redeemed code."""
    raw = agent_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    digest = hashlib.sha256(_LABEL + str(workflow_id).encode("ascii") + b"\x00" + nonce + raw).digest()
    return " ".join(WORDS[b] for b in digest[:PHRASE_WORDS])
