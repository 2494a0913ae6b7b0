"""WXBizMsgCrypt: the callback signatures and message encryption of WeChat, WeCom and DingTalk.

One scheme serves the WeChat Official Account (safe and compatible mode), WeCom app and 微信客服
callbacks and DingTalk's event callbacks, so it lives here once, exported by ``gateway.sdk``:

- signatures are ``sha1(''.join(sorted(parts)))`` in hex: ``[token, timestamp, nonce]`` for the
  Official Account's ``signature``, plus the ciphertext (or WeCom's ``echostr``) for
  ``msg_signature``; every comparison is constant-time;
- the AES key is ``base64(EncodingAESKey + "=")`` (43 characters give 32 bytes); AES-256-CBC with
  IV = key[:16], PKCS#7 padding to 32-byte blocks;
- the plaintext is ``random(16) + len(msg) as 4 bytes big-endian + msg + receive id`` (the app id,
  the corp id, or "" for WeCom bots); decryption checks the receive id, so a message encrypted for
  another app is refused;
- the XML documents themselves (:func:`parse_wx_xml`): flat ``<xml>`` elements, parsed by defusedxml
  without DTDs or entities (no billion laughs, no external entities);
- key rotation: WeChat's console lets the operator change the EncodingAESKey, and messages under
  the previous key keep arriving for a while. The previous key is tried after the current one and
  :class:`Decrypted` says which worked, so a passive reply is encrypted with that same key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import struct
from dataclasses import dataclass
from xml.etree.ElementTree import Element, ParseError

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from gateway.signing import constant_time_equals

BLOCK = 32  # PKCS#7 block size of the scheme (not AES's 16)
_KEY_FORMAT = re.compile(r"[A-Za-z0-9]{43}")


class WxCryptoError(Exception):
    """A signature, key or ciphertext the scheme refuses; the message names no secret."""


class WxXmlError(Exception):
    """The body is not a usable WeChat/WeCom XML document."""


def parse_wx_xml(body: bytes) -> dict[str, str]:
    """The children of the root ``<xml>`` as {tag: text} (nested elements as their joined text;
    the first occurrence of a tag wins). Refuses DTDs, entity declarations and other roots."""
    try:
        root = fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except (ParseError, DefusedXmlException, ValueError) as exc:
        raise WxXmlError(f"body is not well-formed XML without DTD: {type(exc).__name__}") from None
    if not isinstance(root, Element) or root.tag != "xml":
        raise WxXmlError("the root element is not <xml>")
    fields: dict[str, str] = {}
    for child in root:
        if isinstance(child.tag, str):
            fields.setdefault(child.tag, (child.text or "").strip() if len(child) == 0 else "".join(child.itertext()))
    return fields


def sha1_signature(*parts: str) -> str:
    """``sha1`` over the sorted, concatenated parts (the WeChat/WeCom callback signature)."""
    return hashlib.sha1("".join(sorted(parts)).encode(), usedforsecurity=False).hexdigest()


def check_sha1_signature(signature: str | None, *parts: str) -> bool:
    """Whether ``signature`` is :func:`sha1_signature` of ``parts`` (constant-time, hex case-insensitive)."""
    if not signature:
        return False
    return constant_time_equals(signature.strip().lower(), sha1_signature(*parts))


def aes_key(encoding_aes_key: str) -> bytes:
    """The 32-byte AES key of a 43-character EncodingAESKey; WxCryptoError if it is not one."""
    if not _KEY_FORMAT.fullmatch(encoding_aes_key):
        raise WxCryptoError("an EncodingAESKey is 43 characters of [A-Za-z0-9]")
    key = base64.b64decode(encoding_aes_key + "=")
    if len(key) != 32:  # cannot happen for 43 base64 characters; kept as the scheme's invariant
        raise WxCryptoError("the EncodingAESKey does not decode to 32 bytes")
    return key


def pkcs7_pad(data: bytes, block: int = BLOCK) -> bytes:
    pad = block - len(data) % block
    return data + bytes([pad]) * pad


def pkcs7_unpad(data: bytes, block: int = BLOCK) -> bytes:
    if not data:
        raise WxCryptoError("empty plaintext")
    pad = data[-1]
    if not 1 <= pad <= block or pad > len(data):
        raise WxCryptoError("bad padding")
    return data[:-pad]


@dataclass(frozen=True, slots=True)
class Decrypted:
    """A decrypted message and the key that opened it (reply with the same key)."""

    plaintext: bytes
    key: bytes
    previous_key: bool  # True when only the previous EncodingAESKey worked


class WXBizMsgCrypt:
    """Signatures and AES for one app: its token, current (and previous) key and receive id."""

    def __init__(
        self,
        token: str,
        encoding_aes_key: str,
        receive_id: str,
        previous_encoding_aes_key: str | None = None,
    ) -> None:
        self.token = token
        self.receive_id = receive_id.encode()
        self.key = aes_key(encoding_aes_key)
        self.previous_key = aes_key(previous_encoding_aes_key) if previous_encoding_aes_key else None

    # -- signatures ------------------------------------------------------------------------------

    def signature(self, timestamp: str, nonce: str, encrypted: str) -> str:
        """``msg_signature`` of a ciphertext (or WeCom's ``echostr``)."""
        return sha1_signature(self.token, timestamp, nonce, encrypted)

    def check_signature(self, msg_signature: str | None, timestamp: str, nonce: str, encrypted: str) -> bool:
        return check_sha1_signature(msg_signature, self.token, timestamp, nonce, encrypted)

    # -- AES ---------------------------------------------------------------------------------------

    def encrypt(self, message: bytes, *, key: bytes | None = None, random16: bytes | None = None) -> str:
        """Base64 ciphertext of ``message`` (``key``: the one a decryption returned; default current)."""
        nonce = os.urandom(16) if random16 is None else random16
        if len(nonce) != 16:
            raise WxCryptoError("the random prefix is 16 bytes")
        use = self.key if key is None else key
        plain = pkcs7_pad(nonce + struct.pack(">I", len(message)) + message + self.receive_id)
        encryptor = Cipher(algorithms.AES(use), modes.CBC(use[:16])).encryptor()
        return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode("ascii")

    def decrypt(self, encrypted: str) -> Decrypted:
        """The message inside a Base64 ciphertext, with the current key, else the previous one."""
        try:
            data = base64.b64decode(encrypted.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise WxCryptoError("the ciphertext is not Base64") from None
        if not data or len(data) % 16:
            raise WxCryptoError("the ciphertext is not a whole number of AES blocks")
        error = WxCryptoError("undecryptable")
        for key, previous in ((self.key, False), (self.previous_key, True)):
            if key is None:
                continue
            try:
                return Decrypted(self._open(key, data), key, previous)
            except WxCryptoError as exc:
                error = exc
        raise error

    def _open(self, key: bytes, data: bytes) -> bytes:
        decryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
        plain = pkcs7_unpad(decryptor.update(data) + decryptor.finalize())
        if len(plain) < 20:
            raise WxCryptoError("the plaintext is too short")
        (length,) = struct.unpack(">I", plain[16:20])
        if 20 + length > len(plain):
            raise WxCryptoError("the length field exceeds the plaintext")
        message, receive_id = plain[20 : 20 + length], plain[20 + length :]
        if not constant_time_equals(receive_id, self.receive_id):
            raise WxCryptoError("the message is for another receive id (app id / corp id)")
        return message

    # -- whole messages ----------------------------------------------------------------------------

    def decrypt_message(self, msg_signature: str | None, timestamp: str, nonce: str, encrypted: str) -> Decrypted:
        """Check ``msg_signature`` over the ciphertext, then decrypt it."""
        if not self.check_signature(msg_signature, timestamp, nonce, encrypted):
            raise WxCryptoError("msg_signature does not match")
        return self.decrypt(encrypted)

    def encrypt_reply(self, reply: bytes, timestamp: str, nonce: str, *, key: bytes | None = None) -> bytes:
        """A passive reply in safe mode: the ``<xml>`` envelope with Encrypt and MsgSignature."""
        encrypted = self.encrypt(reply, key=key)
        signature = self.signature(timestamp, nonce, encrypted)
        return (
            f"<xml><Encrypt><![CDATA[{encrypted}]]></Encrypt><MsgSignature><![CDATA[{signature}]]></MsgSignature>"
            f"<TimeStamp>{timestamp}</TimeStamp><Nonce><![CDATA[{nonce}]]></Nonce></xml>"
        ).encode()
