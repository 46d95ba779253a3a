"""The ``authsec-crewai`` command.

Each command is a small function registered on the :func:`main` group; heavy
modules (the broker, uvicorn, rich) are imported inside the command that needs
them, so ``--help`` is instant and importing this module never imports crewai.
Expected failures (bad configuration, a revoked delegation, an unreachable
server) end as one line on standard error and a non-zero exit status, never a
traceback: wrap a command in :func:`friendly_errors` to get that.

Adding a command::

    @main.command()
    @friendly_errors
    def fetch(...) -> None:
        \"\"\"One line for the command list. More detail for --help.\"\"\"
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import click

from . import __version__
from .errors import AuthSecError, ConfigurationError
from .redact import redact_text

if TYPE_CHECKING:
    from .token import DelegationToken

__all__ = ["CommandFailed", "ConfigurationFailed", "friendly_errors", "main"]

P = ParamSpec("P")
R = TypeVar("R")

EXIT_FAILURE = 1
"""A token could not be had, a server failed, ...: the command ran and failed."""
EXIT_CONFIGURATION = 2
"""The configuration or the command line is wrong (click uses 2 for usage errors too)."""


class CommandFailed(click.ClickException):
    """An expected failure: printed as ``error: <one line>`` with no traceback."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True, file=file)


class ConfigurationFailed(CommandFailed):
    """The configuration or an argument is wrong: exit status 2."""

    exit_code = EXIT_CONFIGURATION


def _one_line(message: str) -> str:
    """Multi-line messages (settings list every bad variable) joined into one line,
    and anything shaped like a token masked, whatever raised it."""
    parts = [part.strip() for part in str(message).splitlines() if part.strip()]
    return redact_text("; ".join(parts).replace(":;", ":")) or "unknown error"


def friendly_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn this library's errors into :class:`CommandFailed` (one line, exit code)."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except ConfigurationError as exc:
            raise ConfigurationFailed(str(exc)) from None
        except AuthSecError as exc:
            raise CommandFailed(f"{exc} [{exc.kind}]") from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="authsec-crewai")
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="Show the library's log lines on standard error (-v: info, -vv: debug). "
    "Without it only errors are logged, so failures stay one line.",
)
def main(verbose: int) -> None:
    """Short-lived AuthSec delegation tokens for CrewAI agents.

    Configuration comes from AUTHSEC_* environment variables (or a .env file):
    AUTHSEC_BASE_URL and AUTHSEC_CLIENT_ID select LIVE mode against an AuthSec
    server; without them the library runs in MOCK mode with local demo tokens.
    AUTHSEC_MODE=live|mock|record|replay forces a mode.

    \b
    Try it locally:
      authsec-crewai serve-mock --port 8700      # a mock AuthSec server
      authsec-crewai token --scope read:records  # in another shell, after the exports
    """
    from .logging import configure

    configure(level={0: "ERROR", 1: "INFO"}.get(verbose, "DEBUG"))


# --- token ---------------------------------------------------------------------------------


@main.command()
@click.option(
    "-s",
    "--scope",
    "scopes",
    multiple=True,
    metavar="SCOPE",
    help="A permission the token must grant, e.g. read:records. Repeatable. Default: read:records.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the facts as JSON (for scripts) instead of aligned text.",
)
@friendly_errors
def token(scopes: tuple[str, ...], as_json: bool) -> None:
    """Get a delegation token and show its facts (never the token itself).

    Uses the mode the AUTHSEC_* settings select, through the same broker the
    tools use, and prints the token's fingerprint, jti, permissions, SPIFFE id
    and expiry. Exit status 1 when no token can be had (e.g. the delegation
    was revoked), 2 when the configuration is wrong.
    """
    import anyio

    from .settings import AuthSecSettings, build_broker
    from .token import canonical_scopes

    wanted: tuple[str, ...] = scopes or ("read:records",)
    try:
        canonical_scopes(wanted)
    except ValueError as exc:
        raise ConfigurationFailed(f"--scope: {exc}") from None
    settings = AuthSecSettings()
    mode = settings.resolved_mode

    async def fetch() -> DelegationToken:
        async with build_broker(settings) as broker:
            return await broker.token(wanted)

    delegation = anyio.run(fetch)
    if settings.mode == "auto" and mode == "mock":  # after success: a failure stays one line
        click.echo(
            "note: AUTHSEC_BASE_URL and AUTHSEC_CLIENT_ID are not both set, so this is a "
            "MOCK token (set AUTHSEC_MODE=mock to silence this note)",
            err=True,
        )
    facts: dict[str, Any] = {"mode": mode, **delegation.redacted()}
    if as_json:
        import json

        click.echo(json.dumps(facts, indent=2))
        return
    _print_token(facts, delegation.expires_in(datetime.now(UTC).timestamp()))


def _print_token(facts: dict[str, Any], seconds_left: float) -> None:
    """Aligned ``name  value`` lines; values are never cut or folded (a SPIFFE id
    is longer than most terminals), the terminal wraps them if it must."""
    from rich.console import Console
    from rich.markup import escape

    minutes, seconds = divmod(max(0, int(seconds_left)), 60)
    rows = [
        ("mode", facts["mode"]),
        ("fingerprint", f"jwt:{facts['fingerprint']}"),
        ("jti", facts["jti"] or "-"),
        ("permissions", " ".join(facts["permissions"]) or "-"),
        ("SPIFFE id", facts["spiffe_id"]),
        ("client id", facts["client_id"]),
        ("tenant id", facts["tenant_id"] or "-"),
        ("audience", " ".join(facts["audience"]) or "-"),
        ("issued at", facts["issued_at"]),
        ("expires at", f"{facts['expires_at']}  (in {minutes}m {seconds:02d}s)"),
    ]
    console = Console(highlight=False, soft_wrap=True)
    for name, value in rows:
        console.print(f"[bold cyan]{name:<12}[/] {escape(str(value))}")


# --- serve-mock --------------------------------------------------------------------------------


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    """Bind before starting uvicorn: to learn the real port of ``--port 0`` and to
    report a busy port as one line rather than a uvicorn traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only
    # when the listening socket says TCP, and without it keep-alive requests stall.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)  # from here on connections queue, so the banner is never early
    except OSError as exc:
        sock.close()
        raise CommandFailed(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
            "choose another --port (0 picks a free one)"
        ) from None
    return sock


@main.command("serve-mock")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8700,
    show_default=True,
    help="TCP port; 0 picks a free one.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Loopback address to listen on (the mock hands tokens to anyone who asks).",
)
@click.option(
    "--client-id",
    default=None,
    metavar="UUID",
    help="Delegate a token to this agent at start. Default: a fresh random UUID.",
)
@click.option(
    "--ttl",
    type=click.FloatRange(min=1),
    default=1800.0,
    show_default=True,
    help="Lifetime of the tokens it issues, in seconds.",
)
@click.option(
    "-p",
    "--permission",
    "permissions",
    multiple=True,
    metavar="PERMISSION",
    help="A permission its tokens grant (repeatable). Default: read:metrics read:records.",
)
@click.option(
    "--api-token",
    default=None,
    metavar="TOKEN",
    help="Require 'Authorization: Bearer TOKEN' on the token endpoint, like the newest "
    "AuthSec servers.",
)
@friendly_errors
def serve_mock(
    port: int,
    host: str,
    client_id: str | None,
    ttl: float,
    permissions: tuple[str, ...],
    api_token: str | None,
) -> None:
    """Run the mock AuthSec server and its secure-vault API on loopback.

    It speaks the real server's protocol (delegation tokens, key bundle, admin
    delegate/revoke) and serves /secure-vault/records, /metrics, /incidents and
    /audit-log behind token checks, so LIVE mode can be tried without an
    AuthSec account. It prints the environment variables to set. Ctrl-C stops it.
    """
    import uuid

    if not _loopback(host):
        raise ConfigurationFailed(
            f"--host {host!r} is not a loopback address; the mock server hands out tokens "
            "to anyone, so it only listens on 127.0.0.1, ::1 or localhost"
        )
    agent = client_id or str(uuid.uuid4())
    try:
        uuid.UUID(agent)
    except ValueError:
        raise ConfigurationFailed(
            f"--client-id {agent[:40]!r} is not a UUID (AuthSec client ids are UUIDs)"
        ) from None
    try:
        import uvicorn

        from .authority import DEFAULT_PERMISSIONS, MockAuthority
        from .mockserver import create_app
    except ImportError as exc:
        raise CommandFailed(
            f"serve-mock needs starlette and uvicorn ({exc.name} is missing): "
            "pip install starlette uvicorn"
        ) from None

    authority = MockAuthority(ttl_seconds=ttl, permissions=permissions or DEFAULT_PERMISSIONS)
    authority.delegate(agent)
    app = create_app(authority, api_token=api_token)
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{bound_port}"
    lines = [
        f"Mock AuthSec server on {url} (tenant {authority.tenant_id})",
        "Point LIVE mode at it:",
        "",
        "  export AUTHSEC_MODE=live",
        f"  export AUTHSEC_BASE_URL={url}",
        f"  export AUTHSEC_CLIENT_ID={agent}",
    ]
    if api_token:
        lines.append(f"  export AUTHSEC_API_TOKEN={api_token}")
    lines += [
        "",
        "Then: authsec-crewai token --scope read:records",
        f"Revoke: curl -X POST {url}/authsec/uflow/admin/agents/{agent}/revoke-token",
        "Press Ctrl-C to stop.",
    ]
    click.echo("\n".join(lines))
    config = uvicorn.Config(
        app, lifespan="off", interface="asgi3", log_level="warning", access_log=False
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


if __name__ == "__main__":  # pragma: no cover - `python -m authsec_crewai.cli`
    main()
