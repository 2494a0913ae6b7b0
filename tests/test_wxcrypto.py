"""gateway.sdk.WXBizMsgCrypt against the published sample vectors and against wechatpy.

The vectors are the ones Tencent's WXBizMsgCrypt sample code ships with (the Official Account's
Java test with a fixed random prefix, the WeCom C#/Python samples, and the Node port's OA sample):
if these decrypt and encrypt byte for byte, so does WeChat. wechatpy (a test-only dependency) is an
independent implementation: whatever one side encrypts and signs, the other opens and accepts.
"""

from __future__ import annotations

import base64
import re

import pytest
from wechatpy.crypto import WeChatCrypto
from wechatpy.enterprise.crypto import WeChatCrypto as WorkCrypto
from wechatpy.utils import check_signature

from gateway.sdk import WXBizMsgCrypt, WxCryptoError, check_sha1_signature, sha1_signature

# Official Account Java sample (WXBizMsgCryptTest): fixed random prefix, Chinese text.
JAVA_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
JAVA_APPID = "wxb11529c136998cb6"
JAVA_CIPHERTEXT = "jn1L23DB+6ELqJ+6bruv21Y6MD7KeIfP82D6gU39rmkgczbWwt5+3bnyg5K55bgVtVzd832WzZGMhkP72vVOfg=="

# WeCom sample (Sample.cs / Sample.py): a POST body and the URL verification echostr.
CORP_TOKEN = "QDG6eK"
CORP_ID = "wx5823bf96d3bd56c7"
CORP_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
CORP_ENCRYPT = (
    "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/sYYvuJTs3T"
    "UUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsij"
    "ff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5"
    "wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHB"
    "ZZIs2pDBS8R07+qN+E7Q=="
)
CORP_ECHOSTR = "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ=="

# Official Account sample of the Node port (the same one wechatpy's tests use).
OA_TOKEN = "spamtest"
OA_APPID = "wx2c2769f8efd9abc2"
OA_ENCRYPT = (
    "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHFVAFmOD2LdJF9FrXp"
    "bUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDYsVticbSnyU8dKOIbgU6ux5VTjg3yt+WGzjlp"
    "Kn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EIBYYI1BD"
    "1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE="
)

OTHER_KEY = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG"
CHINESE = "我的订单还没到😀𠀀𪚥 𫝀，请尽快处理".encode()  # noqa: RUF001  4-byte emoji and CJK extension B/C/D characters


def test_official_account_java_vector_encrypts_byte_for_byte() -> None:
    crypto = WXBizMsgCrypt("pamtest", JAVA_KEY, JAVA_APPID)
    message = "我是中文abcd123".encode()
    assert crypto.encrypt(message, random16=b"aaaabbbbccccdddd") == JAVA_CIPHERTEXT
    assert crypto.decrypt(JAVA_CIPHERTEXT).plaintext == message


def test_wecom_sample_post_and_url_verification() -> None:
    crypto = WXBizMsgCrypt(CORP_TOKEN, CORP_KEY, CORP_ID)
    opened = crypto.decrypt_message(
        "477715d11cdb4164915debcba66cb864d751f3e6", "1409659813", "1372623149", CORP_ENCRYPT
    )
    assert b"<Content><![CDATA[hello]]></Content>" in opened.plaintext
    assert b"<MsgId>4561255354251345929</MsgId>" in opened.plaintext and not opened.previous_key
    assert crypto.check_signature("5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3", "1409659589", "263014780", CORP_ECHOSTR)
    assert crypto.decrypt(CORP_ECHOSTR).plaintext == b"1616140317555161061"


def test_official_account_node_sample() -> None:
    crypto = WXBizMsgCrypt(OA_TOKEN, JAVA_KEY, OA_APPID)
    opened = crypto.decrypt_message("5d197aaffba7e9b25a30732f161a50dee96bd5fa", "1409735669", "1320562132", OA_ENCRYPT)
    assert b"<FromUserName><![CDATA[oyORnuP8q7ou2gfYjqLzSIWZf0rs]]></FromUserName>" in opened.plaintext
    assert b"<Content><![CDATA[abcdteT]]></Content>" in opened.plaintext


def test_signature_is_sha1_of_the_sorted_parts() -> None:
    assert sha1_signature("b", "a", "c") == sha1_signature("c", "b", "a")
    signature = sha1_signature("token", "1409659813", "nonce")
    assert check_sha1_signature(signature.upper(), "token", "1409659813", "nonce")
    assert not check_sha1_signature(signature, "token", "1409659814", "nonce")
    assert not check_sha1_signature(None, "token") and not check_sha1_signature("", "token")
    assert check_signature("token", signature, "1409659813", "nonce") is None  # wechatpy agrees (raises if not)


def test_wrong_receive_id_wrong_key_and_garbage_are_refused() -> None:
    ours = WXBizMsgCrypt("tok", JAVA_KEY, "wx-ours")
    theirs = WXBizMsgCrypt("tok", JAVA_KEY, "wx-theirs")
    with pytest.raises(WxCryptoError, match="receive id"):
        ours.decrypt(theirs.encrypt(b"<xml/>"))
    with pytest.raises(WxCryptoError):
        WXBizMsgCrypt("tok", OTHER_KEY, "wx-ours").decrypt(ours.encrypt(b"<xml/>"))
    for garbage in ("", "not base64!", base64.b64encode(b"x" * 15).decode(), base64.b64encode(b"\0" * 32).decode()):
        with pytest.raises(WxCryptoError):
            ours.decrypt(garbage)
    encrypted = ours.encrypt(b"<xml/>")
    signature = ours.signature("1", "2", encrypted)
    wrong = signature[:-1] + ("1" if signature.endswith("0") else "0")  # one in 16 ends in "0" already
    with pytest.raises(WxCryptoError, match="msg_signature"):
        ours.decrypt_message(wrong, "1", "2", encrypted)


@pytest.mark.parametrize("key", ["short", JAVA_KEY + "A", JAVA_KEY[:-1] + "=", JAVA_KEY[:-1] + "_"])
def test_malformed_keys_are_refused(key: str) -> None:
    with pytest.raises(WxCryptoError):
        WXBizMsgCrypt("tok", key, "wx1")


def test_key_rotation_tries_the_previous_key_and_replies_with_it() -> None:
    old = WXBizMsgCrypt("tok", JAVA_KEY, OA_APPID)
    rotated = WXBizMsgCrypt("tok", OTHER_KEY, OA_APPID, previous_encoding_aes_key=JAVA_KEY)
    opened = rotated.decrypt(old.encrypt(CHINESE))
    assert opened.plaintext == CHINESE and opened.previous_key and opened.key == old.key
    reply = rotated.encrypt_reply("<xml>回复</xml>".encode(), "1409735669", "n1", key=opened.key)
    encrypted = re.search(rb"<Encrypt><!\[CDATA\[(.*?)\]\]>", reply)
    assert encrypted is not None
    assert old.decrypt(encrypted.group(1).decode()).plaintext == "<xml>回复</xml>".encode()  # the sender's key
    fresh = rotated.decrypt(rotated.encrypt(b"<xml/>"))
    assert not fresh.previous_key and fresh.key == rotated.key
    with pytest.raises(WxCryptoError):  # without the previous key, old messages are refused
        WXBizMsgCrypt("tok", OTHER_KEY, OA_APPID).decrypt(old.encrypt(b"<xml/>"))


@pytest.mark.parametrize("plaintext", [b"", b"x", b"y" * 12, b"z" * 32, CHINESE, "<xml>😀</xml>".encode() * 50])
def test_padding_round_trips_at_every_length(plaintext: bytes) -> None:
    crypto = WXBizMsgCrypt("tok", JAVA_KEY, OA_APPID)
    encrypted = crypto.encrypt(plaintext)
    assert len(base64.b64decode(encrypted)) % 32 == 0
    assert crypto.decrypt(encrypted).plaintext == plaintext


def _xml(text: str) -> str:
    return (
        "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[oU1]]></FromUserName>"
        f"<CreateTime>1409735668</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{text}]]></Content>"
        "<MsgId>6054768590064713728</MsgId></xml>"
    )


def test_wechatpy_opens_what_we_encrypt_and_sign() -> None:
    ours = WXBizMsgCrypt(OA_TOKEN, JAVA_KEY, OA_APPID)
    plaintext = _xml(CHINESE.decode())
    reply = ours.encrypt_reply(plaintext.encode(), "1409735669", "1320562132")
    signature = re.search(rb"<MsgSignature><!\[CDATA\[(\w+)\]\]>", reply)
    assert signature is not None
    theirs = WeChatCrypto(OA_TOKEN, JAVA_KEY, OA_APPID)
    opened = theirs.decrypt_message(reply.decode(), signature.group(1).decode(), "1409735669", "1320562132")
    assert opened == plaintext


def test_we_open_what_wechatpy_encrypts_and_signs() -> None:
    theirs = WeChatCrypto(OA_TOKEN, JAVA_KEY, OA_APPID)
    plaintext = _xml(CHINESE.decode())
    envelope = theirs.encrypt_message(plaintext, "1320562132", "1409735669")
    encrypted = re.search(r"<Encrypt><!\[CDATA\[(.*?)\]\]>", envelope)
    signature = re.search(r"<MsgSignature><!\[CDATA\[(\w+)\]\]>", envelope)
    assert encrypted is not None and signature is not None
    ours = WXBizMsgCrypt(OA_TOKEN, JAVA_KEY, OA_APPID)
    opened = ours.decrypt_message(signature.group(1), "1409735669", "1320562132", encrypted.group(1))
    assert opened.plaintext == plaintext.encode()
    assert ours.signature("1409735669", "1320562132", encrypted.group(1)) == signature.group(1)


def test_wecom_echostr_agrees_with_wechatpy_work_crypto() -> None:
    theirs = WorkCrypto(CORP_TOKEN, CORP_KEY, CORP_ID)
    ours = WXBizMsgCrypt(CORP_TOKEN, CORP_KEY, CORP_ID)
    signature = "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3"
    expected = theirs.check_signature(signature, "1409659589", "263014780", CORP_ECHOSTR)
    assert ours.decrypt_message(signature, "1409659589", "263014780", CORP_ECHOSTR).plaintext.decode() == expected
    echostr = ours.encrypt("中文回声😀".encode())
    assert theirs.check_signature(ours.signature("1", "2", echostr), "1", "2", echostr) == "中文回声😀"
