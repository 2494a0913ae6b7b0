"""Configuration: a TOML file, environment overrides, and secrets referenced from the environment.

The file shape is fixed by docs/architecture.md ("Configuration shape"). Decoding goes through
msgspec so that every mistake fails at start with the dotted key and the problem, instead of
surfacing later as a runtime error.
Secret values are written as ``env:NAME`` (or ``file:/path`` for container secrets) and resolved
here; the resolved values live only in memory.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec

from gateway.helpers.calendar import BusinessHours, load_calendars

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Positive = Annotated[int, msgspec.Meta(gt=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]

# The compression levels the producer applies (gateway/bus/compression.py), per codec: (lowest,
# highest, default), the ranges and defaults of the Java clients (KIP-390, compression.<codec>.level).
# snappy has no levels; "none" compresses nothing.
COMPRESSION_LEVELS: dict[str, tuple[int, int, int]] = {"gzip": (1, 9, 6), "lz4": (1, 17, 9), "zstd": (-131072, 22, 3)}

INSTANCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SECRET_REFERENCE_PREFIXES = ("env:", "file:")


class ConfigError(Exception):
    """Invalid configuration; the message names the key and the problem."""


class GatewaySection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    topic_prefix: str = "gateway."
    environment: Literal["development", "production"] = "development"
    # The event loop of serve/worker/dispatch: uvloop (a dependency except on Windows, where the
    # standard loop is used) handles ~20% more webhooks per core; "asyncio" opts out.
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    # Every record also carries the CloudEvents Kafka binding's binary-mode headers (ce_id, ce_type,
    # ce_source, ce_time...), so CloudEvents SDKs and event routers read it natively (docs/consumers.md).
    cloudevents: bool = False
    # OpenTelemetry traces (docs/tracing.md): "otel" needs the otel extra; the OTEL_TRACES_EXPORTER
    # and OTEL_SDK_DISABLED environment variables win over this setting.
    tracing: Literal["off", "otel"] = "off"
    # Python's cyclic garbage collector in serve/worker/dispatch/dev (gateway/heap.py,
    # docs/deployment.md "Garbage collection"): collect the youngest generation every
    # gc_threshold[0] allocations instead of Python's 700, and move what exists once the process
    # is ready (plugins, models, connections) out of every later collection. [700, 10, 10] and
    # false are Python's own behaviour; gc_threshold[0] = 0 turns automatic collection off.
    gc_threshold: Annotated[list[NonNegative], msgspec.Meta(min_length=3, max_length=3)] = msgspec.field(
        default_factory=lambda: [50_000, 20, 100]
    )
    gc_freeze: bool = True


class KafkaSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "message-gateway"
    partitions: Positive = 6
    replication_factor: Positive = 1
    create_topics: bool = True
    extra_topics: list[str] = []  # created at start too, e.g. the topics routing rules name
    # Idempotent producing needs InitProducerId; see gateway/bus/producer.py for the Tansu caveat.
    enable_idempotence: bool = True
    linger_ms: NonNegative = 5
    max_batch_size: Positive = 262144
    compression_type: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "gzip"
    # None: the codec's default (gzip 6, lz4 9, zstd 3, as in Java clients; aiokafka alone would
    # run gzip at 9). Process-wide: every producer of the process uses it (gateway/bus/compression.py).
    compression_level: int | None = None
    publish_timeout_ms: Positive = 10000
    session_timeout_ms: Positive = 10000
    heartbeat_interval_ms: Positive = 3000
    fetch_max_wait_ms: NonNegative = 500
    max_poll_records: Positive = 500
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None


class RedisSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "gw:"
    dedup_ttl_s: Positive = 3 * 24 * 3600
    # What ingress does when Redis is unreachable: "accept" publishes without dedup (duplicates
    # possible, nothing lost), "reject" answers 503 so the sender retries later.
    on_failure: Literal["accept", "reject"] = "accept"
    socket_timeout_s: PositiveFloat = 1.0
    # Connections per process. When all are busy a command waits up to pool_timeout_s for one
    # (then it fails like an unreachable Redis) instead of failing at once under a burst.
    max_connections: Positive = 100
    pool_timeout_s: PositiveFloat = 2.0


class HttpSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Port = 8080
    max_body_bytes: Positive = 1024 * 1024
    retry_after_s: Positive = 5
    # Honour X-Forwarded-Proto/Host when rebuilding public URLs (for signature schemes that sign
    # the URL). Only enable behind a proxy you control.
    trust_forwarded_headers: bool = False
    public_url: str | None = None


class RateLimit(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    rate: PositiveFloat  # tokens per second
    burst: Positive


class WorkerSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    group_id: str = "gateway-worker"
    concurrency: Positive = 8
    max_attempts: Positive = 3
    retry_backoff_ms: NonNegative = 200
    processors: list[str] | None = None  # None: every discovered processor, in declared order
    # /metrics, /healthz and /readyz of this process on their own port (gateway/admin.py); 0: off.
    # Off by default so two processes on one host never fight over a port; the compose file turns it on.
    admin_host: str = "127.0.0.1"
    admin_port: Port = 0


class ApiSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /api/v1/messages` for services that would rather not produce to Kafka."""

    # Accepted API keys (use env:NAME references); the endpoint answers 403 while none is configured.
    keys: list[Annotated[str, msgspec.Meta(min_length=16)]] = []
    max_body_bytes: Positive = 256 * 1024
    idempotency_ttl_s: Positive = 24 * 3600


class DispatchSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    group_id: str = "gateway-dispatch"
    concurrency: Positive = 8
    max_attempts: Positive = 5
    retry_backoff_ms: NonNegative = 500
    # A provider's Retry-After is honoured up to this; beyond it the retry comes after this long,
    # so one rate-limited reply cannot hold its partition (and its send claim) for hours.
    max_retry_after_s: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    # Lease of a send claim: renewed every third of it while its dispatcher works on the message
    # (retries included), so it lapses only when that dispatcher is gone (crashed, cut off from
    # Redis); then another dispatcher may take the message over.
    claim_ttl_s: Annotated[float, msgspec.Meta(ge=0.5)] = 300.0
    # /metrics, /healthz and /readyz of this process on their own port (gateway/admin.py); 0: off.
    # Off by default so two processes on one host never fight over a port; the compose file turns it on.
    admin_host: str = "127.0.0.1"
    admin_port: Port = 0


class FetchSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """URLs that messages name and the gateway downloads (email attachments): loopback, private,
    link-local and metadata addresses are refused (gateway/helpers/fetch.py, docs/security.md)."""

    # Intranet sources allowed anyway: CIDRs or addresses ("10.20.0.0/16", "127.0.0.1"), host names
    # ("files.corp.example", trusted whatever they resolve to) or "*.corp.example" for subdomains.
    allow: list[str] = []
    max_redirects: NonNegative = 5

    def __post_init__(self) -> None:
        # Imported here: the fetcher's module imports the channel layer, which imports this one.
        from gateway.helpers.fetch import Allowlist

        Allowlist.parse(self.allow)  # ValueError names the bad entry


class ConversationsSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Conversation tracking (docs/conversations.md): response clocks, SLA breaches, resolution."""

    enabled: bool = True
    # A conversation's state is kept this long after its last message (then a new message opens it
    # afresh); the stored outcome of each cause that produced events, for redeliveries, for decision_ttl_s.
    state_ttl_s: Positive = 90 * 24 * 3600
    decision_ttl_s: Positive = 3 * 24 * 3600
    # Business hours in which durations are also measured (value_business_s): the calendar that
    # routing names for the message's SLA (same names as [processors.routing.calendars]), else
    # default_calendar; a name without a table here measures no business time.
    calendars: dict[str, Any] = {}  # name -> BusinessHours, validated in __post_init__
    default_calendar: str | None = None
    # Every worker looks for passed SLA due times this often; one of them claims each (Redis).
    sla_check_interval_s: PositiveFloat = 5.0
    # A claimed breach not reported within this long (its worker died) is claimed again.
    sla_claim_ttl_s: PositiveFloat = 60.0

    def __post_init__(self) -> None:
        self.calendars = load_calendars(self.calendars, "calendars")
        if self.default_calendar is not None and self.default_calendar not in self.calendars:
            raise ValueError(f"default_calendar: no calendar named {self.default_calendar!r} in calendars")

    def calendar(self, name: str | None) -> BusinessHours | None:
        """The calendar named (else the default one), or None: no business time is measured."""
        table = self.calendars.get(name or self.default_calendar or "")
        return table if isinstance(table, BusinessHours) else None


class ProfilesSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Customer profiles across channels (docs/profiles.md): the identity processor and the
    /api/v1/profiles endpoints share this store."""

    # A profile not seen (no message, no link) for this long expires with its identities.
    retention_days: Positive = 400


ConsoleRole = Literal["viewer", "operator", "admin"]


class ConsoleUser(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A named console user: an Argon2 PHC hash (`gateway console hash-password`), never a password."""

    password_hash: Annotated[str, msgspec.Meta(pattern=r"^\$argon2(id|i|d)\$")]
    role: ConsoleRole = "viewer"


class ConsoleOidc(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Sign-in through an OpenID Connect provider (authorization code flow with PKCE)."""

    issuer: str  # discovery at <issuer>/.well-known/openid-configuration
    client_id: str
    client_secret: str | None = None  # a reference (env:/file:); None for a public client
    label: str = "Sign in with single sign-on"
    scopes: list[str] = msgspec.field(default_factory=lambda: ["openid", "profile", "email"])
    # The claim naming the user (shown and audited) and the claim listing their groups or roles.
    username_claim: str = "preferred_username"
    roles_claim: str = "groups"
    # Group/role value -> console role; the highest mapped role wins. A user none maps is refused
    # unless default_role is set.
    role_map: dict[str, ConsoleRole] = {}
    default_role: ConsoleRole | None = None
    # Where the provider sends the browser back; default <public URL>/console/auth/oidc/callback.
    redirect_url: str | None = None


class ConsoleSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The operator console at /console/ (docs/console.md): off unless enabled with a way to sign in."""

    enabled: bool = False
    users: dict[str, ConsoleUser] = {}
    oidc: ConsoleOidc | None = None
    session_ttl_s: Positive = 8 * 3600
    # Secure cookies: "auto" sets the flag when the request came over TLS (directly, through a
    # trusted proxy's X-Forwarded-Proto, or http.public_url is https).
    secure_cookies: Literal["auto", "always", "never"] = "auto"
    # Failed sign-ins allowed per user name and per client address in login_window_s.
    login_attempts: Positive = 10
    login_window_s: Positive = 300
    # Every process (serve, worker, dispatch) writes its counters to Redis this often, so every
    # replica shows the same per-minute figures.
    stats_interval_s: PositiveFloat = 5.0
    # Records read back per partition when building a conversation's timeline.
    timeline_scan_records: Positive = 20000
    audit_entries: Positive = 1000  # kept in Redis for the audit page (all of them go to Kafka)

    def __post_init__(self) -> None:
        for name in self.users:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}", name):
                raise ValueError(f"users.{name}: user names are 1-64 letters, digits, '.', '_', '@' or '-'")
        if self.enabled and not self.users and self.oidc is None:
            raise ValueError("enabled, but no way to sign in: add [console.users.<name>] or [console.oidc]")


class PluginsSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # Fail at start when a third-party plugin cannot be loaded (recommended in production).
    fail_fast: bool | None = None
    disabled: list[str] = []


class LoggingSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


class Config(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    gateway: GatewaySection = msgspec.field(default_factory=GatewaySection)
    kafka: KafkaSection = msgspec.field(default_factory=KafkaSection)
    redis: RedisSection = msgspec.field(default_factory=RedisSection)
    http: HttpSection = msgspec.field(default_factory=HttpSection)
    worker: WorkerSection = msgspec.field(default_factory=WorkerSection)
    dispatch: DispatchSection = msgspec.field(default_factory=DispatchSection)
    api: ApiSection = msgspec.field(default_factory=ApiSection)
    fetch: FetchSection = msgspec.field(default_factory=FetchSection)
    conversations: ConversationsSection = msgspec.field(default_factory=ConversationsSection)
    profiles: ProfilesSection = msgspec.field(default_factory=ProfilesSection)
    console: ConsoleSection = msgspec.field(default_factory=ConsoleSection)
    plugins: PluginsSection = msgspec.field(default_factory=PluginsSection)
    logging: LoggingSection = msgspec.field(default_factory=LoggingSection)
    channels: dict[str, dict[str, Any]] = {}
    processors: dict[str, dict[str, Any]] = {}

    @property
    def fail_fast(self) -> bool:
        if self.plugins.fail_fast is not None:
            return self.plugins.fail_fast
        return self.gateway.environment == "production"


def _dotted(path: str) -> str:
    """msgspec reports `$.kafka.linger_ms` or `$.channels['a-b'].x`; operators think in TOML keys."""
    path = path.removeprefix("$").removeprefix(".")
    return re.sub(r"\[['\"]?([^'\"\]]+)['\"]?\]", r".\1", path).lstrip(".")


def format_validation_error(exc: msgspec.ValidationError, root: str = "") -> str:
    text = str(exc)
    match = re.search(r" - at `([^`]*)`$", text)
    if not match:
        return f"{root}: {text}" if root else text
    problem = text[: match.start()]
    parts = [root, _dotted(match.group(1))]
    unknown = re.match(r"Object contains unknown field `([^`]+)`", problem)
    if unknown:  # point at the offending key itself, not its table
        parts.append(unknown.group(1))
    key = ".".join(p for p in parts if p)
    return f"{key}: {problem}"


def resolve_reference(value: Any, key: str, environ: Mapping[str, str]) -> Any:
    """Resolve ``env:NAME`` and ``file:/path`` references, recursively through tables and lists."""
    if isinstance(value, dict):
        return {k: resolve_reference(v, f"{key}.{k}", environ) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_reference(v, f"{key}[{i}]", environ) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    if value.startswith("env:"):
        name = value[4:]
        if name not in environ:
            raise ConfigError(f"{key}: environment variable {name} is not set")
        return environ[name]
    if value.startswith("file:"):
        path = Path(value[5:])
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{key}: cannot read secret file {path}: {exc.strerror}") from None
    return value


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load the TOML file (optional), apply environment overrides, and validate everything."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    return config_from_dict(raw, environ)


def config_from_dict(raw: dict[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    environ = os.environ if environ is None else environ
    _refuse_inline_core_secrets(raw)
    # Core sections are resolved now; channel and processor tables are resolved when their plugin
    # builds them, because only the plugin knows which of its settings are secrets.
    resolved = {k: v if k in ("channels", "processors") else resolve_reference(v, k, environ) for k, v in raw.items()}
    try:
        config = msgspec.convert(resolved, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    if bootstrap := environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        config.kafka.bootstrap_servers = bootstrap
    if redis_url := environ.get("REDIS_URL"):
        config.redis.url = redis_url
    for name, settings in config.channels.items():
        if not INSTANCE_NAME.match(name):
            raise ConfigError(f"channels.{name}: instance names are 1-64 letters, digits, '.', '_' or '-'")
        if not isinstance(settings.get("type", name), str):
            raise ConfigError(f"channels.{name}.type: expected a string")
    if problem := compression_level_problem(config.kafka.compression_type, config.kafka.compression_level):
        raise ConfigError(f"kafka.compression_level: {problem}")
    if not config.gateway.topic_prefix or not re.fullmatch(r"[A-Za-z0-9._-]+", config.gateway.topic_prefix):
        raise ConfigError("gateway.topic_prefix: use letters, digits, '.', '_' or '-'")
    return config


def compression_level_problem(compression_type: str, level: int | None) -> str | None:
    """What is wrong with ``level`` for ``compression_type`` (None: nothing)."""
    if level is None:
        return None
    if compression_type not in COMPRESSION_LEVELS:
        codecs = ", ".join(f"{name} ({low} to {high})" for name, (low, high, _) in COMPRESSION_LEVELS.items())
        return f"compression_type {compression_type!r} takes no level; levels apply to {codecs} only"
    low, high, _ = COMPRESSION_LEVELS[compression_type]
    if not low <= level <= high:
        return f"{level} is out of range for {compression_type}: use {low} to {high}"
    return None


def _is_reference(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(SECRET_REFERENCE_PREFIXES)


def inline_core_secrets(raw: Mapping[str, Any]) -> list[str]:
    """The dotted keys of the core sections that hold a secret written into the file itself.

    Checked on the file's values before references are resolved: a resolved ``env:`` value is
    allowed to be anything. The secrets of the core sections are the API keys, the Kafka SASL
    password, the console's password hashes (offline guessing material) and OIDC client secret,
    and a password inside ``redis.url``; the URL is not a secret as such, so it is refused only
    when it carries a password (then the whole URL has to be a reference, or come from the
    ``REDIS_URL`` environment variable). Channel secrets are checked when their plugin builds them.
    """

    def section(name: str) -> Mapping[str, Any]:
        value = raw.get(name)
        return value if isinstance(value, Mapping) else {}

    inline: list[str] = []
    keys = section("api").get("keys")
    if isinstance(keys, list):
        inline += [f"api.keys[{i}]" for i, key in enumerate(keys) if isinstance(key, str) and not _is_reference(key)]
    users = section("console").get("users")
    for name, user in users.items() if isinstance(users, Mapping) else ():
        digest = user.get("password_hash") if isinstance(user, Mapping) else None
        if isinstance(digest, str) and not _is_reference(digest):
            inline.append(f"console.users.{name}.password_hash")
    oidc = section("console").get("oidc")
    secret = oidc.get("client_secret") if isinstance(oidc, Mapping) else None
    if isinstance(secret, str) and not _is_reference(secret):
        inline.append("console.oidc.client_secret")
    password = section("kafka").get("sasl_password")
    if isinstance(password, str) and not _is_reference(password):
        inline.append("kafka.sasl_password")
    url = section("redis").get("url")
    if isinstance(url, str) and not _is_reference(url) and _url_password(url):
        inline.append("redis.url")
    return inline


def _url_password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:  # an unparseable URL fails later, when the store connects, with its own error
        return None


def _refuse_inline_core_secrets(raw: Mapping[str, Any]) -> None:
    """Production refuses a secret written inline in the file (it ends up in version control,
    images and backups); development accepts it, so local configs stay one file. (Nothing is logged
    here: the configuration is read before logging is set up.)"""
    inline = inline_core_secrets(raw)
    if not inline:
        return
    keys = ", ".join(inline)
    gateway = raw.get("gateway")
    if isinstance(gateway, Mapping) and gateway.get("environment") == "production":
        hint = ""
        if "redis.url" in inline:
            hint = ' (redis.url holds a password: write the whole URL as a reference, url = "env:REDIS_URL")'
        raise ConfigError(f"{keys}: secrets must be references (env:NAME or file:PATH) in production{hint}")


def inline_secrets(raw: Mapping[str, Any], secret_keys: frozenset[str]) -> list[str]:
    """Names the secret settings written inline in a channel table instead of as references;
    a dotted key ("smtp.password") names a setting in a nested table."""
    inline = []
    for key in secret_keys:
        value: Any = raw
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if isinstance(value, str) and not _is_reference(value):
            inline.append(key)
    return sorted(inline)
