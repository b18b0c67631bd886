"""features.retries: the policy's forms, what counts as transient, and the retry loops."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator

import aiohttp
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from gcsfs.retry import HttpError
from hypothesis import given, settings
from hypothesis import strategies as st
from s3fs.errors import translate_boto_error

from features import retries
from features.retries import RetryPolicy, configure, counts_since, transient_kind
from schemas.errors import ConfigError, StoreUnavailableError

FAST = RetryPolicy(max_retries=3, timeout_seconds=5, initial_backoff=0.001, max_backoff=0.002)
SECONDS = st.floats(0, 1e6, allow_nan=False, allow_infinity=False)
POLICIES = st.builds(
    RetryPolicy,
    max_retries=st.integers(0, 10_000),
    timeout_seconds=SECONDS,
    initial_backoff=SECONDS,
    max_backoff=SECONDS,
    multiplier=st.floats(1, 100, allow_nan=False, allow_infinity=False),
)


@pytest.fixture
def use_policy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[RetryPolicy], None]]:
    """Sets a policy for this test only; the previous policy and environment come back."""
    monkeypatch.delenv(retries.POLICY_ENVIRONMENT, raising=False)
    previous = retries.policy()
    yield lambda new: configure(new, export=False)
    configure(previous, export=False)


@pytest.fixture
def fast_policy(use_policy: Callable[[RetryPolicy], None]) -> RetryPolicy:
    use_policy(FAST)
    return FAST


def client_error(status: int, code: str) -> ClientError:
    """A botocore ClientError as botocore builds it from an HTTP answer."""
    response = {
        "Error": {"Code": code, "Message": f"injected {code}"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "PutObject")  # type: ignore[arg-type]


def failing(
    errors: list[BaseException], value: str = "done"
) -> tuple[Callable[[], str], list[int]]:
    """An attempt raising errors[0], errors[1], ... then returning value; and its call count."""
    calls: list[int] = []

    def attempt() -> str:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return value

    return attempt, calls


# ---- the policy's forms -----------------------------------------------------------------
@settings(max_examples=60, deadline=None, derandomize=True)
@given(policy=POLICIES)
def test_policy_round_trips_through_dict_and_text(policy: RetryPolicy) -> None:
    assert RetryPolicy.from_dict(policy.to_dict()) == policy
    assert RetryPolicy.parse(policy.to_text()) == policy
    assert policy.to_text().count(",") == len(policy.to_dict()) - 1


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("max_retries=-1", "max_retries"),
        ("initial_backoff=-0.5", "initial_backoff"),
        ("timeout_seconds=-2", "timeout_seconds"),
        ("max_backoff=-1", "max_backoff"),
        ("multiplier=0.5", "multiplier"),
        ("max_retries=abc", "max_retries must be an integer.*abc"),
        ("max_retries=2.7", "max_retries must be an integer"),
        ("max_backoff=nan", "max_backoff must be a finite number"),
        ("timeout_seconds=inf", "timeout_seconds must be a finite number"),
        ("timeout_seconds=soon", "soon"),
        ("retires=3", "retires"),
        ("max_retries=3,jitter=1", "jitter"),
        ("max_retries", "key=value"),
    ],
)
def test_invalid_settings_are_config_errors_naming_them(text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        RetryPolicy.parse(text)


def test_unknown_keys_in_dict_form_are_named() -> None:
    with pytest.raises(ConfigError, match=r"\['backoff', 'tries'\]"):
        RetryPolicy.from_dict({"tries": 3, "backoff": 1.0, "max_retries": 2})


# ---- what is transient ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (client_error(503, "SlowDown"), "503"),
        (client_error(429, "SomethingElse"), "429"),
        (client_error(500, "SomethingElse"), "500"),
        (client_error(0, "SlowDown"), "SlowDown"),
        (client_error(404, "NoSuchKey"), None),
        (client_error(403, "AccessDenied"), None),
        (client_error(412, "PreconditionFailed"), None),
        (HttpError({"code": 503, "message": "x"}), "503"),
        (HttpError({"code": 404, "message": "x"}), None),
        (ConnectionResetError(), "reset"),
        (ConnectionRefusedError(), "refused"),
        (TimeoutError(), "timeout"),
        (EndpointConnectionError(endpoint_url="x"), "refused"),
        (aiohttp.ServerDisconnectedError(), "reset"),
        (ValueError("not a store error"), None),
    ],
    ids=lambda value: value if isinstance(value, str) else type(value).__name__,
)
def test_transient_kind_of_real_exceptions(error: BaseException, kind: str | None) -> None:
    assert transient_kind(error) == kind


@pytest.mark.parametrize(("status", "code"), [(503, "SlowDown"), (500, "InternalError")])
def test_wrapped_client_errors_stay_transient(status: int, code: str) -> None:
    wrapped = translate_boto_error(client_error(status, code))  # what s3fs raises
    assert type(wrapped) is OSError and isinstance(wrapped.__cause__, ClientError)
    assert transient_kind(wrapped) == str(status)


def test_answers_are_never_transient_whatever_their_cause() -> None:
    assert isinstance(translate_boto_error(client_error(404, "NoSuchKey")), FileNotFoundError)
    for final in (FileNotFoundError("gone"), PermissionError("no"), StoreUnavailableError("x")):
        final.__cause__ = client_error(503, "SlowDown")
        assert transient_kind(final) is None


# ---- the loops --------------------------------------------------------------------------
def test_call_retries_transient_errors_then_returns(fast_policy: RetryPolicy) -> None:
    before = retries.COUNTERS.snapshot()
    attempt, calls = failing([client_error(503, "SlowDown")] * 2)
    assert retries.call("PUT", "s3://b/k", attempt) == "done"
    assert len(calls) == 3
    assert counts_since(before) == {"retry 503": 2}


def test_call_gives_up_with_one_line_naming_everything(fast_policy: RetryPolicy) -> None:
    before = retries.COUNTERS.snapshot()
    attempt, calls = failing([client_error(503, "SlowDown")] * 100)
    with pytest.raises(StoreUnavailableError) as raised:
        retries.call("S3 put_object", "s3://bucket/view/shard-7.json", attempt)
    message = str(raised.value)
    assert len(calls) == fast_policy.max_retries + 1 == 4
    assert "\n" not in message
    for part in ("S3 put_object", "s3://bucket/view/shard-7.json", "4 attempt", "503"):
        assert part in message
    assert isinstance(raised.value.__cause__, ClientError)
    assert counts_since(before).get("gave up") == 1


def test_call_raises_final_errors_at_once(fast_policy: RetryPolicy) -> None:
    before = retries.COUNTERS.snapshot()
    attempt, calls = failing([FileNotFoundError("s3://b/missing")])
    with pytest.raises(FileNotFoundError, match="missing"):
        retries.call("GET", "s3://b/missing", attempt)
    assert len(calls) == 1
    assert counts_since(before) == {}


def test_call_is_bounded_in_time(use_policy: Callable[[RetryPolicy], None]) -> None:
    bounded = RetryPolicy(
        max_retries=1000, timeout_seconds=0.3, initial_backoff=0.05, max_backoff=0.05
    )
    use_policy(bounded)
    attempt, calls = failing([ConnectionResetError("reset by peer")] * 10_000)
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="reset"):
        retries.call("GET", "s3://b/k", attempt)
    assert time.monotonic() - started < 1.0
    assert 2 <= len(calls) < bounded.max_retries  # it did retry, and the clock stopped it


def as_async(attempt: Callable[[], str]) -> Callable[[], Awaitable[str]]:
    async def attempt_async() -> str:
        await asyncio.sleep(0)
        return attempt()

    return attempt_async


def test_call_async_retries_and_gives_up(fast_policy: RetryPolicy) -> None:
    before = retries.COUNTERS.snapshot()
    errors: list[BaseException] = [HttpError({"code": 503, "message": "x"}), TimeoutError()]
    attempt, calls = failing(errors, "async done")
    done = asyncio.run(retries.call_async("GCS GET", "gs://b/k", as_async(attempt)))
    assert done == "async done"
    assert len(calls) == 3
    assert counts_since(before) == {"retry 503": 1, "retry timeout": 1}

    always, always_calls = failing([ConnectionResetError()] * 100)
    with pytest.raises(StoreUnavailableError, match="GCS GET gs://b/k2 failed after 4 attempt"):
        asyncio.run(retries.call_async("GCS GET", "gs://b/k2", as_async(always)))
    assert len(always_calls) == 4

    missing, missing_calls = failing([FileNotFoundError("gs://b/none")])
    with pytest.raises(FileNotFoundError):
        asyncio.run(retries.call_async("GCS GET", "gs://b/none", as_async(missing)))
    assert len(missing_calls) == 1


# ---- conditional writes settled by reading back -------------------------------------------
def settle(
    outcomes: list[BaseException | bool], landed_answer: bool
) -> tuple[bool, list[int], dict[str, int]]:
    """settle_conditional over attempts with these outcomes; (result, read-backs, counts)."""
    pending, read_backs = list(outcomes), []
    before = retries.COUNTERS.snapshot()

    def attempt() -> bool:
        outcome = pending.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def landed() -> bool:
        read_backs.append(1)
        return landed_answer

    result = retries.settle_conditional("create marker", "s3://b/m.json", attempt, landed)
    assert not pending  # exactly the attempts needed were made
    return result, read_backs, counts_since(before)


def test_lost_answer_that_landed_is_a_win(fast_policy: RetryPolicy) -> None:
    result, read_backs, counts = settle([ConnectionResetError(), False], landed_answer=True)
    assert result is True and len(read_backs) == 1
    assert counts == {"retry reset": 1, "ambiguous create marker": 1}


def test_lost_answer_that_did_not_land_is_a_loss(fast_policy: RetryPolicy) -> None:
    result, read_backs, counts = settle([ConnectionResetError(), False], landed_answer=False)
    assert result is False and len(read_backs) == 1
    assert counts == {"retry reset": 1}  # 'ambiguous' counts only writes found to have landed


@pytest.mark.parametrize("landed_answer", [False, True])
def test_every_failed_precondition_is_read_back(
    fast_policy: RetryPolicy, landed_answer: bool
) -> None:
    # No error seen here, yet a layer below (aiohttp re-sending a PUT on a dropped kept-alive
    # connection) may have applied this writer's own write: the read-back decides.
    result, read_backs, counts = settle([False], landed_answer=landed_answer)
    assert result is landed_answer and len(read_backs) == 1
    assert counts == ({"ambiguous create marker": 1} if landed_answer else {})


def test_clean_success_is_a_win(fast_policy: RetryPolicy) -> None:
    result, read_backs, counts = settle([True], landed_answer=False)
    assert result is True and read_backs == [] and counts == {}
    result, read_backs, counts = settle([TimeoutError(), True], landed_answer=False)
    assert result is True and read_backs == [] and counts == {"retry timeout": 1}
