"""`gateway console hash-password` and `gateway console login-link`: what an admin needs to give
people access without a password ever being written into a file."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from gateway.config import ConfigError, load_config


@click.group()
def console() -> None:
    """The operator console (docs/console.md)."""


@console.command("hash-password")
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the password from standard input (one line).")
def hash_password(from_stdin: bool) -> None:
    """Print the Argon2id hash of a password for [console.users.<name>] password_hash (through
    env:NAME or file:PATH). Prompts twice unless --stdin."""
    from argon2 import PasswordHasher

    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < 12:
        raise click.ClickException("use at least 12 characters")
    click.echo(PasswordHasher().hash(password))


@console.command("login-link")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="GATEWAY_CONFIG",
    help="TOML configuration file (or GATEWAY_CONFIG).",
)
@click.option("--user", required=True, help="A user of [console.users].")
@click.option(
    "--ttl", "ttl_s", type=click.IntRange(60, 86400), default=900, show_default=True, help="Seconds it stays valid."
)
def login_link(config_path: Path | None, user: str, ttl_s: int) -> None:
    """Print a link that signs USER in once (for a first sign-in or a lost password)."""
    from gateway.console.auth import ConsoleAuth
    from gateway.store.redis import RedisStore

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise click.ClickException(f"invalid configuration: {exc}") from None
    configured = config.console.users.get(user)
    if not config.console.enabled or configured is None:
        raise click.ClickException(f"no user {user!r} in [console.users] (or the console is not enabled)")

    async def issue() -> str:
        store = RedisStore(config.redis)
        try:
            return await ConsoleAuth(config.console, config.http, store).issue_one_time(user, configured.role, ttl_s)
        finally:
            await store.close()

    token = asyncio.run(issue())
    base = config.http.public_url or f"http://{config.http.host}:{config.http.port}"
    click.echo(f"{base.rstrip('/')}/console/auth/one-time?token={token}")
