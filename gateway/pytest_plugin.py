"""The ``pytest11`` entry point ``gateway``: gateway.testing's fixtures for gateway and plugin tests.

pytest loads every installed pytest11 plugin, so this must not break the test runs of projects that
merely have the gateway installed: without the ``testing`` extra (pytest-asyncio, which the
fixtures need) it adds nothing. Disable it with ``-p no:gateway``.
"""

try:
    import pytest_asyncio  # noqa: F401
except ImportError:
    pass
else:
    from gateway.testing.plugin import *  # noqa: F403
