"""Choice menus of the Official Account: numeric item ids, mapped back to the choices in Redis.

WeChat keeps a msgmenu item's ``id`` only when it is a number: a string id is dropped and the tap
comes back with an id of WeChat's own (microsoft/BotFramework-WeChat#47; the 2021-2022 threads of
WeChat's developer community). A choice id ("csat:<survey>:5") cannot travel, so each menu sent to
a user gets a number ``n`` (a counter per user) and its items the ids ``n * 100 + position``; the
choices are kept under ``n`` for ``ttl_s``. The tap (a text message with ``bizmsgmenuid``) is
mapped back before the message is parsed. A tap whose id maps to nothing (expired, or the ``0``
a 2026 report says WeChat sent) is matched by its text against the user's latest menu.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from gateway.sdk import ChannelServices, Choice, StoreUnavailable

STATE = "wechat-menu"
POSITIONS = 100  # item id = menu number * 100 + position (1-99)
MAX_MENU_NUMBER = 20_000_000  # ids stay below 2**31, whatever integer type WeChat parses them into

_items = msgspec.json.Decoder(list[tuple[str, str]])


@dataclass(frozen=True, slots=True)
class Pick:
    """The choice a tap named: its id (the postback payload) and title."""

    id: str
    title: str


class ChoiceMenus:
    """Where the choices of the menus sent to each user are kept (Redis, with a TTL)."""

    def __init__(self, services: ChannelServices, app_id: str, ttl_s: int) -> None:
        self.store = services.store
        self.app_id = app_id
        self.ttl_s = ttl_s

    def _key(self, openid: str, part: str) -> str:
        return self.store.key(STATE, self.app_id, openid, part)

    async def allocate(self, openid: str, choices: list[Choice]) -> list[str]:
        """The item ids of a new menu for ``openid`` (StoreUnavailable when Redis fails)."""
        client = self.store.client
        counter = self._key(openid, "seq")
        items = msgspec.json.encode([(choice.id, choice.title) for choice in choices])
        try:
            sequence = int(await client.incr(counter))
            number = (sequence - 1) % MAX_MENU_NUMBER + 1
            async with client.pipeline(transaction=True) as pipe:
                pipe.expire(counter, self.ttl_s)
                pipe.set(self._key(openid, str(number)), items, ex=self.ttl_s)
                await pipe.execute()
        except Exception as exc:
            raise StoreUnavailable(f"wechat menu ids: {type(exc).__name__}") from exc
        return [str(number * POSITIONS + position) for position in range(1, len(choices) + 1)]

    async def resolve(self, openid: str, menu_id: str, text: str) -> Pick | None:
        """The choice a tap on item ``menu_id`` (showing ``text``) picked, if a menu of ours had it."""
        client = self.store.client
        try:
            if menu_id.isascii() and menu_id.isdigit():
                number, position = divmod(int(menu_id), POSITIONS)
                if number and position:
                    pick = _at(await client.get(self._key(openid, str(number))), position)
                    if pick is not None:
                        return pick
            latest = await client.get(self._key(openid, "seq"))
            if latest is None or not text:
                return None
            number = (int(latest) - 1) % MAX_MENU_NUMBER + 1
            return _titled(await client.get(self._key(openid, str(number))), text)
        except Exception as exc:
            raise StoreUnavailable(f"wechat menu ids: {type(exc).__name__}") from exc


def _choices(raw: bytes | str | None) -> list[tuple[str, str]]:
    if raw is None:
        return []
    try:
        return _items.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return []


def _at(raw: bytes | str | None, position: int) -> Pick | None:
    items = _choices(raw)
    if 1 <= position <= len(items):
        choice_id, title = items[position - 1]
        return Pick(choice_id, title)
    return None


def _titled(raw: bytes | str | None, text: str) -> Pick | None:
    matches = [Pick(choice_id, title) for choice_id, title in _choices(raw) if title == text]
    return matches[0] if len(matches) == 1 else None
