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
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from ._lazy import requires_extra
from ._version import __version__
from .errors import AuthSecError, ConfigurationError
from .redact import redact_text

with requires_extra("cli", "the authsec-crewai command"):
    import click

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
    anything shaped like a token masked and control characters shown escaped,
    whatever raised it."""
    parts = [part.strip() for part in str(message).splitlines() if part.strip()]
    return _escaped(redact_text("; ".join(parts).replace(":;", ":"))) or "unknown error"


def _escaped(text: object) -> str:
    """``text`` with every control or invisible character shown as an escape.

    Cassettes, servers and agents supply text this command prints; printed raw,
    an escape sequence in it could clear the screen, set the terminal's title
    or hide what follows it.
    """
    text = str(text)
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


def _cell(text: object) -> str:
    """Text for a rich table: control characters escaped, rich markup inert."""
    from rich.markup import escape

    return escape(_escaped(text))


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
    "Without it the level is AUTHSEC_LOG_LEVEL, or only errors when that is not set, "
    "so failures stay one line. AUTHSEC_LOG_FORMAT=json writes JSON lines.",
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
    import os

    from .logging import configure

    # Standard output is the command's own output (JSON for scripts, tables for
    # people); every log line goes to standard error.
    if verbose:
        level = "INFO" if verbose == 1 else "DEBUG"
    else:
        level = os.environ.get("AUTHSEC_LOG_LEVEL", "").strip() or "ERROR"
    log_format = os.environ.get("AUTHSEC_LOG_FORMAT", "").strip().lower() or "console"
    try:
        configure(log_format, level)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigurationFailed(f"AUTHSEC_LOG_LEVEL / AUTHSEC_LOG_FORMAT: {exc}") from None


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

    from .settings import AuthSecSettings
    from .token import canonical_scopes
    from .wiring import build_broker

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
    if settings.auto_chose_mock:  # after success: a failure stays one line
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
        console.print(f"[bold cyan]{name:<12}[/] {_cell(value)}")  # server-supplied text


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
    from .testing.loopback import listening_socket

    try:
        return listening_socket(host, port)
    except OSError as exc:
        raise CommandFailed(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
            "choose another --port (0 picks a free one)"
        ) from None


def _parse_agents(values: tuple[str, ...]) -> list[tuple[str, list[str]]]:
    """``--agent ROLE=PERMISSION[,PERMISSION...]`` values, checked; roles unique."""
    parsed: dict[str, tuple[str, list[str]]] = {}
    for value in values:
        role, sep, granted = value.partition("=")
        role = " ".join(role.split())
        grants = [item.strip() for item in granted.split(",") if item.strip()]
        if not sep or not role or "," in role or not grants:
            raise ConfigurationFailed(
                f"--agent {value[:60]!r}: expected ROLE=PERMISSION[,PERMISSION...], "
                "e.g. --agent Analyst=read:records"
            )
        if role.casefold() in parsed:
            raise ConfigurationFailed(f"--agent {role[:60]!r} is given twice; name each agent once")
        parsed[role.casefold()] = (role, grants)
    return list(parsed.values())


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
@click.option(
    "--agent",
    "agents",
    multiple=True,
    metavar="ROLE=PERMISSION[,PERMISSION...]",
    help="An agent of a crew with its own client id and delegation (repeatable), e.g. "
    "--agent Analyst=read:records --agent Writer=read:metrics. With any --agent, client "
    "ids the server was not told about are answered 404.",
)
@friendly_errors
def serve_mock(
    port: int,
    host: str,
    client_id: str | None,
    ttl: float,
    permissions: tuple[str, ...],
    api_token: str | None,
    agents: tuple[str, ...],
) -> None:
    """Run the mock AuthSec server and its secure-vault API on loopback.

    It speaks the real server's protocol (delegation tokens, key bundle, admin
    delegate/revoke) and serves /secure-vault/records, /metrics, /incidents and
    /audit-log behind token checks, so LIVE mode can be tried without an
    AuthSec account. It prints the environment variables to set. Ctrl-C stops it.
    """
    import shlex
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
    import uvicorn  # the cli extra's, like click

    from .testing.authority import DEFAULT_PERMISSIONS, MockAuthority
    from .testing.mockserver import create_app

    crew = {role: (str(uuid.uuid4()), grants) for role, grants in _parse_agents(agents)}
    authority = MockAuthority(
        ttl_seconds=ttl,
        permissions=permissions or DEFAULT_PERMISSIONS,
        agents={client: grants for client, grants in crew.values()},
        unknown_agents="refuse" if crew else "delegate",
    )
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
    if crew:
        mapping = ",".join(f"{role}={client}" for role, (client, _) in crew.items())
        lines.append(f"  export AUTHSEC_AGENTS={shlex.quote(mapping)}")
        lines += [
            "",
            "Agents (each its own client id and delegation; other ids are answered 404):",
            *(
                f"  {role}: {client} may {' '.join(grants)}"
                for role, (client, grants) in crew.items()
            ),
        ]
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


# --- serve-mcp ---------------------------------------------------------------------------------


@main.command("serve-mcp")
@click.option(
    "--http",
    "over_http",
    is_flag=True,
    help="Serve streamable HTTP on loopback (at /mcp) instead of standard input and output.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8765,
    show_default=True,
    help="With --http: the TCP port; 0 picks a free one.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="With --http: the loopback address to listen on (the server spends this "
    "process's delegated tokens for whoever reaches it).",
)
@friendly_errors
def serve_mcp(over_http: bool, port: int, host: str) -> None:
    """Serve the secure fetch tool to MCP hosts (Claude Desktop, IDE agents, any MCP client).

    One tool, authsec_secure_vault_fetcher, with the CrewAI tool's guards,
    allowlists, results and errors; the delegated tokens stay in this process
    and never reach the host. The agent's identity and policy come from the
    AUTHSEC_* settings (AUTHSEC_CLIENT_ID, AUTHSEC_ALLOWED_SCOPES,
    AUTHSEC_ALLOWED_ENDPOINTS, ...), as for every other command.

    \b
    By default it speaks MCP on standard input and output (what a host starts
    as a subprocess): standard output carries nothing but the protocol, and
    every log line goes to standard error. --http serves streamable HTTP on
    http://127.0.0.1:PORT/mcp instead (its address is printed on standard error).
    """
    import anyio

    from ._toolruntime import ToolBinding, close_shared_brokers
    from .settings import AuthSecSettings

    if over_http and not _loopback(host):
        raise ConfigurationFailed(
            f"--host {host!r} is not a loopback address; the MCP server spends delegated "
            "tokens for whoever reaches it, so it only listens on 127.0.0.1, ::1 or localhost"
        )
    # Without the mcp extra this is MissingExtraError: one line naming the extra.
    from .integrations.mcp_server import MCP_PATH, create_http_app, create_server, serve_stdio

    settings = AuthSecSettings()
    server = create_server(ToolBinding.create(settings=settings))
    if settings.auto_chose_mock:
        click.echo(
            "note: AUTHSEC_BASE_URL and AUTHSEC_CLIENT_ID are not both set, so the tool calls "
            "the MOCK vault (set AUTHSEC_MODE=mock to silence this note)",
            err=True,
        )
    try:
        if not over_http:
            anyio.run(serve_stdio, server)
            return
        import uvicorn

        sock = _bind(host, port)
        bound_port = sock.getsockname()[1]
        shown_host = f"[{host}]" if ":" in host else host
        click.echo(f"MCP server on http://{shown_host}:{bound_port}{MCP_PATH}", err=True)
        app = create_http_app(server, host=host, port=bound_port)
        config = uvicorn.Config(
            app, lifespan="on", interface="asgi3", log_level="warning", access_log=False
        )
        try:
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            sock.close()
    finally:
        close_shared_brokers()


# --- record and cassette ------------------------------------------------------------------------


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="The cassette to write (replaced if it exists).",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@friendly_errors
def record(output: Path, command: tuple[str, ...]) -> None:
    """Run COMMAND and record its AuthSec session to a cassette.

    COMMAND runs with AUTHSEC_MODE=record and AUTHSEC_CASSETTE=FILE in its
    environment (the other AUTHSEC_* settings as they are: live when
    AUTHSEC_BASE_URL and AUTHSEC_CLIENT_ID are set, the mock when neither is).
    Token fetches and protected-API calls are written to FILE with no JWT
    signature, credential header or API token in it. Exit status: COMMAND's.

    \b
    Example:
      authsec-crewai record -o tests/cassettes/crew.json -- python my_crew.py
      AUTHSEC_MODE=replay AUTHSEC_CASSETTE=tests/cassettes/crew.json python my_crew.py
    """
    import os
    import subprocess

    from .cassettes import load
    from .settings import AuthSecSettings

    try:
        configured = AuthSecSettings()
        if configured.base_url is None and configured.client_id is None:
            click.echo(
                "note: AUTHSEC_BASE_URL and AUTHSEC_CLIENT_ID are not set, so this records "
                "the MOCK server (demo tokens and data)",
                err=True,
            )
    except ConfigurationError:
        pass  # the command itself reports the configuration error, in its own words
    target = output.resolve()
    before = target.stat().st_mtime_ns if target.exists() else None
    env = {**os.environ, "AUTHSEC_MODE": "record", "AUTHSEC_CASSETTE": str(target)}
    try:
        completed = subprocess.run(list(command), env=env, check=False)  # noqa: S603 - the user's command
    except OSError as exc:
        raise ConfigurationFailed(f"cannot run {command[0]!r}: {exc.strerror or exc}") from None
    if not target.exists() or target.stat().st_mtime_ns == before:
        click.echo(
            f"note: {output} was not written: the command made no token or API call "
            "through authsec-crewai (does it build its broker or tools from the AUTHSEC_* "
            "settings?)",
            err=True,
        )
    else:
        recorded = load(target)
        counts = ", ".join(f"{n} {kind}" for kind, n in recorded.counts().items())
        click.echo(
            f"recorded {len(recorded.interactions)} interaction(s) ({counts}) to {output}",
            err=True,
        )
    click.get_current_context().exit(completed.returncode)


@main.group()
def cassette() -> None:
    """Inspect and check cassettes (recorded sessions)."""


@cassette.command("show")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@friendly_errors
def cassette_show(file: Path) -> None:
    """Show a cassette's interactions as a table (never a secret: there is none in it)."""
    from rich.console import Console
    from rich.table import Table

    from .cassettes import describe, iso_utc, load

    recorded = load(file)
    settings = recorded.settings
    console = Console(highlight=False, soft_wrap=False)
    console.print(
        f"[bold]{_cell(file)}[/]: cassette format {recorded.version}, recorded "
        f"{iso_utc(recorded.recorded_at)} from {_cell(settings.get('mode') or '?')} "
        f"({', '.join(f'{n} {kind}' for kind, n in recorded.counts().items())})",
        soft_wrap=True,
    )
    table = Table(show_lines=False)
    for name, justify in (("#", "right"), ("offset", "right"), ("kind", "left")):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    table.add_column("request", overflow="fold")
    table.add_column("answer", overflow="fold")
    for index, item in enumerate(recorded.interactions):
        table.add_row(
            str(index),
            f"{item['offset']:.3f}s",
            item["kind"],
            _cell(describe(item["kind"], item["request"])),
            _cell(_answer_summary(item)),
        )
    console.print(table)


def _answer_summary(item: dict[str, Any]) -> str:
    """One cell: the status / token facts / error of an interaction."""
    from .cassettes import decode_body

    if "error" in item:
        error = item["error"]
        status = f" ({error['status']})" if "status" in error else ""
        return f"error {error.get('kind')}{status}: {str(error.get('message', ''))[:120]}"
    answer = item["response"]
    if item["kind"] == "token":
        body = answer["body"]
        jti = "-"
        try:
            from .wire import decode_unverified

            jti = str(decode_unverified(str(body.get("token", "")))[1].get("jti", "-"))
        except AuthSecError:
            pass
        return (
            f"jti {jti}, {' '.join(body.get('permissions', []))}, "
            f"expires {body.get('expires_at', '?')}"
        )
    if item["kind"] == "key_set":
        body = answer.get("body")
        return "no key set" if body is None else f"{len(body.get('keys', []))} key(s)"
    size = len(decode_body(answer.get("body")))
    kind = answer.get("headers", {}).get("content-type", "no content type")
    return f"{answer['status']}, {kind}, {size} bytes"


@cassette.command("verify")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--secret",
    "secrets",
    multiple=True,
    metavar="VALUE",
    help="Another value that must not appear (repeatable). AUTHSEC_API_TOKEN is always "
    "checked when it is set.",
)
def cassette_verify(files: tuple[Path, ...], secrets: tuple[str, ...]) -> None:
    """Check that cassettes are well-formed and hold no secret.

    Fails (exit status 1, one line per problem) on a file that is not a valid
    cassette of a known format version, or that contains a JWT with its
    signature, an Authorization / Cookie / Set-Cookie (or similar) header, a
    bearer credential, or the API token. Run it in CI over committed cassettes.
    """
    import os

    from .cassettes import find_secrets, load

    checked = [*secrets, os.environ.get("AUTHSEC_API_TOKEN")]
    failed = False
    for file in files:
        try:
            recorded = load(file)
        except AuthSecError as exc:
            click.echo(f"error: {_one_line(str(exc))}", err=True)
            failed = True
            continue
        findings = find_secrets(recorded.document, secrets=checked)
        for finding in findings[:20]:
            click.echo(f"error: cassette {_escaped(file)}: {_escaped(finding)}", err=True)
        if len(findings) > 20:
            click.echo(f"error: cassette {file}: ... and {len(findings) - 20} more", err=True)
        if findings:
            failed = True
        else:
            click.echo(
                f"ok: {_escaped(file)}: {len(recorded.interactions)} interaction(s), "
                "no secret found"
            )
    if failed:
        raise click.exceptions.Exit(EXIT_FAILURE)


# --- fetch and demo --------------------------------------------------------------------------


def _parse_params(params: tuple[str, ...]) -> list[tuple[str, str]]:
    pairs = []
    for item in params:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigurationFailed(f"--param {item[:60]!r}: expected NAME=VALUE, e.g. page=2")
        pairs.append((name, value))
    return pairs


@main.command("fetch")
@click.argument("endpoint")
@click.option(
    "-s",
    "--scope",
    required=True,
    metavar="SCOPE",
    help="The permission the call needs, e.g. read:records.",
)
@click.option(
    "-p",
    "--param",
    "params",
    multiple=True,
    metavar="NAME=VALUE",
    help="A query parameter (repeatable), e.g. --param page=2.",
)
@friendly_errors
def fetch(endpoint: str, scope: str, params: tuple[str, ...]) -> None:
    """Call the protected API once, exactly as the CrewAI tools do, and print the result.

    ENDPOINT is a path relative to the protected API (AUTHSEC_API_BASE_URL), e.g.
    secure-vault/records. The same guards apply as in the tools (no absolute
    URLs, '..', '?' or '#'; scope allowlist; the token's permissions), and the
    same JSON comes out: {"status": "ok", ...} or {"status": "error", ...}.
    Exit status 1 when the result is an error, 2 when the configuration is wrong.
    """
    import anyio

    from .errors import AuthSecError as _AuthSecError
    from .fetch import error_result, render_result
    from .settings import AuthSecSettings
    from .wiring import build_broker, build_fetcher

    pairs = _parse_params(params)
    settings = AuthSecSettings()

    async def call() -> dict[str, Any]:
        async with build_broker(settings) as broker:
            fetcher = build_fetcher(broker, settings)
            try:
                result = await fetcher.fetch(endpoint, scope, params=pairs)
            except ConfigurationError:
                raise
            except _AuthSecError as exc:
                return error_result(exc)
            return result.to_dict()

    payload = anyio.run(call)
    if settings.auto_chose_mock:
        click.echo(
            "note: AUTHSEC_BASE_URL and AUTHSEC_CLIENT_ID are not both set, so this called "
            "the MOCK vault (set AUTHSEC_MODE=mock to silence this note)",
            err=True,
        )
    click.echo(render_result(payload, indent=2))
    if payload.get("status") != "ok":
        raise click.exceptions.Exit(EXIT_FAILURE)


_QUIET_CREWAI = {
    "CREWAI_DISABLE_TELEMETRY": "true",
    "OTEL_SDK_DISABLED": "true",
    "CREWAI_TRACING_ENABLED": "false",
}


@main.command()
@friendly_errors
def demo() -> None:
    """Run a real two-agent CrewAI crew offline: mock tokens, scripted models, the real tool.

    Crew.kickoff() runs an analyst who may read records and a writer who may
    only read metrics, each with its own AuthSec identity (client id) and
    delegation. Each (scripted, native function-calling) model asks for both;
    each agent is refused, before the API, what only the other may read, and
    writes a briefing from what it read. Prints the agents, the token log
    (client ids, fingerprints, scopes; never a token) and each answer.
    Always MOCK mode: no network, no API key. Telemetry and tracing are turned
    off and CrewAI's storage goes to a temporary directory, unless you set
    CREWAI_DISABLE_TELEMETRY, OTEL_SDK_DISABLED, CREWAI_TRACING_ENABLED or
    CREWAI_STORAGE_DIR yourself.
    """
    import os
    import tempfile

    with tempfile.TemporaryDirectory(prefix="authsec-crewai-demo-") as storage:
        wanted = {**_QUIET_CREWAI, "CREWAI_STORAGE_DIR": storage}
        added = [name for name in wanted if name not in os.environ]
        os.environ.update({name: wanted[name] for name in added})
        try:
            from .demo import run_demo  # imports crewai: after the variables are set

            outcome = run_demo()
        finally:
            for name in added:
                os.environ.pop(name, None)
    _print_demo(outcome)


def _print_demo(outcome: Any) -> None:
    """The agents, the token log, the tokens held and each agent's answer, in 80 columns.

    No value is ever cut inside: identifiers (client ids, jti, fingerprints,
    endpoints) stay whole on one line, so they can be copied and searched for
    in logs; only prose wraps, at spaces. Piped to a file, rich assumes 80
    columns.
    """
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=False)
    started = outcome.events[0]["at"] if outcome.events else datetime.now(UTC).timestamp()
    console.print(
        f"[bold]authsec-crewai demo[/]: [bold cyan]{escape(outcome.mode.upper())}[/] mode, "
        f"a real Crew.kickoff() of {len(outcome.agents)} agents, {outcome.seconds:.2f}s"
    )
    role_of = {agent.client_id: agent.role for agent in outcome.agents}
    for role, held in outcome.tokens.items():
        for token in held:
            role_of.setdefault(f"jwt:{token.fingerprint}", role)

    def table(title: str, *whole: str, prose: str | None = None) -> Table:
        grid = Table(
            title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
            padding=(0, 1, 0, 0),
        )  # fmt: skip
        for column in whole:
            grid.add_column(column, no_wrap=True)
        if prose is not None:
            grid.add_column(prose, overflow="fold")
        return grid

    agents = table("Agents, each with its own AuthSec identity", "agent", "client id", "may read")
    for agent in outcome.agents:
        agents.add_row(agent.role, agent.client_id, " ".join(agent.grants))
    console.print(agents)

    when = datetime.fromtimestamp(started, UTC).strftime("%H:%M:%S")
    console.print(f"Token and fetch log from {when} UTC, per agent (no token is ever shown)")
    for member in outcome.agents:
        log = table(
            f"{member.role} ({member.client_id})", "event", "token or endpoint", prose="outcome"
        )
        for event in outcome.events:
            name = str(event.get("event", ""))
            fingerprint = event.get("fingerprint")
            token = f"jwt:{fingerprint}" if fingerprint else "-"
            if role_of.get(str(event.get("client_id")), role_of.get(token)) != member.role:
                continue
            scopes = event.get("scopes") or event.get("scope") or ""
            if isinstance(scopes, list):
                scopes = " ".join(scopes)
            subject = str(event.get("endpoint", "-")) if name.startswith("fetch.") else token
            if name == "token.issued":
                minutes, seconds = divmod(int(event.get("expires_in", 0)), 60)
                result = f"{scopes}, {minutes}m {seconds:02d}s left"
            elif name == "fetch.ok":
                result = "ok"
            elif event.get("missing"):
                result = f"{' '.join(event['missing'])} not granted"
            elif name.startswith("fetch."):
                result = f"{scopes}: {event.get('error', name)}"
            else:
                result = str(scopes)
            log.add_row(name, escape(subject), escape(result))
        console.print(log)

    held = table("Tokens held by the broker", "agent", "token", prose="facts")
    for role, tokens in outcome.tokens.items():
        for token in tokens:
            left = token.expires_in(datetime.now(UTC).timestamp())
            minutes, seconds = divmod(max(0, int(left)), 60)
            facts = [
                f"jti {token.jti or '-'}",
                f"permissions {' '.join(sorted(token.permissions))}",
                f"expires {token.expires_at.strftime('%H:%M:%SZ')} (in {minutes}m {seconds:02d}s)",
            ]
            held.add_row(role, f"jwt:{token.fingerprint}", escape("\n".join(facts)))
    console.print(held)
    for role, answer in outcome.answers.items():
        console.print(Panel(escape(answer), title=f"{role}'s answer", title_align="left"))


# --- doctor ---------------------------------------------------------------------------------

_STATUS_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


@main.command()
@click.option(
    "--canary",
    is_flag=True,
    help="Also run a tool call with a canary token through every sink the library writes "
    "(logs at DEBUG, spans through the scrubbing exporter, a recorded cassette, the tool "
    "result) and fail if the canary appears in any. Offline: against a mock server on "
    "loopback started for the run, never the configured one.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (for scripts).")
def doctor(canary: bool, as_json: bool) -> None:
    """Check the set-up: is it right, and is it leaking?

    Resolves the AUTHSEC_* settings and says which mode they select and why;
    reaches AuthSec and the protected API and reports latency, TLS and the
    clock skew against the server's Date header; checks the shared store (it
    opens, its key opens the entries in it, SQLite's file is owner-only,
    encryption is on). One line per check: ok, warn, fail or skip.

    \b
    Exit status:
      0  every check passed (warnings allowed)
      1  a check failed (unreachable, clock off, wrong store key, a leak)
      2  the configuration is wrong (settings that do not resolve)
    """
    import json

    import anyio

    from .doctor import run_doctor

    report = anyio.run(functools.partial(run_doctor, canary=canary))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_report(report)
    if report.exit_code:
        raise click.exceptions.Exit(report.exit_code)


def _print_report(report: Any) -> None:
    """One row per check; names and statuses whole, summaries folded at spaces (80 columns)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=False)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    table.add_column("", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("finding", overflow="fold")
    for check in report.checks:
        style = _STATUS_STYLE[check.status]
        table.add_row(f"[{style}]{check.status}[/]", _cell(check.name), _cell(check.summary))
    console.print(table)
    counts = report.to_dict()["counts"]
    verdict = {0: "all good", 1: "a check failed", 2: "the configuration is wrong"}
    console.print(
        f"{counts['ok']} ok, {counts['warn']} warnings, {counts['fail']} failed, "
        f"{counts['skip']} skipped: {verdict[report.exit_code]} (exit {report.exit_code})"
    )


if __name__ == "__main__":  # pragma: no cover - `python -m authsec_crewai.cli`
    main()
