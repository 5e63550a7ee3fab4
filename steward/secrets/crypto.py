"""Encryption at rest: AES-256-GCM under per-purpose subkeys derived from the master key.

Each sealed value has a fresh 96-bit nonce and associated data naming its row, so a ciphertext
copied to another row (another provider, another scope) fails to open.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from steward.errors import StewardError

PURPOSES = ("provider-keys", "bucket-credentials", "upload-token")
_CHECK = "key-check"
NONCE_BYTES = 12


class DecryptError(StewardError):
    pass


def derive(master: bytes, purpose: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"steward/v1",
                info=purpose.encode()).derive(master)


class Vault:
    def __init__(self, master: bytes):
        if len(master) != 32:
            raise StewardError("the master key must be 256 bits (32 bytes)")
        self._keys = {p: AESGCM(derive(master, p)) for p in PURPOSES}
        self._check = derive(master, _CHECK)

    def seal(self, purpose: str, plaintext: bytes, aad: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._keys[purpose].encrypt(nonce, plaintext, aad.encode())

    def open(self, purpose: str, blob: bytes, aad: str) -> bytes:
        try:
            return self._keys[purpose].decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:],
                                               aad.encode())
        except (InvalidTag, ValueError):
            raise DecryptError(f"a stored secret ({aad}) does not decrypt: it was altered, "
                               "moved to another row, or sealed under another master key"
                               ) from None

    def check_value(self) -> str:
        """Stored in the database so a wrong master key is caught before any use."""
        return hmac.new(self._check, b"steward master key check", hashlib.sha256).hexdigest()
