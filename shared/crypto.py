"""AES-256-GCM field encryption with rotatable keys: pure functions.

Used for what must be stored or sent recoverably but not in the clear (notification addresses,
webhook signing secrets). The first key encrypts; every key is tried to decrypt, so keys rotate by
prepending a new one and dropping the old once nothing uses it.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Sequence

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_VERSION = "v1"


class DecryptionError(ValueError):
    pass


def _key_bytes(key: str) -> bytes:
    raw = base64.b64decode(key)
    if len(raw) != 32:
        raise ValueError("an encryption key must be 32 bytes, base64-encoded")
    return raw


def key_id(key: str) -> str:
    # A short non-secret fingerprint, so a ciphertext says which key made it.
    return hashlib.sha256(_key_bytes(key)).hexdigest()[:8]


class FieldCipher:
    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("at least one encryption key is required")
        self._keys = {key_id(k): AESGCM(_key_bytes(k)) for k in keys}
        self._write_id = key_id(keys[0])

    def encrypt(self, plaintext: str, *, context: str = "") -> str:
        nonce = os.urandom(12)
        sealed = self._keys[self._write_id].encrypt(nonce, plaintext.encode(), context.encode())
        return f"{_VERSION}.{self._write_id}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def decrypt(self, token: str, *, context: str = "") -> str:
        try:
            version, kid, blob = token.split(".", 2)
            if version != _VERSION or kid not in self._keys:
                raise DecryptionError("ciphertext made with an unknown key or version")
            raw = base64.urlsafe_b64decode(blob)
            return self._keys[kid].decrypt(raw[:12], raw[12:], context.encode()).decode()
        except DecryptionError:
            raise
        except Exception as exc:
            raise DecryptionError("ciphertext could not be decrypted") from exc
