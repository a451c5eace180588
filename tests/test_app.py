"""The Gradio app (app.py): its handlers directly, the launched app through gradio_client, and a real browser.

Handler tests pass fakes or a tiny random model (the model is handed in, never loaded at import). The launched
app runs in-process on a tiny random Llama; ``python app.py`` and the browser test use the real SmolLM2.
Screenshots of the browser test go to ``test-artifacts/`` (gitignored).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest

import app
from alpacare.generation import StreamUpdate
from alpacare.modeling import LoadedModel
from alpacare.prompts import DISCLAIMER
from alpacare.review import build_report, load_ratings

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
GOOD = {"safety": 5, "helpfulness": 4, "clarity": 4, "factuality": 5, "disclaimer_ok": True}
PROFILE = {"consent": True, "name": "Test Reviewer", "affiliation": "Test Clinic", "credential": "RN", "expertise": 3}
BINARY_JUNK = bytes(range(256)).decode("latin-1") * 3
FAKE_MODEL = LoadedModel(model=object(), tokenizer=object(), base="fake-base", adapter="runs/demo")


def make_pool(n: int) -> list[dict]:
    """Synthetic review items (own text: the CC BY-NC data never enters the repo)."""
    return [
        {
            "id": f"item-{i}",
            "prompt": f"What is condition {i}?",
            "reply": f"General facts {i}. {DISCLAIMER}",
            "model": "m",
        }
        for i in range(n)
    ]


def request(username: str | None = None, session: str = "session-1") -> SimpleNamespace:
    """What Gradio passes as ``gr.Request``: the login name (None when anonymous) and the session."""
    return SimpleNamespace(username=username, session_hash=session)


def make_settings(tmp_path: Path, **overrides) -> app.Settings:
    values = dict(data_dir=tmp_path / "reviews", replica_id="test", max_new_tokens=24, port=None, min_ratings=2)
    values.update(overrides)
    return app.Settings(**values)


def make_handlers(
    tmp_path: Path, stream_fn=None, generate_fn=None, models=None, pool=None, **settings
) -> app.Handlers:
    demo = app.build_demo(
        models or FAKE_MODEL,
        make_settings(tmp_path, **settings),
        pool=make_pool(5) if pool is None else pool,
        stream_fn=stream_fn,
        generate_fn=generate_fn,
    )
    return demo.handlers


def fake_stream(*texts: str, blocked: bool = False, categories=()):
    """A stand-in for ``stream_safe_generate`` yielding cumulative texts, the last one final."""

    def stream(model, tokenizer, prompt, input_text=None, *, max_new_tokens=256, stop_event=None, **kwargs):
        for i, text in enumerate(texts):
            last = i == len(texts) - 1
            yield StreamUpdate(text, done=last, blocked=blocked and last, categories=list(categories) if last else [])

    return stream


def last_reply(history: list[dict]) -> str:
    return app._message_text(history[-1])


# --------------------------------------------------------------------------------------------- input checks


class TestInputCheck:
    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("", "type a question"),
            ("   \n\t", "type a question"),
            (None, "type a question"),
            ("x" * 100_000, "too long (100,000 characters)"),
            (BINARY_JUNK[:1000], "binary or unreadable"),
            ("What is\x00 this", "binary or unreadable"),
            ("\ufffd" * 50, "binary or unreadable"),
        ],
    )
    def test_refused_with_a_clear_message(self, text, message):
        assert message in app.check_message(text, 4000)

    @pytest.mark.parametrize("text", ["What is anemia?", "Line one\nline two\ttab", "Qu'est-ce que l'anémie ? 🩸"])
    def test_accepted(self, text):
        assert app.check_message(text, 4000) is None


# ----------------------------------------------------------------------------------------------------- chat


class TestChatHandler:
    @pytest.mark.parametrize("message", ["", "x" * 100_000, BINARY_JUNK, None])
    def test_bad_input_gets_a_message_and_never_reaches_the_model(self, tmp_path: Path, message):
        def loader():
            raise AssertionError("the model must not be touched")

        h = make_handlers(tmp_path, models=app.ModelProvider(loader, label="lazy"))
        outputs = list(h.chat(message, [], request()))
        history, textbox, status = outputs[-1]
        assert last_reply(history).startswith("**Not sent:**") and status in last_reply(history)
        assert "Traceback" not in json.dumps(outputs) and len(json.dumps(history)) < 2000
        assert textbox == ""

    def test_streams_cumulative_updates_ending_with_the_disclaimer(self, tmp_path: Path):
        final = f"Anemia means few red cells. It causes tiredness.\n\n{DISCLAIMER}"
        h = make_handlers(tmp_path, stream_fn=fake_stream("Anemia means few red cells.", final))
        outputs = list(h.chat("What is anemia?", [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]))
        replies = [last_reply(history) for history, _, _ in outputs]
        assert replies == ["…", "Anemia means few red cells.", final]
        history, textbox, status = outputs[-1]
        assert [m["role"] for m in history] == ["user", "user", "assistant"] and status == "" and textbox == ""

    def test_blocked_reply_is_explained(self, tmp_path: Path):
        h = make_handlers(
            tmp_path, stream_fn=fake_stream(f"Safe fallback. {DISCLAIMER}", blocked=True, categories=["dosage"])
        )
        *_, (history, _, status) = h.chat("How much ibuprofen?", [])
        assert "Safety filter" in status and "dosage" in status and last_reply(history).endswith(DISCLAIMER)

    def test_model_failure_gives_an_apology_not_a_traceback(self, tmp_path: Path):
        def broken(*args, **kwargs):
            yield StreamUpdate("Partial.", done=False, blocked=False)
            raise RuntimeError("Traceback: tensor exploded")

        h = make_handlers(tmp_path, stream_fn=broken)
        *_, (history, _, status) = h.chat("What is anemia?", [])
        assert "something went wrong" in last_reply(history) and "exploded" not in json.dumps(history) + status

    def test_stop_button_stops_generation_and_closes_the_reply(self, tmp_path: Path):
        steps = {"n": 0}
        stopped = threading.Event()

        def endless(model, tokenizer, prompt, *, stop_event=None, **kwargs):
            text = ""
            while not stop_event.is_set():  # a CPU-bound generation that only a stop event ends
                steps["n"] += 1
                text += "Word. "
                time.sleep(0.005)
                if steps["n"] % 5 == 0:
                    yield StreamUpdate(text.strip(), done=False, blocked=False)
            stopped.set()
            yield StreamUpdate(f"{text.strip()}\n\n{DISCLAIMER}", done=True, blocked=False)

        h = make_handlers(tmp_path, stream_fn=endless)
        shown: list = []
        worker = threading.Thread(target=lambda: shown.extend(h.chat("Tell me everything", [], request())))
        worker.start()
        while steps["n"] < 20:
            time.sleep(0.01)
        history, status = h.stop([{"role": "user", "content": "Tell me everything"}, shown[-1][0][-1]], request())
        assert stopped.wait(2) and status == "Stopped."
        worker.join(2)
        frozen = steps["n"]
        time.sleep(0.1)
        assert steps["n"] == frozen and not worker.is_alive()  # no more work after the stop
        assert last_reply(history).endswith(DISCLAIMER) and "*(stopped)*" in last_reply(history)
        assert shown[-1][2] == "Stopped: the reply was cut short." and last_reply(shown[-1][0]).endswith(DISCLAIMER)

    def test_stop_only_stops_its_own_session(self, tmp_path: Path):
        h = make_handlers(tmp_path)
        other = threading.Event()
        h._stop_events["other-session"] = other
        h.stop([], request(session="mine"))
        assert not other.is_set()

    def test_a_closed_stream_stops_generation(self, tmp_path: Path):
        """Gradio closes the generator when the client goes away: the model must stop too."""
        seen = {}

        def stream(model, tokenizer, prompt, *, stop_event=None, **kwargs):
            seen["event"] = stop_event
            try:
                while True:
                    yield StreamUpdate("Still going.", done=False, blocked=False)
            finally:
                seen["closed"] = True

        chat = make_handlers(tmp_path, stream_fn=stream).chat("Hello?", [], request())
        next(chat), next(chat), next(chat)
        chat.close()
        assert seen["event"].is_set() and seen["closed"]

    def test_tiny_model_reply_ends_with_the_disclaimer(self, tmp_path: Path, tiny_model, tokenizer):
        models = LoadedModel(tiny_model, tokenizer, base="tiny")
        *_, (history, _, status) = make_handlers(tmp_path, models=models).chat("What is anemia?", [], request())
        assert last_reply(history).endswith(DISCLAIMER) and "wrong" not in status

    def test_stop_really_stops_the_cpu(self, tmp_path: Path, tiny_model, tokenizer):
        """Real ``stream_safe_generate`` on a tiny model: after Stop, no more forward passes run."""
        calls = {"n": 0}
        tiny_model.register_forward_hook(lambda *args: calls.__setitem__("n", calls["n"] + 1))
        models = LoadedModel(tiny_model, tokenizer, base="tiny")
        h = make_handlers(tmp_path, models=models, max_new_tokens=700)
        outputs: list = []
        worker = threading.Thread(target=lambda: outputs.extend(h.chat("Tell me about sleep.", [], request())))
        started = time.perf_counter()
        worker.start()
        while calls["n"] < 10 and time.perf_counter() - started < 30:
            time.sleep(0.001)
        h.stop([], request())
        worker.join(10)
        at_stop = calls["n"]
        time.sleep(0.3)
        assert not worker.is_alive() and calls["n"] == at_stop  # the generation thread is gone
        assert at_stop < 200  # far fewer than the 700 steps asked for
        assert last_reply(outputs[-1][0]).endswith(DISCLAIMER)


class TestGenerateAPI:
    def test_returns_the_contract_dict(self, tmp_path: Path):
        def generate(model, tokenizer, prompt, **kwargs):
            assert kwargs["max_new_tokens"] == 24
            return SimpleNamespace(reply=f"Facts. {DISCLAIMER}", blocked=False, categories=())

        out = make_handlers(tmp_path, generate_fn=generate).generate("What is anemia?")
        assert out == {"reply": f"Facts. {DISCLAIMER}", "blocked": False, "categories": []}

    @pytest.mark.parametrize(("prompt", "message"), [("", "type a question"), ("y" * 100_000, "too long")])
    def test_bad_input_raises_a_clear_gradio_error(self, tmp_path: Path, prompt, message):
        with pytest.raises(gr.Error, match=message):
            make_handlers(tmp_path, generate_fn=lambda *a, **k: pytest.fail("model called")).generate(prompt)

    def test_internal_error_is_not_leaked(self, tmp_path: Path):
        def broken(*args, **kwargs):
            raise RuntimeError("secret internals")

        with pytest.raises(gr.Error) as info:
            make_handlers(tmp_path, generate_fn=broken).generate("What is anemia?")
        assert "secret" not in str(info.value)


# --------------------------------------------------------------------------------------------------- review


class TestReviewHandlers:
    def view(self, outputs: tuple) -> dict:
        names = ["who", "consent", "rating", "progress", "item", "item_id"]
        view = dict(zip(names, outputs[:6], strict=True))
        view["consent"], view["rating"] = view["consent"]["visible"], view["rating"]["visible"]
        view["message"] = outputs[-1]
        return view

    def test_anonymous_visitor_cannot_review(self, tmp_path: Path):
        h = make_handlers(tmp_path)
        view = self.view(h.review_load(request(None)))
        assert "needs a reviewer login" in view["who"] and not view["consent"] and not view["rating"]
        out = self.view(h.review_submit("item-0", 5, 5, 5, 5, "yes", [], "", request(None)))
        assert "Sign in" in out["message"]
        with pytest.raises(gr.Error, match="Sign in"):
            h.api_submit("item-0", 5, 5, 5, 5, True, request=request(None))
        assert h.desk.store.ratings() == []

    def test_first_visit_consent_then_items_then_results(self, tmp_path: Path):
        h = make_handlers(tmp_path)
        alice = request("alice")
        assert self.view(h.review_load(alice))["consent"]
        refused = self.view(h.review_register(False, "Alice", "Clinic", "MD", None, "", 4, "", alice))
        assert "Consent is required" in refused["message"] and refused["consent"]
        student = self.view(h.review_register(True, "Alice", "Clinic", "Medical student", 2, "", 4, "", alice))
        assert student["rating"] and "Medical student, year 2" in student["who"]
        assert student["item_id"] in {f"item-{i}" for i in range(5)} and "0 of 5" in student["progress"]
        missing = self.view(h.review_submit(student["item_id"], 5, None, 4, 4, "yes", [], "", alice))
        assert "helpfulness" in missing["message"] and missing["item_id"] == student["item_id"]
        saved = self.view(h.review_submit(student["item_id"], 2, 3, 4, 4, "no", ["dosage"], "dose given", alice))
        assert "Rating saved" in saved["message"] and saved["item_id"] != student["item_id"]
        assert "1 of 5" in saved["progress"]
        text, figure, csv_path, report = h.results()
        assert report["n_ratings"] == 1 and report["violation_rate"] == 1.0 and "NO-GO" in text
        assert Path(csv_path).read_text().count("\n") == 2 and len(figure.axes) == 4
        row = h.desk.store.ratings()[0]
        assert (row["reviewer"], row["categories"], row["comment"]) == ("alice", ["dosage"], "dose given")

    def test_every_item_rated(self, tmp_path: Path):
        h = make_handlers(tmp_path, pool=make_pool(1))
        h.api_register(**PROFILE, request=request("bob"))
        h.api_submit(h.api_next_item(request("bob"))["id"], **GOOD, request=request("bob"))
        assert h.api_next_item(request("bob")) == {}
        assert "rated every item" in self.view(h.review_load(request("bob")))["item"]

    def test_no_pool_configured(self, tmp_path: Path):
        h = make_handlers(tmp_path, pool=[])
        h.api_register(**PROFILE, request=request("bob"))
        assert "No review pool" in self.view(h.review_load(request("bob")))["item"]

    def test_oauth_identity(self):
        profile = gr.OAuthProfile(
            {"preferred_username": "drbob", "name": "Bob", "sub": "1", "profile": "", "picture": ""}
        )
        assert app.reviewer_of(request(None), profile) == "hf:drbob"
        assert app.reviewer_of(request(None), profile, allowlist=("someone-else",)) is None
        assert app.reviewer_of(request("alice"), profile) == "alice"  # a Gradio login wins
        assert app.reviewer_of(None, None) is None


# ------------------------------------------------------------------------------------------------- settings


class TestSettings:
    def test_env_then_flags(self, monkeypatch, tmp_path: Path):
        monkeypatch.setenv("ALPACARE_ADAPTER", "org/alpacare-lora")
        monkeypatch.setenv("ALPACARE_ADAPTER_REVISION", "v1")
        monkeypatch.setenv("ALPACARE_MIN_RATINGS", "5")
        monkeypatch.setenv("ALPACARE_TEMPERATURE", "0.7")
        monkeypatch.setenv("HF_TOKEN", "hf_SettingsSecret123")
        settings = app.parse_args(["--revision", "v2", "--data-dir", str(tmp_path), "--port", "7999"])
        assert (settings.adapter, settings.revision, settings.min_ratings) == ("org/alpacare-lora", "v2", 5)
        assert settings.data_dir == tmp_path and settings.port == 7999
        assert settings.generation_kwargs() == {
            "max_new_tokens": 256,
            "do_sample": True,
            "temperature": 0.7,
            "top_p": 0.9,
        }
        assert settings.model_label() == "HuggingFaceTB/SmolLM2-135M-Instruct (embedded) + org/alpacare-lora@v2"
        assert "hf_SettingsSecret123" not in repr(settings)

    def test_greedy_by_default(self):
        assert app.Settings().generation_kwargs() == {"max_new_tokens": 256}

    def test_model_line_names_base_and_adapter(self, tmp_path: Path):
        demo = app.build_demo(FAKE_MODEL, make_settings(tmp_path))
        line = next(b.value for b in demo.blocks.values() if getattr(b, "elem_id", None) == "model-line")
        assert "fake-base + runs/demo" in line and "not medical advice" in line

    def test_import_loads_no_model_and_writes_nothing(self, tmp_path: Path):
        code = (
            "import sys, app\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'model libraries imported'\n"
            "assert app.demo.handlers.models._loaded is None\n"
        )
        env = {**os.environ, "ALPACARE_DATA_DIR": str(tmp_path / "reviews"), "PYTHONPATH": str(ROOT)}
        subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, timeout=120)
        assert not (tmp_path / "reviews").exists()


class TestSecrets:
    def test_log_records_never_carry_the_token(self, caplog):
        import logging

        factory = logging.getLogRecordFactory()
        try:
            app.redact_secrets_in_logs("hf_TopSecretValue42", None)
            with caplog.at_level(logging.INFO):
                logging.getLogger("huggingface_hub.test").warning("push failed for %s", "Bearer hf_TopSecretValue42")
                logging.getLogger("any.library").error("401 with token=hf_TopSecretValue42 in the URL")
        finally:
            logging.setLogRecordFactory(factory)
        assert "hf_TopSecretValue42" not in caplog.text and caplog.text.count("[REDACTED]") == 2


class TestOAuth:
    def test_space_login_button_and_profile_identity(self, tmp_path: Path, monkeypatch):
        """As inside a Space with ``hf_oauth: true`` (the platform sets these; nothing is contacted here)."""
        import gradio.oauth

        monkeypatch.setattr(gradio.oauth, "get_space", lambda: "org/alpacare-review")
        for name, value in {
            "OAUTH_CLIENT_ID": "client-id",
            "OAUTH_CLIENT_SECRET": "client-secret",
            "OAUTH_SCOPES": "openid profile",
            "OPENID_PROVIDER_URL": "https://huggingface.co",
        }.items():
            monkeypatch.setattr(gradio.oauth, name, value)
        demo = app.build_demo(FAKE_MODEL, make_settings(tmp_path, oauth=True), pool=make_pool(2))
        assert any(isinstance(b, gr.LoginButton) for b in demo.blocks.values())
        info = {"preferred_username": "drbob", "name": "Bob", "sub": "1", "profile": "", "picture": ""}
        h = demo.handlers
        out = h.review_load(request(None), gr.OAuthProfile(info))
        assert "Signed in as **hf:drbob**" in out[0] and out[1]["visible"]
        assert "Sign in with Hugging Face" in h.review_load(request(None), None)[0]


# ------------------------------------------------------------------------------------------- launched app


@pytest.fixture(scope="module")
def tiny_loaded(tokenizer) -> LoadedModel:
    """A tiny random Llama for the launched app (module scope: conftest's ``tiny_model`` is per test)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LoadedModel(LlamaForCausalLM(config).eval(), tokenizer, base="tiny-random-llama")


REVIEWERS = {f"reviewer-{n:02d}": f"pw-{n}" for n in range(50)}


@pytest.fixture(scope="module")
def launched(tiny_loaded, tmp_path_factory):
    """The app served by Gradio (queue, auth, API) on a tiny model, with 50 reviewer logins and a 40-item pool."""
    data = tmp_path_factory.mktemp("launched") / "reviews"
    settings = app.Settings(data_dir=data, replica_id="launched", max_new_tokens=16, port=None, min_ratings=3)
    settings.reviewers_inline = ",".join(f"{u}:{p}" for u, p in REVIEWERS.items())
    demo = app.build_demo(tiny_loaded, settings, pool=make_pool(40))
    _, url, _ = app.launch(demo, settings, prevent_thread_lock=True, quiet=True)
    yield SimpleNamespace(url=url, demo=demo, data=data)
    demo.close()


def client_for(url: str, user: str = "reviewer-00"):
    from gradio_client import Client

    return Client(url, auth=(user, REVIEWERS[user]), verbose=False)


class TestLaunchedApp:
    def test_anonymous_client_is_turned_away(self, launched):
        from gradio_client import Client

        with pytest.raises(Exception):  # noqa: B017 - gradio_client raises different types across versions
            Client(launched.url, verbose=False)

    def test_generate_endpoint(self, launched):
        out = client_for(launched.url).predict("What is anemia?", api_name="/generate")
        assert set(out) == {"reply", "blocked", "categories"} and out["reply"].endswith(DISCLAIMER)
        assert isinstance(out["blocked"], bool) and isinstance(out["categories"], list)

    @pytest.mark.parametrize(
        ("prompt", "message"),
        [("", "type a question"), ("x" * 100_000, "too long"), (BINARY_JUNK, "binary or unreadable")],
    )
    def test_generate_bad_input(self, launched, prompt, message):
        from gradio_client.exceptions import AppError

        with pytest.raises(AppError, match=message) as info:
            client_for(launched.url).predict(prompt, api_name="/generate")
        assert "Traceback" not in str(info.value)

    def test_chat_streams(self, launched):
        job = client_for(launched.url).submit("What is anemia?", [], api_name="/chat")
        history, textbox, status = job.result(timeout=120)
        outputs = job.outputs()
        assert len(outputs) >= 2 and app._message_text(outputs[0][0][-1]) == "…"  # streamed, placeholder first
        assert app._message_text(history[-1]).endswith(DISCLAIMER) and textbox == ""

    def test_review_submission_and_report(self, launched):
        client = client_for(launched.url, "reviewer-49")
        profile = client.predict(**PROFILE, api_name="/register_reviewer")
        assert profile["reviewer"] == "reviewer-49" and profile["consent"] is True
        item = client.predict(api_name="/next_item")
        row = client.predict(item["id"], **{**GOOD, "safety": 1}, categories=["diagnosis"], api_name="/submit_rating")
        assert row["reviewer"] == "reviewer-49" and row["item_id"] == item["id"] and row["safety"] == 1
        from gradio_client.exceptions import AppError

        with pytest.raises(AppError, match="already rated"):
            client.predict(item["id"], **GOOD, api_name="/submit_rating")
        report = client.predict(api_name="/report")
        expected = build_report(load_ratings(launched.data))
        assert report["n_ratings"] == expected["n_ratings"] >= 1 and report["criteria"] == expected["criteria"]

    def test_50_concurrent_reviewers_through_the_app(self, launched):
        """50 gradio_client reviewers at once, every call through Gradio's auth and queue: no row lost or doubled.

        Gradio + gradio_client cost ~0.1 s per call here, so the default run does 50 x 4 submissions (~25 s);
        ``ALPACARE_APP_STRESS_SUBMISSIONS=20`` runs the full 50 x 20 = 1000 (~2 min on this 2-core machine).
        """
        per_reviewer = int(os.environ.get("ALPACARE_APP_STRESS_SUBMISSIONS", "4"))
        before = len(load_ratings(launched.data))  # earlier tests' ratings
        users = list(REVIEWERS)
        errors: list[BaseException] = []
        barrier = threading.Barrier(len(users))

        def review(user: str) -> None:
            try:
                client = client_for(launched.url, user)
                barrier.wait()
                client.predict(**PROFILE, api_name="/register_reviewer")
                for _ in range(per_reviewer):
                    item = client.predict(api_name="/next_item")
                    client.predict(item["id"], **GOOD, api_name="/submit_rating")
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)

        started = time.perf_counter()
        threads = [threading.Thread(target=review, args=(u,)) for u in users]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        elapsed = time.perf_counter() - started
        assert not errors, errors[:3]
        rows = load_ratings(launched.data)
        raw = (launched.data / "ratings-launched.jsonl").read_bytes().splitlines()
        assert len(rows) == len(raw) == before + 50 * per_reviewer  # every line valid, nothing lost or doubled
        assert len({(r["reviewer"], r["item_id"]) for r in rows}) == len(rows)
        print(f"\napp: 50 gradio_client reviewers x {per_reviewer} = {50 * per_reviewer} rows in {elapsed:.1f} s")


class TestQueue:
    def test_busy_model_degrades_into_waiting_not_failure(self, tmp_path: Path):
        """8 simultaneous /generate calls on an app allowing 2 generations at once: all answered, never > 2."""
        from gradio_client import Client

        running, peak, lock = [0], [0], threading.Lock()

        def slow_generate(model, tokenizer, prompt, **kwargs):
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.5)
            with lock:
                running[0] -= 1
            return SimpleNamespace(reply=f"Reply to {prompt} {DISCLAIMER}", blocked=False, categories=[])

        settings = make_settings(tmp_path, concurrency=2)
        demo = app.build_demo(FAKE_MODEL, settings, pool=[], generate_fn=slow_generate)
        _, url, _ = app.launch(demo, settings, prevent_thread_lock=True, quiet=True)
        try:
            clients = [Client(url, verbose=False) for _ in range(8)]
            jobs = [c.submit(f"Question {n}?", api_name="/generate") for n, c in enumerate(clients)]
            replies = [job.result(timeout=120)["reply"] for job in jobs]
        finally:
            demo.close()
        assert all(reply.startswith(f"Reply to Question {n}?") for n, reply in enumerate(replies)) and peak[0] == 2


# ------------------------------------------------------------------------------------------ python app.py


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_pool(path: Path, n: int = 6) -> Path:
    path.write_text("".join(json.dumps({**item, "blocked": False, "categories": []}) + "\n" for item in make_pool(n)))
    return path


@pytest.mark.slow
class TestServedProcess:
    @pytest.mark.parametrize("mode", ["offline", "hub-unreachable"])
    def test_python_app_py_serves_and_never_leaks_the_token(self, tmp_path: Path, smollm2_path, mode):
        """``python app.py`` on the embedded SmolLM2: ready, /generate and a rating work; the token stays hidden.

        "hub-unreachable" configures a dataset push to a Hub that refuses connections, so the token is really
        used (and the failure logged) while the app keeps serving from the local files.
        """
        from gradio_client import Client

        token = "hf_" + "".join(random.Random(mode).choices("abcdefghijklmnopqrstuvwxyzABCDEFGH0123456789", k=34))
        port = free_port()
        env = {
            **os.environ,
            "HF_TOKEN": token,
            "HF_HUB_OFFLINE": "1" if mode == "offline" else "0",
            "HF_ENDPOINT": "http://127.0.0.1:9",  # nothing listens there: every Hub call fails fast
            "GRADIO_ANALYTICS_ENABLED": "False",
            "PYTHONUNBUFFERED": "1",  # every log line reaches the pipe before the process is stopped
            "ALPACARE_DATASET_REPO": "org/alpacare-reviews",
            "ALPACARE_PUSH_EVERY": "0.01",  # retry the push every 0.6 s
            "ALPACARE_REVIEWERS": "alice:pw",
            "ALPACARE_REVIEW_POOL": str(write_pool(tmp_path / "pool.jsonl")),
            "ALPACARE_DATA_DIR": str(tmp_path / "reviews"),
            "ALPACARE_MAX_NEW_TOKENS": "24",
            "GRADIO_SERVER_PORT": str(port),
        }
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        lines: list[str] = []
        ready = threading.Event()

        def read() -> None:
            for line in proc.stdout:
                lines.append(line)
                if "Running on local URL" in line:
                    ready.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            assert ready.wait(180), "".join(lines)
            ready_s = time.perf_counter() - started
            client = Client(f"http://127.0.0.1:{port}/", auth=("alice", "pw"), verbose=False)
            t_gen = time.perf_counter()
            out = client.predict("What is anemia?", api_name="/generate")
            generate_s = time.perf_counter() - t_gen
            assert out["reply"].endswith(DISCLAIMER) and set(out) == {"reply", "blocked", "categories"}
            client.predict(**PROFILE, api_name="/register_reviewer")
            item = client.predict(api_name="/next_item")
            client.predict(item["id"], **GOOD, comment="fine", api_name="/submit_rating")
            import httpx

            page = httpx.get(f"http://127.0.0.1:{port}/", cookies=client.cookies, timeout=30).text
            config = json.dumps(client.config)
            if mode == "hub-unreachable":
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and sum("Cannot push ratings" in x for x in lines) < 2:
                    time.sleep(0.2)
        finally:
            proc.terminate()
            proc.wait(30)
            reader.join(5)
        log = "".join(lines)
        print(f"\npython app.py ({mode}): ready in {ready_s:.1f} s, first /generate {generate_s:.1f} s")
        expected = "HF_HUB_OFFLINE=1: ratings stay in" if mode == "offline" else "Cannot push ratings to org/alp"
        assert log.count(expected) >= (1 if mode == "offline" else 2), log  # the push path ran (and is retried)
        assert "SmolLM2-135M-Instruct (embedded)" in config
        stored = b"".join(p.read_bytes() for p in (tmp_path / "reviews").glob("*.jsonl"))
        assert b'"comment":"fine"' in stored
        for where, text in {"log": log, "page": page, "config": config, "stored rows": stored.decode()}.items():
            assert token not in text, f"token leaked into the {where}"


# ------------------------------------------------------------------------------------------------ browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed (apt-get install chromium, or `make browser-deps`)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.mark.browser
class TestBrowser:
    def test_chat_stop_sign_in_review_and_results(self, browser, smollm2, tmp_path: Path):
        """A reviewer's whole visit in headless Chromium, on the real SmolLM2; screenshots in test-artifacts/."""
        ARTIFACTS.mkdir(exist_ok=True)
        for old in ARTIFACTS.glob("app-*.png"):
            old.unlink()
        shot = lambda page, name: page.screenshot(path=str(ARTIFACTS / f"app-{name}.png"), full_page=True)  # noqa: E731
        settings = make_settings(tmp_path, max_new_tokens=48, reviewers_inline="alice:pw-alice")
        demo = app.build_demo(smollm2, settings, pool=make_pool(3))
        _, url, _ = app.launch(demo, settings, prevent_thread_lock=True, quiet=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        try:
            page.goto(url)
            page.get_by_label("username").wait_for(timeout=30_000)
            shot(page, "01-login")
            page.get_by_label("username").fill("alice")
            page.get_by_label("password").fill("wrong")
            page.get_by_role("button", name="Login").click()
            page.get_by_text("Incorrect Credentials").wait_for(timeout=10_000)
            page.get_by_label("username").fill("alice")
            page.get_by_label("password").fill("pw-alice")
            page.get_by_role("button", name="Login").click()

            # Chat: a streamed reply that ends with the disclaimer, under the live model line.
            chatbot = page.locator("#chatbot")
            chatbot.wait_for(timeout=30_000)
            assert "smollm2-135m-instruct (embedded) (no adapter)" in page.locator("#model-line").inner_text().lower()
            assert "not medical advice" in page.locator("#model-line").inner_text()
            page.locator("#chat-input textarea").fill("What is iron deficiency anemia?")
            page.locator("#chat-input textarea").press("Enter")
            chatbot.get_by_text("Please consult a qualified healthcare professional").wait_for(timeout=120_000)
            shot(page, "02-chat")

            # Stop: the partial reply is closed with the disclaimer and the server stops generating.
            page.locator("#chat-input textarea").fill("Explain in detail how the heart pumps blood around the body.")
            page.locator("#chat-input textarea").press("Enter")
            chatbot.get_by_text("Explain in detail how the heart").wait_for(timeout=30_000)
            page.locator("#stop").click()
            chatbot.get_by_text("(stopped)").wait_for(timeout=30_000)
            deadline = time.monotonic() + 30
            while demo.handlers._stop_events and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not demo.handlers._stop_events  # the generator ended: no generation left running
            shot(page, "03-stopped")

            # Bad input: a clear message in the chat, no stack trace.
            page.locator("#chat-input textarea").fill("   ")
            page.locator("#send").click()
            chatbot.get_by_text("Please type a question first.").wait_for(timeout=30_000)

            # Results before any rating.
            page.get_by_role("tab", name="Results").click()
            page.locator("#results").get_by_text("0 ratings by 0 reviewers").wait_for(timeout=30_000)

            # Review: consent is required, then the profile, then a rating.
            page.get_by_role("tab", name="Review").click()
            page.get_by_role("button", name="Save consent and profile").click()
            page.locator("#review-message").get_by_text("Consent is required").wait_for(timeout=30_000)
            page.get_by_label("I have read the statement").check()
            page.get_by_label("Name").fill("Alice Example")
            page.get_by_label("Affiliation").fill("Example Hospital")
            page.get_by_label("Medical student").check()
            page.get_by_label("Year of study").fill("4")
            page.get_by_label("4 — Proficient").check()
            shot(page, "04-consent")
            page.get_by_role("button", name="Save consent and profile").click()
            page.locator("#submit-rating").wait_for(timeout=30_000)
            assert "Medical student, year 4" in page.locator("#review-who").inner_text()
            page.locator("#rate-safety").get_by_label("2 —").check()
            for score in ("helpfulness", "clarity", "factuality"):
                page.locator(f"#rate-{score}").get_by_label("4 —").check()
            page.locator("#rate-disclaimer").get_by_label("no").check()
            page.locator("#rate-categories").get_by_label("Dose").check()
            shot(page, "05-rating")
            page.get_by_role("button", name="Submit rating").click()
            page.locator("#review-message").get_by_text("Rating saved").wait_for(timeout=30_000)
            shot(page, "06-next-item")

            # Results changed: one violating rating → NO-GO with the numbers.
            page.get_by_role("tab", name="Results").click()
            results = page.locator("#results")
            results.get_by_text("1 rating by 1 reviewer").wait_for(timeout=30_000)
            text = results.inner_text()
            assert "NO-GO" in text and "100.0%" in text and "FAIL" in text
            with page.expect_download() as download:
                page.locator("#download-csv").click()
            exported = Path(download.value.path()).read_text()
            assert exported.startswith("rating_id,") and ",alice,item-" in exported and ",dosage," in exported
            page.wait_for_timeout(500)  # let the plot render for the screenshot
            shot(page, "07-results")
        except Exception:
            shot(page, "failure")
            raise
        finally:
            page.close()
            demo.close()
        row = demo.handlers.desk.store.ratings()[0]
        assert (row["reviewer"], row["safety"], row["categories"]) == ("alice", 2, ["dosage"])
