"""Property-based fuzzing of the WeChat and WeCom 微信客服 webhooks over the real app, broker and Redis.

The same setup as tests/test_fuzz.py (the gateway in a background thread, driven with http.client),
with a WeChat plaintext-mode and safe-mode instance and a wecom_kf instance (whose pulls go to a
closed local port: the callbacks are what is fuzzed here). XML-shaped bodies (WeChat's tags, random tags,
deep nesting, DTDs and entities, invalid UTF-8, huge strings, random bytes), signed correctly or
not, encrypted for the safe-mode instance or not. Properties:

* never a 5xx (there is no outage here), whatever arrives;
* without the right signature (or, in safe mode, msg_signature and ciphertext), nothing is stored;
* correctly signed input is answered 200 (``success`` or quarantined) or 413, and stores at most one
  inbound record per ``success`` and one DLQ record per quarantine (dedup may store fewer).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.plugins import PluginRegistry
from gateway.sdk import WXBizMsgCrypt, sha1_signature
from tests.fuzz_server import Served, served_gateway
from tests.test_wechat import AES_KEY, APP_ID, PLAIN, SAFE, TOKEN
from tests.test_wecom_kf import SETTINGS as KF_SETTINGS

LIMIT = 65536
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
CHANNELS = {
    "wechat": {"type": "wechat", **PLAIN, "max_body_bytes": LIMIT},
    "wechat-safe": {"type": "wechat", **SAFE, "max_body_bytes": LIMIT},
    "kf": {"type": "wecom_kf", **KF_SETTINGS, "max_body_bytes": LIMIT, "base_url": "http://127.0.0.1:9"},
}
CRYPTO = WXBizMsgCrypt(TOKEN, AES_KEY, APP_ID)
KF_CRYPTO = WXBizMsgCrypt(KF_SETTINGS["token"], KF_SETTINGS["encoding_aes_key"], KF_SETTINGS["corp_id"])
kf_fields = st.fixed_dictionaries(
    {"MsgType": st.just("event"), "Event": st.sampled_from(["kf_msg_or_event", "other", ""])},
    optional={"Token": st.text(max_size=20), "OpenKfId": st.text(max_size=20), "ToUserName": st.text(max_size=10)},
)


@pytest.fixture(scope="module")
def served(kafka_bootstrap: str, redis_url: str, registry: PluginRegistry) -> Iterator[Served]:
    with served_gateway(kafka_bootstrap, redis_url, registry, CHANNELS) as result:
        result.expected["max_inbound"] = result.expected["inbound"]
        result.expected["max_dlq"] = result.expected["dlq"]
        yield result


# --- strategies ---------------------------------------------------------------------------------

TAGS = ["ToUserName", "FromUserName", "CreateTime", "MsgType", "Content", "MsgId", "Event", "EventKey", "MediaId"]
tags = st.sampled_from(TAGS) | st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
texts = st.text(max_size=60) | st.sampled_from(["text", "event", "image", "subscribe", "qrscene_1", "LOCATION", "😀𠀀"])


def _escape(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _element(tag: str, value: str, cdata: bool) -> str:
    if cdata and "]]>" not in value:
        return f"<{tag}><![CDATA[{value}]]></{tag}>"
    return f"<{tag}>{_escape(value)}</{tag}>"


elements = st.recursive(
    st.builds(_element, tags, texts, st.booleans()),
    lambda children: st.builds(lambda t, kids: f"<{t}>{''.join(kids)}</{t}>", tags, st.lists(children, max_size=4)),
    max_leaves=12,
)
documents = st.builds(lambda kids: "<xml>" + "".join(kids) + "</xml>", st.lists(elements, max_size=10)).map(str.encode)
plausible = st.builds(
    lambda msg_type, content, msg_id, sender, when: (
        f"<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[{sender}]]></FromUserName>"
        f"<CreateTime>{when}</CreateTime><MsgType><![CDATA[{msg_type}]]></MsgType>{content}"
        f"<MsgId>{msg_id}</MsgId></xml>"
    ).encode(),
    st.sampled_from(["text", "image", "voice", "video", "location", "link", "event", "nonsense", ""]),
    st.lists(elements, max_size=5).map("".join),
    st.integers(-(2**70), 2**70),
    st.text(st.characters(blacklist_characters="]", blacklist_categories=("Cc", "Cs")), min_size=1, max_size=30),
    st.integers(-(2**70), 2**70) | st.text(max_size=10).map(_escape),
)
bodies = st.one_of(
    plausible,
    plausible,
    documents,
    st.binary(max_size=1024),
    st.integers(1, 40_000).map(lambda n: b"<xml>" + b"<a>" * n + b"</a>" * n + b"</xml>"),  # deep nesting
    st.integers(1, 3).map(lambda n: b"<xml><Content>" + "订😀".encode() * (n * 9000) + b"</Content></xml>"),
    st.binary(min_size=1, max_size=64).map(lambda junk: b"<xml><Content>" + junk + b"\xff\xfe</Content></xml>"),
    st.just(b'<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]><xml><Content>&b;</Content></xml>'),
    st.just(b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><xml><Content>&e;</Content></xml>'),
)
queries = st.dictionaries(
    st.sampled_from(["signature", "timestamp", "nonce", "msg_signature", "encrypt_type", "echostr"])
    | st.text(max_size=8),
    st.text(max_size=50),
    max_size=5,
)


def signed_query(nonce: str = "n1") -> dict[str, str]:
    ts = str(int(time.time()))
    return {"signature": sha1_signature(TOKEN, ts, nonce), "timestamp": ts, "nonce": nonce}


def encrypted(body: bytes, q: dict[str, str], crypto: WXBizMsgCrypt = CRYPTO) -> bytes:
    cipher = crypto.encrypt(body)
    q["encrypt_type"] = "aes"
    q["msg_signature"] = crypto.signature(q["timestamp"], q["nonce"], cipher)
    return f"<xml><ToUserName><![CDATA[gh_1]]></ToUserName><Encrypt><![CDATA[{cipher}]]></Encrypt></xml>".encode()


def no_server_error(status: int, answer: bytes) -> None:
    event(f"status {status}")
    assert status < 500, (status, answer[:300])


# --- properties ---------------------------------------------------------------------------------


@FUZZ
@given(
    instance=st.sampled_from(list(CHANNELS)),
    method=st.sampled_from(["POST", "POST", "GET"]),
    body=bodies,
    q=queries,
    wrong=st.sampled_from(["token", "timestamp", "msg_signature", "none"]),
)
def test_unauthenticated_requests_store_nothing(
    served: Served, instance: str, method: str, body: bytes, q: dict[str, str], wrong: str
) -> None:
    if wrong == "token":  # signed with another token
        ts = str(int(time.time()))
        q = {**q, "signature": sha1_signature("another-token", ts, "n"), "timestamp": ts, "nonce": "n"}
    elif wrong == "timestamp":  # a signature captured an hour ago
        ts = str(int(time.time()) - 3600)
        q = {**q, "signature": sha1_signature(TOKEN, ts, "n"), "timestamp": ts, "nonce": "n"}
    elif wrong == "msg_signature" and instance != "wechat":  # right signature, forged ciphertext signature
        q = signed_query()
        body = encrypted(body, q, KF_CRYPTO if instance == "kf" else CRYPTO)
        q["msg_signature"] = "0" * 40
    path = f"/webhooks/{instance}?{urlencode(q)}"
    status, answer, _ = served.request(method, path, body, {"Content-Type": "text/xml"})
    no_server_error(status, answer)
    if method == "POST":
        assert status in (401, 413), (status, answer[:300])
    else:
        assert status in (400, 401), status


def test_unauthenticated_input_left_every_topic_untouched(served: Served) -> None:
    sizes = served.sizes()
    assert sizes["inbound"] == served.expected["inbound"] and sizes["dlq"] == served.expected["dlq"]


def kf_document(fields: dict[str, str]) -> bytes:
    inner = "".join(f"<{k}><![CDATA[{v.replace(']]>', '')}]]></{k}>" for k, v in fields.items())
    return f"<xml>{inner}</xml>".encode()


@FUZZ
@given(
    instance=st.sampled_from(list(CHANNELS)),
    body=bodies | kf_fields.map(kf_document),
    nonce=st.text(min_size=1, max_size=20),
)
def test_signed_input_is_answered_and_stored_only_as_promised(
    served: Served, instance: str, body: bytes, nonce: str
) -> None:
    q = signed_query(nonce)
    if instance == "wechat-safe":
        body = encrypted(body, q)
    elif instance == "kf":
        body = encrypted(body, q, KF_CRYPTO)
    status, answer, _ = served.request(
        "POST", f"/webhooks/{instance}?{urlencode(q)}", body, {"Content-Type": "text/xml"}
    )
    no_server_error(status, answer)
    assert status in (200, 413), (status, answer[:300])
    if status == 413:
        return
    if answer == b"success":
        event(f"{instance}: success")
        served.expected["max_inbound"] += 1
        served.expected["max_dlq"] += 1  # a message the model refuses is quarantined behind "success"
        return
    reply = json.loads(answer)
    assert reply["status"] == "quarantined", reply
    event(f"{instance}: quarantined")
    served.expected["max_dlq"] += 1


def test_topics_hold_no_more_than_the_answers_promised(served: Served) -> None:
    sizes = served.sizes()
    assert sizes["inbound"] <= served.expected["max_inbound"]
    assert sizes["dlq"] <= served.expected["max_dlq"]
    status, answer, _ = served.request(
        "GET", f"/webhooks/wechat?{urlencode({**signed_query(), 'echostr': 'still-here'})}"
    )
    assert (status, answer) == (200, b"still-here")
