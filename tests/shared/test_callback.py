"""The callback schema: what the ingress accepts and what it refuses, with the reason."""

from __future__ import annotations

import orjson
import pytest

from shared.callback import Callback, CallbackLimits, parse_callback, parse_prompt, without_callback_url
from shared.errors import InvalidCallback

LIMITS = CallbackLimits(max_result_urls=4, max_url_length=100)
AT = "2026-11-25T00:00:00.000Z"


def body(**overrides: object) -> bytes:
    data: dict[str, object] = {
        "taskId": "mj_task_12345",
        "promptJson": '{"prompt":"a beautiful landscape","model":"midjourney"}',
        "resultUrls": ["https://example.com/1.png", "https://example.com/2.png"],
    }
    document: dict[str, object] = {"code": 200, "msg": "success", "data": data}
    for key, value in overrides.items():
        if key in ("code", "msg", "data"):
            document[key] = value
        else:
            data[key] = value
    return orjson.dumps(document)


def test_the_providers_success_callback_is_parsed() -> None:
    callback = parse_callback(body(), received_at=AT, limits=LIMITS)
    assert callback.task_id == "mj_task_12345"
    assert callback.code == 200
    assert callback.succeeded
    assert callback.msg == "success"
    assert callback.result_urls == ("https://example.com/1.png", "https://example.com/2.png")
    assert callback.prompt_json == '{"prompt":"a beautiful landscape","model":"midjourney"}'
    assert callback.received_at == AT


def test_the_task_id_spelling_is_accepted() -> None:
    document = {"code": 200, "msg": "ok", "data": {"task_id": "abc-1", "resultUrls": []}}
    assert parse_callback(orjson.dumps(document), received_at=AT, limits=LIMITS).task_id == "abc-1"


def test_with_both_spellings_task_id_in_camel_case_wins() -> None:
    assert parse_callback(body(task_id="snake-1"), received_at=AT, limits=LIMITS).task_id == "mj_task_12345"


def test_a_task_id_of_128_characters_is_accepted() -> None:
    assert parse_callback(body(taskId="x" * 128), received_at=AT, limits=LIMITS).task_id == "x" * 128


def test_a_failure_without_urls_or_prompt_is_accepted() -> None:
    document = {"code": 500, "msg": "generation failed", "data": {"taskId": "t1"}}
    callback = parse_callback(orjson.dumps(document), received_at=AT, limits=LIMITS)
    assert not callback.succeeded
    assert callback.result_urls == ()
    assert callback.prompt_json is None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (orjson.dumps({"code": 200}), "'data' must be an object"),
        (body(code="200"), "'code' must be an integer"),
        (body(code=True), "'code' must be an integer"),
        (body(code=200.5), "'code' must be an integer"),
        (body(msg=5), "'msg' must be a string"),
        (body(promptJson={"prompt": "x"}), "'data.promptJson' must be a string"),
        (body(resultUrls="https://example.com/1.png"), "list of strings"),
        (body(resultUrls=[1, 2]), "list of strings"),
        (body(resultUrls=["https://e.com/x"] * 5), "more than 4 entries"),
        (body(resultUrls=["https://e.com/" + "x" * 100]), "longer than 100"),
        (body(taskId=None), "'data.taskId'"),
        (body(taskId=12345), "'data.taskId'"),
        (body(promptJson='"' + "x" * 70_000 + '"'), "'data.promptJson' is longer than 65536 bytes"),
    ],
)
def test_malformed_callbacks_are_refused_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidCallback) as caught:
        parse_callback(raw, received_at=AT, limits=LIMITS)
    assert reason in caught.value.reason
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "task_id",
    [
        "",
        "../etc",
        "a/b",
        "..",
        ".",
        "a.b",
        "a\x00b",
        "a\nb",
        "a b",
        "-leading",
        "_x",
        "x" * 129,
        "é",
        "%2e%2e",
    ],
)
def test_task_ids_that_could_leave_the_task_prefix_are_refused(task_id: str) -> None:
    with pytest.raises(InvalidCallback):
        parse_callback(body(taskId=task_id), received_at=AT, limits=LIMITS)


def test_the_queue_form_round_trips() -> None:
    callback = parse_callback(body(), received_at=AT, limits=LIMITS)
    assert Callback.from_message(orjson.loads(orjson.dumps(callback.to_message()))) == callback


def test_a_tampered_queue_message_is_checked_again() -> None:
    message = parse_callback(body(), received_at=AT, limits=LIMITS).to_message()
    message["taskId"] = "../../escape"
    with pytest.raises(InvalidCallback):
        Callback.from_message(message)


@pytest.mark.parametrize(
    ("prompt_json", "params", "prompt"),
    [
        ('{"prompt": "a cat", "model": "midjourney"}', {"prompt": "a cat", "model": "midjourney"}, "a cat"),
        ('{"model": "midjourney"}', {"model": "midjourney"}, None),
        ('{"prompt": 5}', {"prompt": 5}, None),
        ("{not json", None, None),
        ('["a list"]', None, None),
        (None, None, None),
    ],
)
def test_prompt_json_is_parsed_when_it_can_be(
    prompt_json: str | None, params: dict[str, object] | None, prompt: str | None
) -> None:
    assert parse_prompt(prompt_json) == (params, prompt)


#: The callback URL ``mjhook submit`` sends, its token the secret the manifest must not hold.
CALLBACK_URL = "http://h/callbacks/midjourney?token=SECRET"


def as_json(document: object) -> str:
    return orjson.dumps(document).decode()


@pytest.mark.parametrize(
    ("prompt_json", "expected"),
    [
        # A JSON string holding the request's JSON text: taken out of that text, still a string
        (as_json(as_json({"callBackUrl": CALLBACK_URL, "v": 7})), as_json(as_json({"v": 7}))),
        (as_json([{"prompt": "a fox", "callBackUrl": CALLBACK_URL}, 3]), as_json([{"prompt": "a fox"}, 3])),
        (
            as_json({"prompt": "a fox", "params": {"callBackUrl": CALLBACK_URL, "version": 7}}),
            as_json({"prompt": "a fox", "params": {"version": 7}}),
        ),
        # JSON text in a string in JSON text in a string: each level read as JSON in turn
        (
            as_json(
                {"prompt": "a fox", "request": as_json({"body": as_json({"callBackUrl": CALLBACK_URL})})}
            ),
            as_json({"prompt": "a fox", "request": as_json({"body": as_json({})})}),
        ),
        # Not JSON, in a string of JSON
        (
            as_json({"prompt": "a fox", "note": f"sent with callBackUrl={CALLBACK_URL} at noon"}),
            as_json({"prompt": "a fox", "note": "sent with callBackUrl= at noon"}),
        ),
        # The key in another case or spelling
        (as_json({"prompt": "a fox", "callbackURL": CALLBACK_URL}), as_json({"prompt": "a fox"})),
        (as_json({"prompt": "a fox", "callback_url": CALLBACK_URL}), as_json({"prompt": "a fox"})),
        # The key spelled with an escape, in the JSON text a string holds
        (
            as_json({"request": '{"\\u0063allBackUrl": "' + CALLBACK_URL + '"}'}),
            as_json({"request": as_json({})}),
        ),
    ],
    ids=[
        "json-string",
        "list",
        "nested-object",
        "json-in-strings",
        "text-in-a-string",
        "case",
        "snake-case",
        "escaped-key",
    ],
)
def test_the_callback_url_is_taken_out_of_json_wherever_it_is(prompt_json: str, expected: str) -> None:
    """Given a promptJson that is valid JSON with the callback URL anywhere but a top-level member
    When it is scrubbed
    Then no trace of the token is left, and the JSON keeps its shape but for the URL."""
    scrubbed = without_callback_url(prompt_json)
    assert scrubbed == expected
    assert "SECRET" not in scrubbed


@pytest.mark.parametrize(
    ("prompt_json", "expected"),
    [
        (
            f"{{'prompt': 'a fox', 'callBackUrl': '{CALLBACK_URL}', 'v': 7",
            "{'prompt': 'a fox', 'callBackUrl': '', 'v': 7",
        ),
        (f"{{prompt: a fox, callBackUrl: {CALLBACK_URL}, v: 7", "{prompt: a fox, callBackUrl: , v: 7"),
        (f"prompt=a fox callBackUrl={CALLBACK_URL}&v=7 end", "prompt=a fox callBackUrl= end"),
        (
            f'{{\\"prompt\\": \\"a fox\\", \\"callBackUrl\\": \\"{CALLBACK_URL}\\", \\"v\\": 7',
            '{\\"prompt\\": \\"a fox\\", \\"callBackUrl\\": \\"\\", \\"v\\": 7',
        ),
        (
            f"{{'prompt': 'a fox', 'callBackUrl': '{CALLBACK_URL[:-3]}",
            "{'prompt': 'a fox', 'callBackUrl': ''",
        ),
        (
            f'{{"prompt": "a fox", "CallBackURL": "{CALLBACK_URL}", "v": ',
            '{"prompt": "a fox", "CallBackURL": "", "v": ',
        ),
    ],
    ids=["single-quoted", "unquoted-key", "equals-sign", "escaped-quotes", "cut-short", "case"],
)
def test_the_callback_url_is_emptied_in_text_that_is_no_json(prompt_json: str, expected: str) -> None:
    """Given a malformed promptJson (the provider's docs warn of it) holding the callback URL
    written in some other way than a JSON member
    When it is scrubbed
    Then the URL's value is emptied and the rest of the text is kept as it came."""
    scrubbed = without_callback_url(prompt_json)
    assert scrubbed == expected
    assert "SECRET" not in scrubbed
