"""Feishu/Lark event crypto: the ``{"encrypt": ...}`` envelope and the ``X-Lark-Signature`` header.

Both are keyed by the app's Encrypt Key (developer console -> Events & Callbacks -> Encryption
Strategy). Feishu's algorithm differs from WeChat's although both say "AES-CBC":

* the AES-256 key is ``sha256(encrypt_key)`` (not a base64 key);
* the IV is the first 16 bytes of the decoded ciphertext (not a slice of the key);
* padding is PKCS#7 to the 16-byte AES block (not 32), checked byte by byte here;
* the signature is ``sha256_hex(timestamp + nonce + encrypt_key + raw body)``, a plain hash of the
  exact bytes received (re-serialized JSON would not match).

Sources: the official "Encrypt Key" configuration case (sample vector ``"test key"`` /
``P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk=`` -> ``hello world``) and lark-oapi's
``AESCipher`` and ``_verify_sign``; tests/test_feishu_crypto.py checks both.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from gateway.sdk import constant_time_equals

BLOCK = 16


class DecryptError(ValueError):
    """The envelope is not something this Encrypt Key produced (never says why in detail)."""


def aes_key(encrypt_key: str) -> bytes:
    return hashlib.sha256(encrypt_key.encode()).digest()


def decrypt(encrypt_key: str, encrypted: str) -> bytes:
    """The plaintext of an ``encrypt`` field; DecryptError for anything malformed or wrongly keyed."""
    try:
        raw = base64.b64decode(encrypted, validate=True)
    except (binascii.Error, ValueError):
        raise DecryptError("encrypt is not base64") from None
    if len(raw) < 2 * BLOCK or len(raw) % BLOCK:
        raise DecryptError("encrypt has an impossible length")
    decryptor = Cipher(algorithms.AES(aes_key(encrypt_key)), modes.CBC(raw[:BLOCK])).decryptor()
    padded = decryptor.update(raw[BLOCK:]) + decryptor.finalize()
    unpadder = padding.PKCS7(BLOCK * 8).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        # A wrong key almost always shows up here: the last block decrypts to noise.
        raise DecryptError("encrypt does not decrypt with this encrypt_key") from None


def encrypt(encrypt_key: str, plaintext: bytes, iv: bytes | None = None) -> str:
    """What Feishu does to a payload (used by tests and local fakes; the gateway only decrypts)."""
    iv = os.urandom(BLOCK) if iv is None else iv
    padder = padding.PKCS7(BLOCK * 8).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(aes_key(encrypt_key)), modes.CBC(iv)).encryptor()
    return base64.b64encode(iv + encryptor.update(padded) + encryptor.finalize()).decode("ascii")


def signature(timestamp: str, nonce: str, encrypt_key: str, body: bytes) -> str:
    """``X-Lark-Signature`` of a request: lowercase hex SHA-256 over the raw body bytes."""
    return hashlib.sha256((timestamp + nonce + encrypt_key).encode() + body).hexdigest()


def signature_matches(given: str, timestamp: str, nonce: str, encrypt_key: str, body: bytes) -> bool:
    return constant_time_equals(given.strip().lower(), signature(timestamp, nonce, encrypt_key, body))
