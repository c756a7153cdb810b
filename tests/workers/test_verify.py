"""Re-verification of success callbacks against the provider's record-info."""

from __future__ import annotations

import pytest

from shared.callback import Callback, CallbackLimits
from shared.errors import ProviderRefused
from shared.provider import TaskRecordInfo, TaskStatus
from workers.verify import ResultVerifier, VerificationPending

CALLBACK = Callback(
    "t1", 200, "success", None, ("https://cdn.example/a.png", "https://cdn.example/b.png"), "now"
)


def info(status: TaskStatus, urls: tuple[str, ...] = (), error: str | None = None) -> TaskRecordInfo:
    return TaskRecordInfo(
        task_id="t1",
        task_type="mj_txt2img",
        status=status,
        success_flag=None,
        result_urls=urls,
        error_code=None,
        error_message=error,
        param_json=None,
        create_time=None,
        complete_time=None,
    )


def verifier(answer: TaskRecordInfo | Exception) -> ResultVerifier:
    def record_info(task_id: str) -> TaskRecordInfo:
        assert task_id == "t1"
        if isinstance(answer, Exception):
            raise answer
        return answer

    return ResultVerifier(record_info)


def test_matching_urls_are_confirmed() -> None:
    checked, verification = verifier(info(TaskStatus.SUCCESS, CALLBACK.result_urls)).verify(CALLBACK)
    assert checked == CALLBACK
    assert not verification.mismatch
    assert verification.to_manifest() == {
        "checked": True,
        "mismatch": False,
        "reason": "confirmed",
        "callbackUrls": [],
    }


def test_tampered_urls_are_replaced_by_the_providers_and_recorded() -> None:
    tampered = Callback("t1", 200, "success", None, ("http://attacker.example/x.png",), "now")
    checked, verification = verifier(info(TaskStatus.SUCCESS, CALLBACK.result_urls)).verify(tampered)
    assert checked.result_urls == CALLBACK.result_urls
    assert verification.mismatch
    assert verification.to_manifest()["callbackUrls"] == ["http://attacker.example/x.png"]


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (info(TaskStatus.FAILED, error="nsfw"), "the provider reports the generation failed (nsfw)"),
        (ProviderRefused("unknown", code=404), "the provider does not know this task"),
        # As the polling fallback reads record-info: 400 and 422 about a task are an unknown one,
        # the provider's 501 its generation failed (both were retried, a dozen provider calls over
        # about an hour, until the polling fallback found the same and failed the task)
        (ProviderRefused("bad task", code=422), "the provider does not know this task"),
        (ProviderRefused("bad task", code=400), "the provider does not know this task"),
        (
            ProviderRefused("failed", code=501, provider_msg="banned prompt"),
            "the provider reports the generation failed (banned prompt)",
        ),
    ],
)
def test_a_success_the_provider_disowns_becomes_a_failure(
    answer: TaskRecordInfo | Exception, reason: str
) -> None:
    checked, verification = verifier(answer).verify(CALLBACK)
    assert checked.code == 500
    assert checked.result_urls == ()
    assert checked.msg == f"success not confirmed: {reason}"
    assert verification.mismatch


@pytest.mark.parametrize(
    "answer",
    [
        info(TaskStatus.GENERATING),
        # a record not filled in yet: its empty list must not replace the callback's files
        info(TaskStatus.SUCCESS, ()),
        ProviderRefused("bad key", code=401),
        ProviderRefused("credits", code=402),
    ],
)
def test_when_the_provider_cannot_say_now_the_task_is_retried(answer: TaskRecordInfo | Exception) -> None:
    with pytest.raises(VerificationPending):
        verifier(answer).verify(CALLBACK)


def test_a_success_without_urls_that_the_provider_lists_without_results_is_not_waited_for() -> None:
    """Nothing to wait for: both say there are no files; the task fails now, with its manifest."""
    empty = Callback("t1", 200, "success", None, (), "now")
    checked, verification = verifier(info(TaskStatus.SUCCESS, ())).verify(empty)
    assert (checked.result_urls, verification.mismatch) == ((), False)


@pytest.mark.parametrize(
    ("urls", "reason"),
    [
        (tuple(f"https://cdn.example/{n}.png" for n in range(5)), "more than 4 entries"),
        (("https://cdn.example/" + "a" * 100,), "longer than 64 characters"),
    ],
    ids=["too-many", "too-long"],
)
def test_provider_urls_past_the_callback_limits_fail_the_task(urls: tuple[str, ...], reason: str) -> None:
    """Given limits of 4 URLs of 64 characters (MJHOOK_MAX_RESULT_URLS, MJHOOK_MAX_URL_LENGTH)
    When the provider lists more, or a longer one, for a success called back
    Then the task fails saying so, as the ingress refuses such a callback and the polling fallback
    such an answer; those URLs were all downloaded, into a manifest of any size."""
    limited = ResultVerifier(
        lambda task_id: info(TaskStatus.SUCCESS, urls),
        limits=CallbackLimits(max_result_urls=4, max_url_length=64),
    )
    checked, verification = limited.verify(CALLBACK)
    assert (checked.succeeded, checked.result_urls) == (False, ())
    assert reason in checked.msg
    assert verification.mismatch


def test_a_callback_listing_the_providers_urls_in_another_order_is_a_mismatch() -> None:
    """Given a success callback whose URLs are the provider's, in another order (so files would be
    stored under other indexes), or with one of them twice
    Then the provider's list is used and the manifest records the mismatch with the callback's
    list: "confirmed" would say the callback was what the provider reported."""
    provider_urls = CALLBACK.result_urls
    for callback_urls in (tuple(reversed(provider_urls)), (*provider_urls, provider_urls[0])):
        called_back = Callback("t1", 200, "success", None, callback_urls, "now")
        checked, verification = verifier(info(TaskStatus.SUCCESS, provider_urls)).verify(called_back)
        assert checked.result_urls == provider_urls
        assert verification.mismatch
        assert verification.to_manifest()["reason"] == "the callback's result URLs differ from the provider's"
        assert verification.to_manifest()["callbackUrls"] == list(callback_urls)
