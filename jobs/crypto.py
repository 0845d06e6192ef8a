"""AES-256-GCM encryption of task payloads and results, so Redis never holds plaintext content.

A key is 32 random bytes, written as url-safe base64 (`jobctl keygen`). Each ciphertext is
`jc1.<key id>.<base64(nonce + ciphertext + tag)>`. The key id (a MAC of a fixed label) lets a
reader with the wrong key say so plainly instead of reporting tampering. The associated data
binds a ciphertext to its job and purpose, so a payload cannot be swapped onto another job.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from jobs.errors import JobctlError

PREFIX = "jc1"
KEY_BYTES = 32
NONCE_BYTES = 12


class CryptoError(JobctlError):
    """A key or ciphertext problem."""


class MissingKeyError(CryptoError):
    pass


class BadKeyError(CryptoError):
    pass


class DecryptError(CryptoError):
    pass


def generate_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode()


_KEY_TEXT = re.compile(r"[A-Za-z0-9_+/-]+={0,2}")


def _decode_key(text: str, source: str) -> bytes:
    text = text.strip()
    if not text:
        raise BadKeyError(f"the key from {source} is empty; make a new one with `jobctl keygen`")
    # Checked before decoding: the decoder skips characters outside the alphabet, so a key with
    # stray characters would be read as some other (shorter) key instead of being refused.
    if not _KEY_TEXT.fullmatch(text):
        raise BadKeyError(
            f"the key from {source} is not url-safe base64 (only A-Z, a-z, 0-9, '-' and '_' may appear); "
            "make a new one with `jobctl keygen`"
        )
    body = text.rstrip("=")
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError) as e:
        raise BadKeyError(f"the key from {source} is not url-safe base64; make a new one with `jobctl keygen`") from e
    if len(raw) != KEY_BYTES:
        raise BadKeyError(
            f"the key from {source} is {len(raw)} bytes, not {KEY_BYTES}; make a new one with `jobctl keygen`"
        )
    return raw


class Cipher:
    """Encrypts and decrypts with one key. Its repr never shows the key."""

    def __init__(self, key: str, source: str = "the key"):
        raw = _decode_key(key, source)
        self._aead = AESGCM(raw)
        self._mac_key = hmac.new(raw, b"jobctl-mac-v1", hashlib.sha256).digest()
        self.key_id = hmac.new(raw, b"jobctl-key-id-v1", hashlib.sha256).hexdigest()[:12]

    def __repr__(self) -> str:
        return f"Cipher(key_id={self.key_id!r})"

    def mac(self, *parts: str) -> str:
        """A keyed digest: stable ids and fingerprints that reveal nothing without the key."""
        msg = "\x00".join(parts).encode()
        return hmac.new(self._mac_key, msg, hashlib.sha256).hexdigest()

    def encrypt(self, data: bytes, context: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, data, context.encode())
        return f"{PREFIX}.{self.key_id}.{base64.b64encode(nonce + sealed).decode()}"

    def decrypt(self, token: str, context: str) -> bytes:
        try:
            prefix, key_id, body = token.split(".", 2)
        except (ValueError, AttributeError) as e:
            raise DecryptError("this value is not a jobctl ciphertext (corrupted data?)") from e
        if prefix != PREFIX:
            raise DecryptError(f"unknown ciphertext format {prefix!r}")
        if key_id != self.key_id:
            raise DecryptError(
                f"this data was encrypted with key {key_id}, but the configured key is {self.key_id}; "
                "set JOBCTL_KEY (or JOBCTL_KEY_FILE) to the key used when the tasks were submitted"
            )
        try:
            raw = base64.b64decode(body, validate=True)
            return self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode())
        except (binascii.Error, ValueError, InvalidTag) as e:
            raise DecryptError("ciphertext failed authentication: it was tampered with or corrupted") from e


# Key files moved to jobs.keyfile (private modes, no symlink following). Re-exported here, lazily,
# because jobs.keyfile imports this module's errors.
if TYPE_CHECKING:
    from jobs.keyfile import load_key as load_key
    from jobs.keyfile import write_key_file as write_key_file


def __getattr__(name: str) -> Any:
    if name in ("load_key", "write_key_file"):
        from jobs import keyfile

        return getattr(keyfile, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
