"""The identity processor: stamps that the pipeline saw the message and changes nothing else.

It keeps the worker path honest before real processors exist, and is a minimal example of the
processor API.
"""

from __future__ import annotations

from typing import Any

from gateway.sdk import Message, Processor, ProcessorContext, hookimpl


class Passthrough(Processor):
    name = "passthrough"
    description = "Identity processor: records that the message went through the pipeline."

    async def process(self, message: Message, ctx: ProcessorContext) -> Message:
        message.trace["processed_at"] = ctx.clock().isoformat()
        return message


@hookimpl
def register_processors(register: Any) -> None:
    register(Passthrough)
