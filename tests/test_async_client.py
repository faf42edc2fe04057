"""``AsyncInpaintClient`` against the real server: the blocking client's results, errors and streams,
from asyncio."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest

from smartedit_client import (
    AsyncInpaintClient, InpaintResult, InvalidRequestError, PreviewEvent, ProgressEvent, ServerUnavailableError,
)
from test_engine_serving import log_entries, logged_span
from test_streaming import HEAVY, LONG, _stopped_within_a_step, inputs

pytestmark = pytest.mark.functional

EDIT = dict(prompt="a red chair", negative_prompt="ugly", num_inference_steps=5, guidance_scale=7.5, seed=17)


def _served_span(server, request_id: str) -> tuple[datetime, datetime]:
    """When the server began the request (its preprocess step) and when it was done (its postprocess
    step), from the server's own log lines."""
    (first,) = log_entries(server.log_file, request_id, "preprocess")
    (last,) = log_entries(server.log_file, request_id, "postprocess")
    return logged_span(first)[0], logged_span(last)[1]


def test_async_edits_are_the_blocking_clients_bytes_and_run_concurrently(server, client):
    async def main():
        async with AsyncInpaintClient(server.address.grpc) as aclient:
            assert await aclient.is_ready()
            # A long edit first, then the short ones: run concurrently, the short ones reach the server
            # while it is still on the long one; one after the other, none would.
            long_edit = aclient.inpaint(**inputs(LONG), prompt="long", num_inference_steps=60, seed=1,
                                        request_id="async-long-0001")
            results = await asyncio.gather(long_edit, *(
                aclient.inpaint(**inputs(seed=s), **dict(EDIT, seed=s), request_id=f"async-short-{s}")
                for s in range(3)))
            variations = await aclient.inpaint(**inputs(), **EDIT, num_images=2)
            info = await aclient.server_info()
            replayed = await aclient.replay(variations.images[1].png, **inputs())
        return results[1:], variations, info, replayed

    results, variations, info, replayed = asyncio.run(main())
    long_began, long_done = _served_span(server, "async-long-0001")
    for seed, result in enumerate(results):
        assert result.png == client.inpaint(**inputs(seed=seed), **dict(EDIT, seed=seed)).png
        began, done = _served_span(server, f"async-short-{seed}")
        assert began < long_done and long_began < done, (seed, (began, done), (long_began, long_done))
    assert [image.seed_used for image in variations.images] == [17, 18]
    assert replayed.png == variations.images[1].png
    assert info == client.server_info()


def test_async_errors_are_the_same_error_tree(server):
    async def main():
        async with AsyncInpaintClient(server.address.grpc) as aclient:
            with pytest.raises(InvalidRequestError, match="num_inference_steps: must be between 1 and"):
                await aclient.inpaint(**inputs(), prompt="x", num_inference_steps=0)
            with pytest.raises(TypeError, match="unexpected keyword argument 'num_steps'"):
                await aclient.inpaint(**inputs(), prompt="x", num_steps=3)
        async with AsyncInpaintClient("127.0.0.1:1", timeout_s=5) as nowhere:
            assert not await nowhere.is_ready()
            with pytest.raises(ServerUnavailableError):
                await nowhere.inpaint(**inputs(), prompt="x")
            with pytest.raises(ServerUnavailableError):  # the stream too: not a raw gRPC error
                async for _ in nowhere.inpaint_stream(**inputs(), prompt="x"):
                    pass

    asyncio.run(main())


def test_async_stream_gives_progress_previews_and_the_unary_bytes(server, client):
    async def main():
        async with AsyncInpaintClient(server.address.grpc) as aclient:
            async with aclient.inpaint_stream(**inputs(), **EDIT, preview_every=2) as stream:
                return [event async for event in stream], stream.result

    events, result = asyncio.run(main())
    assert [e.step for e in events if isinstance(e, ProgressEvent)] == [1, 2, 3, 4, 5]
    assert [e.step for e in events if isinstance(e, PreviewEvent)] == [2, 4, 5]
    assert isinstance(events[-1], InpaintResult) and events[-1] is result
    assert result.png == client.inpaint(**inputs(), **EDIT).png


def test_leaving_an_async_stream_half_way_cancels_the_edit(server):
    async def main():
        async with AsyncInpaintClient(server.address.grpc) as aclient:
            async with aclient.inpaint_stream(**inputs(LONG), prompt="x", seed=5, **HEAVY, preview_every=0,
                                              request_id="async-dropped-0001") as stream:
                async for event in stream:
                    if event.step == 2:
                        break

    asyncio.run(main())
    # Stopped by steps counted on the server, not by a clock: within two steps of the one last seen.
    _stopped_within_a_step(server, "async-dropped-0001", seen=2, seed=5)
