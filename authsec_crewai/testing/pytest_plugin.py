"""The pytest plugin: record a test's AuthSec session once, replay it forever.

Registered through the ``pytest11`` entry point, so installing authsec-crewai
is enough. Importing it is cheap (no crewai, no httpx): pytest loads it into
every session of every project that has the package installed.

::

    @pytest.mark.authsec_cassette("vault-records")
    async def test_records(authsec_broker, authsec_transport):
        async with authsec_broker as broker:
            token = await broker.token("read:records")
            ...

The cassette is ``cassettes/<test module>/<name>.json`` next to the test file
(the name defaults to the test's). The record mode decides what happens:

``none`` (the default)
    replay only; a missing cassette fails the test with one clear line;
``once``
    record when the cassette is missing, replay it when it exists;
``new_episodes``
    replay what is there, record the rest (tokens are fetched afresh);
``all``
    always record.

Where the record mode comes from, highest first: ``--authsec-record-mode``
on the command line, the marker's ``record_mode=``, the ``authsec_record_mode``
ini option, ``none``. The command line wins so ``--authsec-record-mode=all``
re-records a whole suite; when it overrides a marker that says otherwise, the
test gets an :class:`AuthSecCassetteWarning` naming both (never silent).

While a cassette is only replayed, the network is blocked for the test (see
:func:`authsec_crewai.testing.block_network`: any TCP connect or host lookup fails, loopback
included); pass ``block_network=False`` in the marker to allow it.

Fixtures: ``authsec_cassette`` (where and how), ``authsec_transport`` (a
:class:`~authsec_crewai.transports.ReplayTransport` when replaying, else a
:class:`~authsec_crewai.transports.RecordingTransport` around
``authsec_inner_transport``), ``authsec_broker`` (a not yet started
``TokenBroker`` on the cassette's clock), ``authsec_tool`` (a CrewAI
``AuthSecSecureFetchTool``; imports crewai). Override ``authsec_settings``,
``authsec_inner_transport`` or ``authsec_cassette_options`` (placeholders,
scrub hooks, secrets, metadata) in a ``conftest.py`` to change them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast

import pytest

from ..cassettes import RECORD_MODES, RecordMode
from ..errors import AuthSecError, CassetteError

if TYPE_CHECKING:
    from ..broker import TokenBroker
    from ..settings import AuthSecSettings
    from ..transports.base import Transport
    from ..transports.record import RecordingTransport
    from ..transports.replay import ReplayTransport

__all__ = ["AuthSecCassetteWarning", "CassetteSpec"]

CASSETTE_MARKER = "authsec_cassette"
_CASSETTE_MARKER_OPTIONS = frozenset(
    {"record_mode", "allow_playback_repeats", "strict_unused", "block_network"}
)
_OPTION_KEYS = frozenset({"placeholders", "scrub", "secrets", "metadata"})
_NAME = re.compile(r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*")


class AuthSecCassetteWarning(pytest.PytestWarning):
    """The command line's record mode overrode a marker's."""


# --- options and marker ---------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("authsec-crewai", "authsec-crewai cassettes")
    group.addoption(
        "--authsec-record-mode",
        action="store",
        dest="authsec_record_mode",
        default=None,
        choices=RECORD_MODES,
        help="Record mode for every authsec_cassette test: none (replay only), once, "
        "new_episodes or all. Wins over the markers' record_mode (with a warning when "
        "they differ) and the authsec_record_mode ini option. Default: none.",
    )
    parser.addini(
        "authsec_record_mode",
        help="Default record mode of authsec_cassette tests (none, once, new_episodes, all).",
        default="none",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{CASSETTE_MARKER}(name=None, *, record_mode=None, allow_playback_repeats=True, "
        "strict_unused=False, block_network=True): record this test's AuthSec session "
        "to cassettes/<module>/<name>.json, or replay it "
        "(see authsec_crewai.testing.pytest_plugin)",
    )
    ini = str(config.getini("authsec_record_mode")).strip()
    if ini not in RECORD_MODES:
        raise pytest.UsageError(
            f"authsec_record_mode = {ini[:30]!r} in the pytest configuration is not a record "
            f"mode; use one of {', '.join(RECORD_MODES)}"
        )


def pytest_report_header(config: pytest.Config) -> str | None:
    mode = config.getoption("authsec_record_mode", None)
    if mode:
        return f"authsec-crewai cassettes: record mode {mode} (--authsec-record-mode)"
    return None


# --- resolving a test's cassette --------------------------------------------------------------


@dataclass(frozen=True)
class CassetteSpec:
    """Where a test's cassette is and how it is used."""

    name: str
    path: Path
    record_mode: RecordMode
    record_mode_source: str
    """``--authsec-record-mode``, ``marker``, ``ini`` or ``default``."""
    allow_playback_repeats: bool = True
    strict_unused: bool = False
    block_network: bool = True

    @property
    def replay_only(self) -> bool:
        """True when nothing is recorded: mode none, or once with an existing cassette."""
        return self.record_mode == "none" or (self.record_mode == "once" and self.path.exists())


def _fail(message: str) -> NoReturn:
    """Fail the test with one line and no traceback: these are usage errors."""
    pytest.fail(f"{CASSETTE_MARKER}: {message}", pytrace=False)


def _default_name(node_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", node_name).strip("._-") or "cassette"


def _resolve(request: pytest.FixtureRequest, directory: Path) -> CassetteSpec:
    marker = request.node.get_closest_marker(CASSETTE_MARKER)
    args: tuple[Any, ...] = marker.args if marker is not None else ()
    kwargs: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    unknown = sorted(set(kwargs) - _CASSETTE_MARKER_OPTIONS - {"name"})
    if unknown:
        _fail(
            f"unknown option(s) {', '.join(unknown)}; the marker takes a name and "
            f"{', '.join(sorted(_CASSETTE_MARKER_OPTIONS))}"
        )
    if len(args) > 1 or (args and "name" in kwargs):
        _fail("give the cassette one name, e.g. @pytest.mark.authsec_cassette('vault')")
    name = args[0] if args else kwargs.get("name")
    if name is None:
        name = _default_name(request.node.name)
    if (
        not isinstance(name, str)
        or not _NAME.fullmatch(name)
        or any(part in (".", "..") for part in name.split("/"))
    ):
        _fail(
            f"cassette name {str(name)[:60]!r} is not a plain relative name (letters, digits, "
            "'.', '_', '-', optionally in '/'-separated folders)"
        )
    marker_mode = kwargs.get("record_mode")
    if marker_mode is not None and marker_mode not in RECORD_MODES:
        _fail(f"record_mode={marker_mode!r} is not one of {', '.join(RECORD_MODES)}")
    config = request.config
    cli_mode = config.getoption("authsec_record_mode", None)
    ini_mode = str(config.getini("authsec_record_mode")).strip() or "none"
    if cli_mode:
        mode, source = cli_mode, "--authsec-record-mode"
        if marker_mode is not None and marker_mode != cli_mode:
            request.node.warn(
                AuthSecCassetteWarning(
                    f"--authsec-record-mode={cli_mode} overrides this test's "
                    f"@pytest.mark.{CASSETTE_MARKER}(record_mode={marker_mode!r})"
                )
            )
    elif marker_mode is not None:
        mode, source = marker_mode, "marker"
    elif ini_mode != "none":
        mode, source = ini_mode, "ini"
    else:
        mode, source = "none", "default"
    for flag in ("allow_playback_repeats", "strict_unused", "block_network"):
        if flag in kwargs and not isinstance(kwargs[flag], bool):
            _fail(f"{flag} must be True or False")
    filename = name if name.endswith(".json") else f"{name}.json"
    return CassetteSpec(
        name=name,
        path=directory / filename,
        record_mode=cast(RecordMode, mode),
        record_mode_source=source,
        allow_playback_repeats=kwargs.get("allow_playback_repeats", True),
        strict_unused=kwargs.get("strict_unused", False),
        block_network=kwargs.get("block_network", True),
    )


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def authsec_cassette_dir(request: pytest.FixtureRequest) -> Path:
    """``cassettes/<test module>`` next to the test file. Override to move cassettes."""
    module = Path(request.path)
    return module.parent / "cassettes" / module.stem


@pytest.fixture
def authsec_cassette(request: pytest.FixtureRequest, authsec_cassette_dir: Path) -> CassetteSpec:
    """This test's cassette: its path, record mode (and where that came from), options."""
    return _resolve(request, authsec_cassette_dir)


@pytest.fixture
def authsec_cassette_options() -> dict[str, Any]:
    """Extra recording/replay options: ``placeholders``, ``scrub``, ``secrets``, ``metadata``.

    Override it (in a ``conftest.py`` or a module) to scrub your own values, e.g.
    ``return {"placeholders": {os.environ["ACCOUNT_ID"]: "<account>"}}``.
    """
    return {}


@pytest.fixture
def authsec_settings() -> AuthSecSettings:
    """The settings fixtures build from: ``AuthSecSettings()`` (environment and ``.env``)."""
    from ..settings import AuthSecSettings

    try:
        return AuthSecSettings()
    except AuthSecError as exc:
        _fail(str(exc))


@pytest.fixture
def authsec_inner_transport(authsec_settings: AuthSecSettings) -> Transport:
    """What a recording records: the live server when ``AUTHSEC_BASE_URL`` and the client
    id are set, else the mock. Only built when the test records."""
    from ..wiring import recording_source

    return recording_source(authsec_settings)


@pytest.fixture
def authsec_transport(
    request: pytest.FixtureRequest,
    authsec_cassette: CassetteSpec,
    authsec_cassette_options: dict[str, Any],
) -> Iterator[ReplayTransport | RecordingTransport]:
    """The test's transport: replaying (network blocked) or recording.

    At teardown the cassette is written when recording, and with
    ``strict_unused=True`` unused interactions fail the test.
    """
    from ..transports.replay import ReplayTransport, open_cassette_transport
    from ._netguard import block_network

    spec = authsec_cassette
    options = dict(authsec_cassette_options)
    unknown = sorted(set(options) - _OPTION_KEYS)
    if unknown:
        _fail(
            f"authsec_cassette_options has unknown key(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(_OPTION_KEYS))}"
        )
    if spec.replay_only and not spec.path.exists():
        _fail(
            f"cassette {spec.path} does not exist, and the record mode is 'none' "
            f"(from {spec.record_mode_source}); record it with --authsec-record-mode=once"
        )
    transport: ReplayTransport | RecordingTransport
    with ExitStack() as stack:
        try:
            transport = open_cassette_transport(
                # Built only when something is recorded.
                lambda: cast("Transport", request.getfixturevalue("authsec_inner_transport")),
                spec.path,
                record_mode=spec.record_mode,
                allow_playback_repeats=spec.allow_playback_repeats,
                strict_unused=spec.strict_unused,
                **options,
            )
            if isinstance(transport, ReplayTransport) and spec.block_network:
                attempts = stack.enter_context(
                    block_network(
                        f"the network is blocked while {request.node.nodeid} replays "
                        f"{spec.path.name} (@pytest.mark.{CASSETTE_MARKER}(block_network=False) "
                        "allows it)"
                    )
                )
                stack.callback(_report_attempts, request, attempts)
        except CassetteError as exc:
            _fail(str(exc))
        yield transport
    try:
        transport.close()
    except CassetteError as exc:
        _fail(str(exc))


def _report_attempts(request: pytest.FixtureRequest, attempts: list[str]) -> None:
    if attempts:
        shown = "; ".join(attempts[:3]) + ("; ..." if len(attempts) > 3 else "")
        request.node.warn(
            AuthSecCassetteWarning(
                f"{len(attempts)} network connection(s) were refused during replay: {shown}"
            )
        )


@pytest.fixture
def authsec_broker(
    authsec_transport: ReplayTransport | RecordingTransport,
    authsec_settings: AuthSecSettings,
) -> TokenBroker:
    """A ``TokenBroker`` on the test's transport and the cassette's clock, not yet started:
    ``async with authsec_broker as broker: ...`` (closing it writes the cassette)."""
    from ..wiring import build_broker

    return build_broker(authsec_settings, authsec_transport)


@pytest.fixture
def authsec_tool(
    authsec_transport: ReplayTransport | RecordingTransport,
    authsec_settings: AuthSecSettings,
) -> Iterator[Any]:
    """A CrewAI ``AuthSecSecureFetchTool`` on the test's transport (imports crewai).

    Its shared broker is closed at teardown, which writes the cassette.
    """
    from ..tools import AuthSecSecureFetchTool, close_shared_brokers

    # The wiring asks as the recorded agent and names the recorded API origin.
    tool = AuthSecSecureFetchTool(settings=authsec_settings, transport=authsec_transport)
    try:
        yield tool
    finally:
        close_shared_brokers()
