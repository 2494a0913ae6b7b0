"""Answer times of the Chinese channels' webhooks at a fixed offered rate (the platforms' deadlines).

Usage: .venv/bin/python -m bench.chinese_channels [--rate 200] [--seconds 10]

WeChat wants its answer within 5 s, WeCom's URL verification within 1 s, Feishu within 3 s (its
``url_verification`` challenge within 1 s); DingTalk's HTTP mode documents none. ``gateway serve``
runs as its own process against an embedded Tansu broker and a redis-server, with a WeChat
Official Account in safe mode, a WeCom 微信客服 account, a Feishu instance with an Encrypt Key and
a DingTalk instance. Each scenario is an open loop at ``--rate`` requests per second: WeChat URL
checks (GET ``echostr``) and encrypted text messages (a new ``MsgId`` each, answered ``success``
after the broker ack), WeCom URL verifications (decrypting ``echostr``) and ``kf_msg_or_event``
callbacks (answered at once; the pull they trigger goes to an unreachable API and is not timed),
Feishu challenges (encrypted, unsigned) and ``im.message.receive_v1`` events (encrypted and signed,
a new ``message_id`` each), DingTalk robot messages (a new ``msgId`` each). Every answer must be a
200; p50/p99/max are printed per scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from bench.common import GATEWAY, base_config, header, open_loop, percentile, processes, services, wait_listening
from gateway.embedded import free_port
from gateway.helpers.wxcrypto import WXBizMsgCrypt, sha1_signature
from plugins.dingtalk import sign as dingtalk_sign
from plugins.feishu import crypto

APP_ID = "cli_bench0000000000"
TOKEN = "bench-verification-token-0123456789"  # noqa: S105 - throwaway loopback secrets
ENCRYPT_KEY = "bench-encrypt-key-0123456789abcd"
APP_KEY = "dingbench000000000"
APP_SECRET = "bench-dingtalk-secret-0123456789abcdef"  # noqa: S105
TEXT = "你好，我的快递三天了还没到 📦 𠮷 订单 #8812"  # noqa: RUF001
WECHAT_TOKEN = "benchWeChatToken"  # noqa: S105
WECHAT_APP_ID = "wxbench0123456789"
WECHAT_AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
KF_CORP_ID = "wwbench0123456789"
KF_TOKEN = "benchKfToken"  # noqa: S105
KF_AES_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
wechat_crypto = WXBizMsgCrypt(WECHAT_TOKEN, WECHAT_AES_KEY, WECHAT_APP_ID)
kf_crypto = WXBizMsgCrypt(KF_TOKEN, KF_AES_KEY, KF_CORP_ID)

# (method, instance, query, body, headers)
Request = tuple[str, str, dict[str, str], bytes, dict[str, str]]


def wechat_query(nonce: str) -> dict[str, str]:
    ts = str(int(time.time()))
    return {"signature": sha1_signature(WECHAT_TOKEN, ts, nonce), "timestamp": ts, "nonce": nonce}


def wechat_url_check(i: int) -> Request:
    return "GET", "wechat", {**wechat_query(str(i)), "echostr": f"echo{i}"}, b"", {}


def wechat_message(i: int) -> Request:
    inner = (
        f"<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><FromUserName><![CDATA[o{i % 500:027d}]]></FromUserName>"
        f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
        f"<Content><![CDATA[{TEXT}]]></Content><MsgId>{time.time_ns() + i}</MsgId></xml>"
    )
    encrypted = wechat_crypto.encrypt(inner.encode())
    query = wechat_query(str(i))
    query |= {
        "encrypt_type": "aes",
        "msg_signature": wechat_crypto.signature(query["timestamp"], query["nonce"], encrypted),
    }
    body = f"<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
    return "POST", "wechat", query, body.encode(), {"Content-Type": "text/xml"}


def wecom_verification(i: int) -> Request:
    echostr = kf_crypto.encrypt(str(5927782489442352469 + i).encode())
    ts, nonce = str(int(time.time())), str(i)
    query = {
        "msg_signature": kf_crypto.signature(ts, nonce, echostr),
        "timestamp": ts,
        "nonce": nonce,
        "echostr": echostr,
    }
    return "GET", "wecom_kf", query, b"", {}


def wecom_callback(i: int) -> Request:
    inner = (
        f"<xml><ToUserName><![CDATA[{KF_CORP_ID}]]></ToUserName><CreateTime>{int(time.time())}</CreateTime>"
        "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[kf_msg_or_event]]></Event>"
        f"<Token><![CDATA[ENC{i}]]></Token><OpenKfId><![CDATA[wkbench{i % 5}]]></OpenKfId></xml>"
    )
    encrypted = kf_crypto.encrypt(inner.encode())
    ts, nonce = str(int(time.time())), str(i)
    query = {"msg_signature": kf_crypto.signature(ts, nonce, encrypted), "timestamp": ts, "nonce": nonce}
    body = f"<xml><ToUserName><![CDATA[{KF_CORP_ID}]]></ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
    return "POST", "wecom_kf", query, body.encode(), {"Content-Type": "text/xml"}


def feishu_challenge(i: int) -> Request:
    plain = json.dumps({"challenge": f"c-{i}", "token": TOKEN, "type": "url_verification"}).encode()
    body = json.dumps({"encrypt": crypto.encrypt(ENCRYPT_KEY, plain)}).encode()
    return "POST", "feishu", {}, body, {"Content-Type": "application/json"}


def feishu_message(i: int) -> Request:
    event = {
        "schema": "2.0",
        "header": {
            "event_id": f"ev-{i}",
            "token": TOKEN,
            "create_time": "1608725989000",
            "event_type": "im.message.receive_v1",
            "tenant_key": "t",
            "app_id": APP_ID,
        },
        "event": {
            "sender": {"sender_id": {"open_id": f"ou_{i % 500}"}, "sender_type": "user", "tenant_key": "t"},
            "message": {
                "message_id": f"om_bench_{time.time_ns()}_{i}",
                "create_time": "1609073151345",
                "chat_id": f"oc_{i % 500}",
                "chat_type": "p2p",
                "message_type": "text",
                "content": json.dumps({"text": TEXT}, ensure_ascii=False),
            },
        },
    }
    plain = json.dumps(event, ensure_ascii=False).encode()
    body = json.dumps({"encrypt": crypto.encrypt(ENCRYPT_KEY, plain)}).encode()
    ts, nonce = str(int(time.time())), str(i)
    return (
        "POST",
        "feishu",
        {},
        body,
        {
            "Content-Type": "application/json",
            "X-Lark-Request-Timestamp": ts,
            "X-Lark-Request-Nonce": nonce,
            "X-Lark-Signature": crypto.signature(ts, nonce, ENCRYPT_KEY, body),
        },
    )


def dingtalk_message(i: int) -> Request:
    message = {
        "msgtype": "text",
        "text": {"content": " " + TEXT},
        "msgId": f"msg_bench_{time.time_ns()}_{i}",
        "createAt": int(time.time() * 1000),
        "conversationType": "2",
        "conversationId": f"cid{i % 500}",
        "senderId": f"$:LWCP_v1:${i % 500}",
        "senderNick": "张三",
        "senderStaffId": f"staff{i % 500}",
        "robotCode": APP_KEY,
        "sessionWebhook": f"https://oapi.dingtalk.com/robot/sendBySession?session={i}",
        "sessionWebhookExpiredTime": int(time.time() * 1000) + 5_400_000,
    }
    ts = str(int(time.time() * 1000))
    headers = {"Content-Type": "application/json", "timestamp": ts, "sign": dingtalk_sign(ts, APP_SECRET)}
    return "POST", "dingtalk", {}, json.dumps(message, ensure_ascii=False).encode(), headers


SCENARIOS: dict[str, Callable[[int], Request]] = {
    "wechat URL check (5 s deadline)": wechat_url_check,
    "wechat safe-mode text (5 s deadline)": wechat_message,
    "wecom_kf URL verification (1 s deadline)": wecom_verification,
    "wecom_kf kf_msg_or_event callback (5 s)": wecom_callback,
    "feishu url_verification (1 s deadline)": feishu_challenge,
    "feishu im.message.receive_v1 (3 s deadline)": feishu_message,
    "dingtalk robot message": dingtalk_message,
}


async def scenario(url: str, make: Callable[[int], Request], rate: float, seconds: float) -> tuple[list[float], int]:
    samples: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> None:
            nonlocal errors
            method, instance, query, body, headers = make(i)
            started = time.perf_counter()
            async with session.request(method, url + instance, params=query, data=body, headers=headers) as response:
                await response.read()
                errors += response.status != 200
            samples.append((time.perf_counter() - started) * 1000)

        await open_loop(rate, seconds, one)
    samples.sort()
    return samples, errors


def write_config(path: Path, bootstrap: str, redis_url: str, port: int) -> None:
    prefix = f"benchcn{int(time.time())}."
    path.write_text(
        base_config(bootstrap, redis_url, port, prefix)
        + f"""
[channels.feishu]
type = "feishu"
app_id = "{APP_ID}"
verification_token = "env:BENCH_FEISHU_TOKEN"
encrypt_key = "env:BENCH_FEISHU_KEY"

[channels.wechat]
type = "wechat"
token = "env:BENCH_WECHAT_TOKEN"
app_id = "{WECHAT_APP_ID}"
app_secret = "env:BENCH_WECHAT_SECRET"
encoding_aes_key = "env:BENCH_WECHAT_AES_KEY"

[channels.wecom_kf]
type = "wecom_kf"
corp_id = "{KF_CORP_ID}"
token = "env:BENCH_KF_TOKEN"
encoding_aes_key = "env:BENCH_KF_AES_KEY"
secret = "env:BENCH_KF_SECRET"
base_url = "http://127.0.0.1:9"  # the pulls a callback starts fail fast; only the answers are timed

[channels.dingtalk]
type = "dingtalk"
app_key = "{APP_KEY}"
app_secret = "env:BENCH_DINGTALK_SECRET"
"""
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="offered rate per scenario (req/s)")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each scenario")
    args = parser.parse_args()
    results: dict[str, tuple[list[float], int]] = {}
    with services() as svc, tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        config = Path(tmp) / "gateway.toml"
        write_config(config, svc.bootstrap, svc.redis_url, port)
        secrets = {
            "BENCH_FEISHU_TOKEN": TOKEN,
            "BENCH_FEISHU_KEY": ENCRYPT_KEY,
            "BENCH_DINGTALK_SECRET": APP_SECRET,
            "BENCH_WECHAT_TOKEN": WECHAT_TOKEN,
            "BENCH_WECHAT_SECRET": "bench-wechat-secret-0123456789",
            "BENCH_WECHAT_AES_KEY": WECHAT_AES_KEY,
            "BENCH_KF_TOKEN": KF_TOKEN,
            "BENCH_KF_AES_KEY": KF_AES_KEY,
            "BENCH_KF_SECRET": "bench-kf-secret-0123456789",
        }
        with processes([GATEWAY, "serve", "--config", str(config)], env=secrets):
            await wait_listening(port)
            url = f"http://127.0.0.1:{port}/webhooks/"
            for make in SCENARIOS.values():  # warm up: connections, topic metadata, caches
                await scenario(url, make, args.rate, 1.0)
            for name, make in SCENARIOS.items():
                results[name] = await scenario(url, make, args.rate, args.seconds)
    print(header())
    print(f"open loop at {args.rate:.0f} req/s for {args.seconds:.0f} s per scenario:")
    for name, (samples, errors) in results.items():
        print(
            f"  {name:44} p50 {percentile(samples, 0.5):6.1f} ms  p99 {percentile(samples, 0.99):6.1f} ms"
            f"  max {samples[-1]:6.1f} ms  non-200 {errors} of {len(samples)}"
        )


if __name__ == "__main__":
    asyncio.run(main())
