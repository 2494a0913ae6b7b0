"""Customer satisfaction surveys (``csat`` processor); docs/processors/csat.md.

A package by role: ``settings`` (templates, reply windows), ``ratings`` (reading a rating out of a
typed answer), ``state`` (the conversation's survey state in Redis, one Lua script per message),
``processor`` (deciding, building the survey, the conversation events).
"""

from __future__ import annotations

from typing import Any

from gateway.sdk import hookimpl
from plugins.csat.processor import Csat
from plugins.csat.ratings import RatingParser
from plugins.csat.settings import CsatSettings, SurveyTemplate

__all__ = ["Csat", "CsatSettings", "RatingParser", "SurveyTemplate"]


@hookimpl
def register_processors(register: Any) -> None:
    register(Csat)
