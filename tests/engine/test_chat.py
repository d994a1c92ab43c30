"""Chat engine: base vs tuned exactness, streaming, cancel, trimming, stops, sampling, examples."""

from __future__ import annotations

import json
import shutil
import threading
import time
import weakref
from pathlib import Path

import pytest

from engine import workspace
from engine.chat import (
    ChatError,
    ChatModel,
    ChatSession,
    ChatSettings,
    CompareSession,
    StopMatcher,
    add_to_dataset,
    resolve_adapter,
)
from engine.templates import CHATML_TEMPLATE, DEFAULT_CHAT_TEMPLATE
from tests.helpers import STORY, make_chat_adapter, make_chat_run

GREEDY = ChatSettings(temperature=0.0, max_tokens=40, stop=[])
RUN_TEMPLATE = (
    "{% for m in messages %}<<{{ m['role'] }}>> {{ m['content'] }}\n{% endfor %}<<assistant>> "
)


# ---------------------------------------------------------------------------------------------
# Adapters and run folders, built with mlx-lm's own functions (as mlx_lm.lora saves them)


def mlx_lm_text(model_path, tokens, adapter_path=None, max_tokens=40, seed=None, **kwargs) -> str:
    import mlx.core as mx
    from mlx_lm import generate, load

    model, tokenizer = load(
        str(model_path), adapter_path=str(adapter_path) if adapter_path else None
    )
    if seed is not None:  # after loading: building a model draws random numbers
        mx.random.seed(seed)
    return generate(model, tokenizer, tokens, max_tokens=max_tokens, **kwargs)


@pytest.fixture(scope="module")
def stories_run(stories_path, tmp_path_factory) -> Path:
    return make_chat_run(
        stories_path, tmp_path_factory.mktemp("runs") / "20260101-000000-stories-ab12", dropout=0.1
    )


@pytest.fixture(scope="module")
def stories_chat(stories_path, stories_run):
    model = ChatModel.load(stories_path, adapter=stories_run)
    yield model
    model.close()


def texts(events) -> str:
    return "".join(e.text for e in events if e.kind == "text")


# ---------------------------------------------------------------------------------------------
# Base vs tuned, in one loaded model


def test_adapter_off_is_exactly_the_base_model_loaded_alone(stories_path, stories_chat):
    import mlx.core as mx
    from mlx_lm import load

    tokens = stories_chat.prompt_tokens(STORY)
    base = stories_chat.reply(STORY, GREEDY, use_adapter=False)
    assert base.text == mlx_lm_text(stories_path, tokens)
    assert base.adapter is False and base.label == "stories260K (base)"
    # Not only the same greedy text: the same logits, bit for bit.
    alone, _ = load(str(stories_path))
    stories_chat._adapter.set_enabled(False)
    x = mx.array(tokens)[None]
    assert mx.array_equal(stories_chat.model(x), alone(x)).item()


@pytest.mark.parametrize("fine_tune_type", ["lora", "dora", "full"])
def test_adapter_on_matches_mlx_lm_generate_with_adapter_path(
    stories_path, tmp_path, fine_tune_type
):
    adapter = make_chat_adapter(
        stories_path, tmp_path / "adapter", fine_tune_type=fine_tune_type, dropout=0.1
    )
    chat = ChatModel.load(stories_path, adapter=adapter)
    tokens = chat.prompt_tokens(STORY)
    tuned = chat.reply(STORY, GREEDY, use_adapter=True)
    base = chat.reply(STORY, GREEDY, use_adapter=False)
    again = chat.reply(STORY, GREEDY, use_adapter=True)
    assert tuned.text == mlx_lm_text(stories_path, tokens, adapter_path=adapter)
    assert base.text == mlx_lm_text(stories_path, tokens)
    assert again.text == tuned.text  # switching back on is exact too
    assert tuned.text != base.text  # the adapter really changes the model, or this proves nothing
    assert tuned.adapter and f"adapter {adapter}" in tuned.label


def test_tiny_chat_model_base_and_tuned_are_exact(tiny_chat_model, tmp_path):
    adapter = make_chat_adapter(tiny_chat_model, tmp_path / "adapter", scale=20.0)
    chat = ChatModel.load(tiny_chat_model, adapter=adapter)
    assert chat.template() == (CHATML_TEMPLATE, "model")
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is the fee for a transfer?"},
    ]
    tokens = chat.prompt_tokens(messages)
    assert chat.tokenizer.decode(tokens).endswith("<|im_start|>assistant\n")
    settings = ChatSettings(temperature=0.0, max_tokens=24, stop=[])
    assert chat.reply(messages, settings, use_adapter=False).text == mlx_lm_text(
        tiny_chat_model, tokens, max_tokens=24
    )
    assert chat.reply(messages, settings).text == mlx_lm_text(
        tiny_chat_model, tokens, adapter, max_tokens=24
    )


@pytest.mark.slow
def test_set_adapter_replaces_the_previous_one_and_none_restores_the_base(
    stories_path, stories_run
):
    chat = ChatModel.load(stories_path, adapter=f"{stories_run}:10")
    step10 = chat.reply(STORY, GREEDY)
    chat.set_adapter(f"{stories_run}:20")
    tokens = chat.prompt_tokens(STORY)
    step20 = chat.reply(STORY, GREEDY)
    assert step20.text == mlx_lm_text(stories_path, tokens, stories_run / "checkpoints" / "0000020")
    assert step20.text != step10.text
    assert "step 20" in step20.label
    chat.set_adapter(None)
    assert chat.adapter is None
    plain = chat.reply(STORY, GREEDY)
    assert plain.text == mlx_lm_text(stories_path, tokens) and plain.adapter is False


def test_close_frees_the_model(stories_path, stories_run):
    chat = ChatModel.load(stories_path, adapter=stories_run)
    ref = weakref.ref(chat.model)
    chat.close()
    assert ref() is None
    with pytest.raises(ChatError):
        chat.reply(STORY, GREEDY)


# ---------------------------------------------------------------------------------------------
# Which adapter, which template


def test_run_and_step_resolution(stories_path, stories_run, tmp_path):
    runs = workspace.runs_dir()
    shutil.copytree(stories_run, runs / stories_run.name)
    final = resolve_adapter(stories_run.name)
    assert final.path == (runs / stories_run.name / "adapters").resolve()
    assert final.step is None and final.label == f"run {stories_run.name} · final adapter"
    assert final.base_model == str(stories_path)
    step = resolve_adapter(f"{stories_run.name}:10")
    assert step.path.name == "0000010" and step.step == 10 and step.run_id == stories_run.name
    # A checkpoint folder given directly still knows its run and step.
    direct = resolve_adapter(runs / stories_run.name / "checkpoints" / "0000020")
    assert direct.run_id == stories_run.name and direct.step == 20
    with pytest.raises(ChatError, match="no checkpoint at step 30") as err:
        resolve_adapter(f"{stories_run.name}:30")
    assert "10, 20" in err.value.hint
    with pytest.raises(ChatError, match="is neither a run nor an adapter folder"):
        resolve_adapter("no-such-run")
    # A run still training has no final adapter yet: its newest checkpoint is used.
    shutil.rmtree(runs / stories_run.name / "adapters")
    assert resolve_adapter(stories_run.name).step == 20


def test_template_is_the_runs_else_the_models_else_lathes_default(stories_path, tmp_path):
    run = make_chat_run(stories_path, tmp_path / "run", steps=(), template=RUN_TEMPLATE)
    chat = ChatModel.load(None, adapter=run)  # the model comes from the run's config
    assert chat.template() == (RUN_TEMPLATE, "run")
    assert chat.tokenizer.decode(chat.prompt_tokens(STORY)).rstrip().endswith("<<assistant>>")
    chat.set_adapter(None)
    assert chat.template() == (DEFAULT_CHAT_TEMPLATE, "default")
    assert chat.tokenizer.decode(chat.prompt_tokens(STORY)).rstrip().endswith("### Answer:")


def test_system_prompt_folds_into_the_first_turn_for_templates_without_one(stories_path, tmp_path):
    strict = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}" + RUN_TEMPLATE
    )
    chat = ChatModel.load(
        stories_path,
        adapter=make_chat_run(stories_path, tmp_path / "run", steps=(), template=strict),
    )
    messages = [{"role": "system", "content": "Be kind."}] + STORY
    text = chat.tokenizer.decode(chat.prompt_tokens(messages))
    assert text.startswith("<<user>> Be kind.\n\nTell me a story")


# ---------------------------------------------------------------------------------------------
# Streaming, cancel, stops, trimming, sampling


def test_stream_arrives_in_order_and_equals_the_whole_reply(stories_path, stories_chat):
    events = list(stories_chat.stream(STORY, GREEDY, use_adapter=False))
    assert [e.kind for e in events][-1] == "done" and sum(e.kind == "done" for e in events) == 1
    pieces = [e.text for e in events if e.kind == "text"]
    assert len(pieces) > 5
    reply = events[-1].reply
    assert (
        "".join(pieces)
        == reply.text
        == mlx_lm_text(stories_path, stories_chat.prompt_tokens(STORY))
    )
    s = reply.stats
    assert s.stop_reason == "length" and s.tokens == 40
    assert 0 < s.time_to_first_token <= s.seconds and s.tokens_per_second > 0
    assert s.prompt_tokens == len(stories_chat.prompt_tokens(STORY))


def test_cancel_from_another_thread_stops_within_one_token(stories_chat):
    settings = ChatSettings(temperature=0.0, max_tokens=400, stop=[])
    session = ChatSession(stories_chat, use_adapter=False, settings=settings)
    seen: list[tuple[float, object]] = []
    three = threading.Event()

    def worker():
        for event in session.send("Tell me a long story."):
            seen.append((time.perf_counter(), event))
            if sum(e.kind == "text" for _, e in seen) == 3:
                three.set()
                time.sleep(0.05)  # let the GUI thread cancel while tokens are still coming

    thread = threading.Thread(target=worker)
    thread.start()
    assert three.wait(30)
    session.cancel()
    cancelled_at = time.perf_counter()
    thread.join(30)
    after = [e for t, e in seen if t > cancelled_at and e.kind == "text"]
    assert len(after) <= 1
    reply = seen[-1][1].reply
    assert reply.stats.stop_reason == "cancelled" and reply.stats.tokens < 10
    # The partial reply stays in the history, as the chat shows it.
    assert session.history[-1] == {"role": "assistant", "content": reply.text}


def test_cancel_before_the_first_token(stories_chat):
    stop = threading.Event()
    stop.set()
    events = list(stories_chat.stream(STORY, GREEDY, cancel=stop))
    assert [e.kind for e in events] == ["done"]
    assert events[0].reply.stats.stop_reason == "cancelled" and events[0].reply.text == ""


def test_stop_string_ends_the_reply_before_it(stories_chat):
    full = stories_chat.reply(STORY, GREEDY, use_adapter=False).text
    stop = "Lily"
    assert stop in full[1:]
    settings = ChatSettings(temperature=0.0, max_tokens=40, stop=[stop])
    events = list(stories_chat.stream(STORY, settings, use_adapter=False))
    reply = events[-1].reply
    assert reply.text == full[: full.index(stop)]
    assert texts(events) == reply.text and reply.stats.stop_reason == "stop_string"


def test_stop_matcher_never_shows_a_stop_string_split_across_pieces():
    m = StopMatcher(["</answer>", "###"])
    shown = [m.feed(p) for p in ["Hello </ans", "wer", ">x"]]
    assert "".join(t for t, _ in shown) == "Hello " and shown[1:] == [("", False), ("", True)]
    m = StopMatcher(["</answer>"])
    assert m.feed("a </a") == ("a ", False)
    assert m.feed("b") == ("</ab", False)  # not a stop after all: shown
    assert m.flush() == ""


def test_eos_ends_the_reply(stories_path, stories_chat):
    from mlx_lm import generate, load

    tokens = stories_chat.prompt_tokens(STORY)
    model, tokenizer = load(str(stories_path))
    eos = tokenizer.encode("Lily", add_special_tokens=False)[0]
    tokenizer.eos_token_ids = {eos}
    expected = generate(model, tokenizer, tokens, max_tokens=40)
    chat = ChatModel.load(stories_path)
    chat.tokenizer.eos_token_ids = {eos}
    reply = chat.reply(STORY, GREEDY)
    assert reply.text == expected and reply.stats.stop_reason == "eos"
    assert "Lily" not in reply.text and reply.stats.tokens < 40


def test_history_is_trimmed_to_the_context_with_a_notice(stories_chat):
    settings = ChatSettings(temperature=0.0, max_tokens=100, stop=[])
    session = ChatSession(
        stories_chat, use_adapter=False, settings=settings, system_prompt="You tell short stories."
    )
    long = "The cat and the dog played in the big green park all day long. " * 6
    for i in range(6):
        session.history += [
            {"role": "user", "content": f"Story {i}: {long}"},
            {"role": "assistant", "content": long},
        ]
    events = list(session.send("And now a story about a bird."))
    notices = [e.text for e in events if e.kind == "notice"]
    reply = events[-1].reply
    assert len(notices) == 1 and "oldest messages" in notices[0] and "512-token" in notices[0]
    assert reply.stats.trimmed_messages > 0 and reply.stats.trimmed_messages % 2 == 0
    assert reply.stats.prompt_tokens <= stories_chat.context_length - settings.max_tokens
    # What the model saw: the system prompt, then whole turns, ending with the new question.
    kept = session.messages()[:1] + session.messages()[1 + reply.stats.trimmed_messages : -1]
    assert reply.stats.prompt_tokens == len(stories_chat.prompt_tokens(kept))
    assert reply.notices == notices


def test_a_message_longer_than_the_context_is_refused(stories_chat):
    huge = [{"role": "user", "content": "word " * 600}]
    with pytest.raises(ChatError, match="too long"):
        stories_chat.reply(huge, GREEDY)
    with pytest.raises(ChatError, match="Max tokens"):
        stories_chat.reply(STORY, ChatSettings(max_tokens=600))
    session = ChatSession(stories_chat, settings=GREEDY)
    session.reply("Hello.")
    with pytest.raises(ChatError, match="too long"):
        session.reply("word " * 600)
    assert len(session.history) == 2  # the refused message is not kept


def test_sampling_controls_are_mlx_lms(stories_path, stories_chat):
    from mlx_lm.sample_utils import make_logits_processors, make_sampler

    tokens = stories_chat.prompt_tokens(STORY)
    settings = ChatSettings(
        temperature=0.9,
        top_p=0.9,
        min_p=0.05,
        repetition_penalty=1.3,
        max_tokens=40,
        seed=7,
        stop=[],
    )
    ours = stories_chat.reply(STORY, settings, use_adapter=False).text
    theirs = mlx_lm_text(
        stories_path,
        tokens,
        seed=7,
        sampler=make_sampler(0.9, 0.9, 0.05),
        logits_processors=make_logits_processors(
            repetition_penalty=1.3, repetition_context_size=20
        ),
    )
    assert ours == theirs
    assert stories_chat.reply(STORY, settings, use_adapter=False).text == ours  # the seed repeats
    other = ChatSettings(**{**settings.__dict__, "seed": 8})
    assert stories_chat.reply(STORY, other, use_adapter=False).text != ours
    with pytest.raises(ChatError, match="Top-p"):
        stories_chat.reply(STORY, ChatSettings(top_p=0))


# ---------------------------------------------------------------------------------------------
# Sessions and compare mode


def test_session_keeps_history_regenerates_and_edits(stories_chat):
    session = ChatSession(stories_chat, settings=GREEDY)
    first = session.reply("Tell me a story about a cat.")
    session.reply("And a dog?")
    assert [m["role"] for m in session.history] == ["user", "assistant"] * 2
    assert len(session.replies) == 2
    list(session.regenerate())
    assert len(session.history) == 4 and len(session.replies) == 2
    list(session.edit_and_resend(0, "Tell me a story about a cat."))
    assert len(session.history) == 2 and session.history[1]["content"] == first.text
    session.reset()
    assert session.history == [] and session.replies == []


def test_compare_mode_runs_base_then_tuned_with_the_right_labels(
    stories_path, stories_run, stories_chat
):
    compare = CompareSession(stories_chat, settings=GREEDY)
    pairs = list(compare.send(STORY[0]["content"]))
    sides = [side for side, _ in pairs]
    assert sides == sorted(sides) and set(sides) == {"base", "tuned"}  # base first, then tuned
    done = {side: e.reply for side, e in pairs if e.kind == "done"}
    tokens = stories_chat.prompt_tokens(STORY)
    assert done["base"].label == "stories260K (base)" and not done["base"].adapter
    assert done["tuned"].label == f"stories260K + run {stories_run.name} · final adapter"
    assert done["base"].text == mlx_lm_text(stories_path, tokens)
    assert done["tuned"].text == mlx_lm_text(stories_path, tokens, stories_run / "adapters")
    assert compare.base.label == done["base"].label and compare.tuned.label == done["tuned"].label


def test_compare_cancel_skips_the_other_side(stories_chat):
    compare = CompareSession(stories_chat, settings=GREEDY)
    seen = []
    for side, event in compare.send("Tell me a story."):
        seen.append((side, event))
        if event.kind == "text":
            compare.cancel()
    assert {side for side, _ in seen} == {"base"}
    assert seen[-1][1].reply.stats.stop_reason == "cancelled"


# ---------------------------------------------------------------------------------------------
# Add to dataset


def test_add_to_dataset_appends_a_valid_example_to_lathes_copy(tiny_chat_model, tmp_path):
    from mlx_lm import load

    from engine.encode import Encoder

    original = tmp_path / "mine.jsonl"
    original.write_text('{"text": "untouched"}\n')
    folder = workspace.datasets_dir() / "bank-support"
    folder.mkdir()
    (folder / "train.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}'
    )  # no final newline
    session_messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the fee?"},
        {"role": "assistant", "content": "I think it might be ten euros maybe."},
    ]
    path = add_to_dataset("bank-support", session_messages, reply="The fee is 5 euros.")
    assert path == (folder / "train.jsonl").resolve()
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["messages"][1]["content"] == "b"
    record = json.loads(lines[1])
    assert record == {
        "messages": session_messages[:2] + [{"role": "assistant", "content": "The fee is 5 euros."}]
    }
    _, tokenizer = load(str(tiny_chat_model))
    encoded = Encoder(tokenizer).encode(record)
    assert encoded.trained_tokens > 0  # trainable: the reply is what the model would learn
    assert sorted(p.name for p in folder.iterdir()) == ["train.jsonl"]  # no temp files left behind

    with pytest.raises(ChatError, match="never changes files you imported"):
        add_to_dataset(original, session_messages)
    assert original.read_text() == '{"text": "untouched"}\n'
    with pytest.raises(ChatError, match="no dataset called"):
        add_to_dataset("new-one", session_messages)
    assert add_to_dataset("new-one", session_messages, create=True).read_text().count("\n") == 1
    with pytest.raises(ChatError, match="must end with a reply"):
        add_to_dataset("bank-support", session_messages[:2])
    with pytest.raises(ChatError, match="must end with a reply"):
        add_to_dataset("bank-support", session_messages, reply="   ")


def test_session_example_uses_the_edited_reply(stories_chat):
    session = ChatSession(stories_chat, system_prompt="Tell stories.", settings=GREEDY)
    session.reply("A story, please.")
    example = session.example("Once upon a time, a cat slept.")
    assert [m["role"] for m in example["messages"]] == ["system", "user", "assistant"]
    assert example["messages"][-1]["content"] == "Once upon a time, a cat slept."
    path = add_to_dataset("stories", example["messages"], create=True)
    assert json.loads(path.read_text()) == example
