"""The ``template`` channel plugin for the message gateway (distribution ``gateway-channel-template``).

The gateway finds it through the ``gateway`` entry point in pyproject.toml, which names
``gateway_channel_template.channel``: that module's hook registers the adapter.
"""

__version__ = "0.1.0"
