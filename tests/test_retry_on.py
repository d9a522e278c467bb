"""`retry_on` as in HAProxy: which failures resend an idempotent request, and never a POST."""

from __future__ import annotations

from e2e_helpers import Handler, Harness, Message, response, serve


def first_answer_then_ok(first: bytes | None) -> Handler:
    """The first request the backend sees gets `first` (None: closed unanswered); every later
    one gets 200 `ok`."""
    seen = {"n": 0}

    def respond(req: Message) -> bytes | None:
        seen["n"] += 1
        return first if seen["n"] == 1 else response(200, b"ok")

    return serve(respond)


async def test_503_is_retried_when_listed(harness: Harness) -> None:
    backend = await harness.raw_backend(first_answer_then_ok(response(503, b"busy")))
    lbd = await harness.lbd([backend.port], backend={"retry_on": ["conn-failure", "503"]})
    async with harness.session().get(f"http://127.0.0.1:{lbd.port}/x") as resp:
        assert resp.status == 200
        assert await resp.read() == b"ok"
    assert len(backend.requests) == 2


async def test_503_is_passed_through_by_default(harness: Harness) -> None:
    backend = await harness.raw_backend(first_answer_then_ok(response(503, b"busy")))
    lbd = await harness.lbd([backend.port])
    async with harness.session().get(f"http://127.0.0.1:{lbd.port}/x") as resp:
        assert resp.status == 503
        assert await resp.read() == b"busy"
    assert len(backend.requests) == 1


async def test_post_is_never_resent_on_a_listed_status(harness: Harness) -> None:
    backend = await harness.raw_backend(first_answer_then_ok(response(503, b"busy")))
    lbd = await harness.lbd([backend.port], backend={"retry_on": ["conn-failure", "503"]})
    url = f"http://127.0.0.1:{lbd.port}/x"
    async with harness.session().post(url, data=b"prescription") as resp:
        assert resp.status == 503
    assert len(backend.requests) == 1


async def test_empty_response_retried_only_when_listed(harness: Harness) -> None:
    quiet = await harness.raw_backend(first_answer_then_ok(None))
    lbd = await harness.lbd([quiet.port])
    async with harness.session().get(f"http://127.0.0.1:{lbd.port}/x") as resp:
        assert resp.status == 502
    assert len(quiet.requests) == 1

    listed = await harness.raw_backend(first_answer_then_ok(None))
    lbd2 = await harness.lbd([listed.port], backend={"retry_on": ["empty-response"]})
    async with harness.session().get(f"http://127.0.0.1:{lbd2.port}/x") as resp:
        assert resp.status == 200
    assert len(listed.requests) == 2
