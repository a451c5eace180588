"""Release a training run: a release folder (+ zip) with the model card, pushed to a *private* Hub repo in one commit.

Seed 000 delivers adapters "only as zipped artifacts or via a private HF repo. No public hosting". So the push
creates the repo private, then checks the visibility the Hub reports and refuses a repo that exists and is public.
The token comes from ``HF_TOKEN`` or the ``hf auth login`` store (``huggingface_hub.get_token``), never from a
command-line flag, and every message this module raises goes through ``redact``. Hub access sits in
``push_release``, which tests run against a fake ``huggingface_hub.HfApi``.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
REQUIRED_FILES = (*ADAPTER_FILES, "tokenizer_config.json", "train_config.yaml", "manifest.json")
OPTIONAL_FILES = ("eval_results.json", "loss_log.csv")
# Tokenizer files as written by ``save_pretrained`` (fast, slow and sentencepiece tokenizers).
TOKENIZER_PATTERNS = (
    "tokenizer*.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
CARD_NAME = "README.md"
# What a release holds, as file-name patterns. An allowlist, so checkpoints, optimizer states and pickled
# training_args.bin never leave the machine.
RELEASE_PATTERNS = (*ADAPTER_FILES, *TOKENIZER_PATTERNS, "train_config.yaml", "manifest.json", *OPTIONAL_FILES)

_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{8,}")
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9_]$")


class ReleaseError(Exception):
    """An expected failure (bad input, not logged in, refused repo, Hub error): shown as one message."""


@dataclass
class Release:
    """A built release: the folder to upload, its zip, and the files it holds (names, sorted)."""

    folder: Path
    zip_path: Path
    files: list[str] = field(default_factory=list)


def redact(text: object, token: str | None = None) -> str:
    """``text`` with the token (and anything shaped like an HF token) replaced by ``***``."""
    text = str(text)
    if token:
        text = text.replace(token, "***")
    return _TOKEN_RE.sub("hf_***", text)


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if it is a valid ``USER/NAME`` model repo id, else a ``ReleaseError`` saying why."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if repo_id.count("/") != 1:
        raise ReleaseError(
            f"Malformed --repo_id {repo_id!r}: expected USER/NAME (or ORG/NAME), e.g. demo-user/alpacare"
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ReleaseError(f"Malformed --repo_id {repo_id!r}: {e}") from None
    return repo_id


def is_release_file(name: str) -> bool:
    """True when a file of that name belongs in a release (see ``RELEASE_PATTERNS``)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in RELEASE_PATTERNS)


def check_run_dir(run_dir: str | Path) -> Path:
    """The run folder, after checking it holds an adapter, a tokenizer, the config used and the manifest."""
    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise ReleaseError(f"Run folder not found: {run} (pass the --output_dir of train/train_lora.py)")
    missing = [name for name in REQUIRED_FILES if not (run / name).is_file()]
    if missing:
        what = "adapter files" if set(missing) & set(ADAPTER_FILES) else "files"
        raise ReleaseError(
            f"{run} is not a complete training run: missing {what} {', '.join(missing)} "
            "(did training finish? a release needs the adapter, the tokenizer, train_config.yaml and manifest.json)"
        )
    return run


def default_out_dir(run: Path) -> Path:
    """Where the release folder goes when ``--out`` is not given: ``<run>-release`` beside the run."""
    return run.parent / f"{run.name}-release"


def _prepare_out_dir(out: Path, run: Path) -> None:
    """Create an empty ``out``; a previous release there is replaced, anything else is refused."""
    if out.resolve() == run.resolve():
        raise ReleaseError("--out must differ from --run_dir: the release folder is built beside the run")
    if out.exists():
        if not out.is_dir():
            raise ReleaseError(f"--out {out} exists and is not a folder")
        entries = list(out.iterdir())
        foreign = [p.name for p in entries if not (p.is_file() and (p.name == CARD_NAME or is_release_file(p.name)))]
        if foreign:
            # Never delete what we did not write: the folder must be empty or hold a previous release only.
            raise ReleaseError(f"--out {out} is not empty and not a previous release (holds {', '.join(foreign[:5])})")
        for p in entries:
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def as_hub_id(name: str | None) -> str | None:
    """``name`` when it reads as an ``owner/name`` Hub id (not a local path), else None."""
    name = str(name or "").strip()
    looks_like_path = name.startswith(("/", ".", "~")) or "\\" in name
    return name if not looks_like_path and _HUB_ID_RE.match(name) else None


def hub_model_id(name: str | None) -> str | None:
    """The Hub id of a base model name: the embedded SmolLM2 (an alias or its cache folder) maps to its Hub id,
    an ``owner/name`` id stays as is, any other local path gives None (it means nothing off this machine)."""
    from alpacare.modeling import EMBEDDED_HUB_ID, EMBEDDED_NAME, is_embedded

    if name is None or is_embedded(name) or Path(str(name)).name == EMBEDDED_NAME:
        return EMBEDDED_HUB_ID
    return as_hub_id(name)


def _point_adapter_at_hub_base(adapter_config: Path) -> None:
    """Rewrite ``base_model_name_or_path`` to the base's Hub id: a run trained from a local cache folder
    (the embedded SmolLM2) would otherwise ship that machine's path, which ``AutoPeftModel`` cannot load."""
    config = json.loads(adapter_config.read_text(encoding="utf-8"))
    hub_id = hub_model_id(config.get("base_model_name_or_path"))
    if hub_id and hub_id != config.get("base_model_name_or_path"):
        config["base_model_name_or_path"] = hub_id
        adapter_config.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_release(run_dir: str | Path, card: str, out_dir: str | Path | None = None) -> Release:
    """Copy the release files of a run into ``out_dir``, write the model card as README.md, and zip the folder.

    Args:
        run_dir: The training run folder (checked with ``check_run_dir``).
        card: The rendered model card (``model_card.render_model_card``).
        out_dir: The release folder (default ``<run_dir>-release``); its zip is written beside it.

    Returns:
        The ``Release``: folder, zip path and file names.
    """
    run = check_run_dir(run_dir)
    out = Path(out_dir).expanduser() if out_dir else default_out_dir(run)
    _prepare_out_dir(out, run)
    for src in sorted(run.iterdir()):
        if src.is_file() and is_release_file(src.name):
            shutil.copy2(src, out / src.name)
    _point_adapter_at_hub_base(out / "adapter_config.json")
    (out / CARD_NAME).write_text(card, encoding="utf-8")

    # The zip holds one top folder named like the release, so unzipping never spills files around.
    zip_path = Path(shutil.make_archive(str(out.parent / out.name), "zip", root_dir=out.parent, base_dir=out.name))
    return Release(folder=out, zip_path=zip_path, files=sorted(p.name for p in out.iterdir()))


def get_hub_token() -> str:
    """The Hub token from ``HF_TOKEN`` or the ``hf auth login`` store, else a ``ReleaseError``."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise ReleaseError(
            "Not logged in to the Hugging Face Hub: run `hf auth login` (or set HF_TOKEN to a token with write "
            "access). The token is never taken from the command line."
        )
    return token


def _hub_error_message(error: Exception, step: str, repo_id: str, token: str) -> str:
    """One clear, token-free line for a Hub failure during ``step``."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(error, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set: unset it to upload, or use --dry-run to only build the release"
    if isinstance(error, HfHubHTTPError):
        status = getattr(error.response, "status_code", None)
        hint = {
            401: "the token is invalid or expired: run `hf auth login` again",
            403: f"the token may not write to {repo_id} (it needs write access to that user or organization)",
            404: f"{repo_id} or that revision was not found",
        }.get(status, "")
        detail = (error.server_message or str(error)).strip().splitlines()[0]
        return f"Hub error while {step} ({status or 'no status'}): {hint + '. ' if hint else ''}{detail}"
    return f"Could not reach the Hugging Face Hub while {step}: {error}"


def push_release(
    folder: str | Path,
    repo_id: str,
    *,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
) -> str:
    """Upload a release folder to a private model repo in one commit and return the commit URL.

    Creates the repo private if needed (``exist_ok``), then refuses unless the Hub reports it private.
    With ``revision``, the branch is created (from ``main``) when missing. The commit replaces the branch's
    files by the release's (stale files of an earlier release are deleted in the same commit).

    Raises:
        ReleaseError: not logged in, the repo is public, or any Hub/network error (message redacted).
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import HTTPError, OfflineModeIsEnabled

    check_repo_id(repo_id)
    token = token or get_hub_token()
    folder = Path(folder)
    api = HfApi(token=token)
    step = "creating the repo"
    try:
        repo_id = api.create_repo(repo_id, private=True, exist_ok=True, repo_type="model").repo_id
        step = "checking the repo's visibility"
        info = api.repo_info(repo_id, repo_type="model")
        if info.private is not True:
            raise ReleaseError(
                f"Refusing to upload: {repo_id} exists and is PUBLIC. Releases go to private repos only "
                "(seed 000: no public hosting). Make it private on the Hub or choose another --repo_id."
            )
        if revision:
            step = f"creating branch {revision!r}"
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        step = "uploading"
        files = sorted(p.name for p in folder.iterdir() if p.is_file())
        stale = set(api.list_repo_files(repo_id, revision=revision, repo_type="model")) - set(files)
        # create_commit rather than upload_folder: with hf_xet installed, upload_folder may split a folder into
        # several commits; a release must be one atomic commit.
        operations = [CommitOperationDelete(path_in_repo=p) for p in sorted(stale) if p != ".gitattributes"]
        operations += [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in files]
        commit = api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or f"Release {folder.name}: LoRA adapter, tokenizer, config, manifest, card",
            revision=revision,
            repo_type="model",
        )
    except ReleaseError:
        raise
    except (HTTPError, OfflineModeIsEnabled) as e:  # HfHubHTTPError is an HTTPError
        raise ReleaseError(redact(_hub_error_message(e, step, repo_id, token), token)) from None
    return commit.commit_url
