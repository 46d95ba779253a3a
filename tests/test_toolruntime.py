"""The runtime every framework's tool stands on (``ToolBinding``), without any framework:
the sync call from many threads, the async call on the caller's loop or on the shared
runtime's, under asyncio and trio, with concurrency and cancellation."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import anyio
import pytest

from authsec_crewai import errors
from authsec_crewai._toolruntime import ToolBinding, close_shared_brokers
from authsec_crewai.settings import AuthSecSettings
from authsec_crewai.transports.mock import MockTransport

CLIENT_ID = "6f1c2b9e-2f4d-4c1a-9a57-3d0f5b8e7a21"
SETTINGS = AuthSecSettings(mode="mock", client_id=CLIENT_ID)


@pytest.fixture(autouse=True)
def shared_brokers_closed() -> Iterator[None]:
    close_shared_brokers()
    yield
    close_shared_brokers()


def ok(text: str) -> bool:
    answer = json.loads(text)
    return answer["status"] == "ok" and answer["data"]["count"] == 6 and "eyJ" not in text


@pytest.mark.anyio
@pytest.mark.parametrize("on_runtime", [False, True], ids=["caller-loop", "runtime-loop"])
async def test_fifty_concurrent_async_calls_cost_one_token_fetch(on_runtime: bool) -> None:
    transport = MockTransport(latency=0.05)
    binding = ToolBinding.create(settings=SETTINGS, transport=transport)
    answers: list[str] = []

    async def call() -> None:
        answers.append(
            await binding.acall("secure-vault/records", "read:records", on_runtime=on_runtime)
        )

    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(call)
    assert len(answers) == 50 and all(ok(a) for a in answers)
    assert transport.calls == 1


@pytest.mark.anyio
async def test_a_cancelled_call_on_the_runtime_leaves_the_shared_fetch_for_the_others() -> None:
    transport = MockTransport(latency=0.3)
    binding = ToolBinding.create(settings=SETTINGS, transport=transport)
    with anyio.move_on_after(0.05) as scope:
        await binding.acall("secure-vault/records", "read:records", on_runtime=True)
    assert scope.cancelled_caught
    answer = await binding.acall("secure-vault/records", "read:records", on_runtime=True)
    assert ok(answer)
    assert transport.calls == 1  # the cancelled caller did not cancel the one fetch


def test_sync_calls_from_sixteen_threads_share_one_broker() -> None:
    transport = MockTransport(latency=0.05)
    binding = ToolBinding.create(settings=SETTINGS, transport=transport)
    barrier = threading.Barrier(16)
    answers: list[str] = []

    def call() -> None:
        barrier.wait()
        answers.append(binding.call("secure-vault/records", "read:records"))

    threads = [threading.Thread(target=call) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(answers) == 16 and all(ok(a) for a in answers)
    assert transport.calls == 1


def test_the_wiring_is_checked_when_the_binding_is_made() -> None:
    with pytest.raises(errors.ConfigurationError, match="not both"):
        ToolBinding.create(transport=MockTransport(), broker=object())  # type: ignore[arg-type]
    with pytest.raises(errors.ConfigurationError, match="SecureFetcher"):
        ToolBinding.create(fetcher=object())  # type: ignore[arg-type]
    with pytest.raises(errors.ConfigurationError, match="UUID"):
        ToolBinding.create(settings=SETTINGS, client_id="agent-7")


def test_a_runtime_closed_under_a_binding_is_replaced_on_the_next_call() -> None:
    binding = ToolBinding.create(settings=SETTINGS)
    assert ok(binding.call("secure-vault/records", "read:records"))
    first = binding.runtime()
    close_shared_brokers()
    assert ok(binding.call("secure-vault/records", "read:records"))
    assert binding.runtime() is not first and first.closed


def test_oauth_clients_get_a_broker_each_while_authsec_agents_share_one() -> None:
    """An OAuth transport authenticates as one client (its secret): a tool of another
    client on that broker would ask with the wrong credentials. AuthSec agents share."""
    oauth = {"mode": "oauth", "oauth_issuer": "https://as.example", "client_secret": "s" * 16}
    first = ToolBinding.create(settings=AuthSecSettings(**oauth, client_id="crew-a"))
    other_client = ToolBinding.create(settings=AuthSecSettings(**oauth, client_id="crew-b"))
    other_secret = ToolBinding.create(
        settings=AuthSecSettings(**{**oauth, "client_secret": "t" * 16}, client_id="crew-a")
    )
    runtimes = [b.runtime() for b in (first, other_client, other_secret)]
    assert len({id(r) for r in runtimes}) == 3
    assert [r.broker.client_id for r in runtimes] == ["crew-a", "crew-b", "crew-a"]
    same = ToolBinding.create(settings=AuthSecSettings(**oauth, client_id="crew-a"))
    assert same.runtime() is runtimes[0]
    agents = [
        ToolBinding.create(settings=AuthSecSettings(mode="mock", client_id=c))
        for c in (CLIENT_ID, "0b9c4f3e-8a51-4d3e-9f0a-6c2e1d7b5a43")
    ]
    assert agents[0].runtime() is agents[1].runtime()
