"""The release: folder and zip contents, the private-only push against a fake Hub, the CLI, and resolve_adapter.

Nothing here reaches the network: ``huggingface_hub.HfApi`` / ``get_token`` / ``snapshot_download`` are replaced
by fakes at the Hub boundary.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import httpx2
import huggingface_hub
import pytest
from fake_run import REVIEW_REPORT, write_fake_run
from huggingface_hub import ModelCard
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from alpacare import hub, modeling
from alpacare.hub import ReleaseError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "train" / "push_adapter.py"
FAKE_TOKEN = "hf_FakeTokenForTests0123456789abcdef"
REPO = "demo-user/alpacare-tiny"
EXPECTED_FILES = {
    "README.md",
    "adapter_config.json",
    "adapter_model.safetensors",
    "chat_template.jinja",
    "eval_results.json",
    "loss_log.csv",
    "manifest.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "train_config.yaml",
}


def load_script():
    """``train/push_adapter.py`` as a module (it is a script, not a package member)."""
    spec = importlib.util.spec_from_file_location("push_adapter", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


push_adapter = load_script()


def fresh_base(tokenizer):
    """A new tiny random Llama like the conftest one (that one is wrapped in place when the run is written)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    return LlamaForCausalLM(config)


def http_error(status: int, message: str) -> HfHubHTTPError:
    """An HfHubHTTPError as huggingface_hub raises it for a ``status`` response."""
    request = httpx2.Request("POST", "https://huggingface.co/api/repos/create")
    return HfHubHTTPError(message, response=httpx2.Response(status, request=request), server_message=message)


class FakeHub:
    """The Hub as the release sees it: repos with a visibility and files, every call recorded."""

    def __init__(self, repos: dict[str, bool] | None = None, files: list[str] | None = None, fail: dict | None = None):
        self.repos = dict(repos or {})  # repo_id -> private
        self.files = list(files or [".gitattributes"])
        self.fail = fail or {}  # method name -> exception
        self.calls: list[tuple[str, tuple, dict]] = []
        self.tokens: list[str | None] = []

    def api(self, token=None, **_):
        self.tokens.append(token)
        return FakeApi(self)


class FakeApi:
    def __init__(self, hub_: FakeHub):
        self.hub = hub_

    def _record(self, name, *args, **kwargs):
        self.hub.calls.append((name, args, kwargs))
        if name in self.hub.fail:
            raise self.hub.fail[name]

    def create_repo(self, repo_id, *, private=None, exist_ok=False, repo_type=None, **kwargs):
        self._record("create_repo", repo_id, private=private, exist_ok=exist_ok, repo_type=repo_type)
        self.hub.repos.setdefault(repo_id, bool(private))
        return SimpleNamespace(repo_id=repo_id)

    def repo_info(self, repo_id, **kwargs):
        self._record("repo_info", repo_id, **kwargs)
        return SimpleNamespace(id=repo_id, private=self.hub.repos[repo_id])

    def create_branch(self, repo_id, *, branch, exist_ok=False, **kwargs):
        self._record("create_branch", repo_id, branch=branch, exist_ok=exist_ok)

    def list_repo_files(self, repo_id, *, revision=None, **kwargs):
        self._record("list_repo_files", repo_id, revision=revision)
        return list(self.hub.files)

    def create_commit(self, repo_id, operations, *, commit_message, revision=None, **kwargs):
        self._record("create_commit", repo_id, list(operations), commit_message=commit_message, revision=revision)
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/abc123")

    def upload_folder(self, **kwargs):  # must not be used: it may split a folder into several commits
        self._record("upload_folder", **kwargs)


def calls(fake: FakeHub, name: str) -> list[tuple[tuple, dict]]:
    """The recorded calls of one method."""
    return [(args, kwargs) for n, args, kwargs in fake.calls if n == name]


@pytest.fixture()
def run(tmp_path, tiny_model, tokenizer):
    """A tiny run folder with a real LoRA adapter."""
    return write_fake_run(tmp_path / "tiny-run", tiny_model, tokenizer)


@pytest.fixture()
def release(run, tmp_path):
    """A built release of the tiny run."""
    return hub.build_release(run, "# card\n", tmp_path / "out")


@pytest.fixture()
def fake_hub(monkeypatch):
    """A fake Hub behind ``huggingface_hub.HfApi`` and a logged-in token."""
    fake = FakeHub()
    monkeypatch.setattr(huggingface_hub, "HfApi", fake.api)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: FAKE_TOKEN)
    return fake


class TestRepoId:
    @pytest.mark.parametrize("repo_id", ["demo-user/x", "Org_1/alpacare-smollm2.v1"])
    def test_valid(self, repo_id):
        assert hub.check_repo_id(repo_id) == repo_id

    @pytest.mark.parametrize("repo_id", ["x", "a/b/c", "a//b", "-a/b", "a b/c", "user/", "https://hf.co/a/b"])
    def test_malformed(self, repo_id):
        with pytest.raises(ReleaseError, match="Malformed --repo_id"):
            hub.check_repo_id(repo_id)


class TestHubIds:
    @pytest.mark.parametrize(
        ("name", "expected"),
        [
            (None, "HuggingFaceTB/SmolLM2-135M-Instruct"),
            ("embedded", "HuggingFaceTB/SmolLM2-135M-Instruct"),
            ("/root/.cache/alpacare/smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"),
            ("meta-llama/Llama-3.2-1B-Instruct", "meta-llama/Llama-3.2-1B-Instruct"),
            ("/models/llama", None),
            ("./runs/base", None),
        ],
    )
    def test_hub_model_id(self, name, expected):
        assert hub.hub_model_id(name) == expected


class TestRedact:
    def test_token_and_token_shapes_are_removed(self):
        text = hub.redact(f"bad {FAKE_TOKEN} and hf_OtherLookingToken123", FAKE_TOKEN)
        assert FAKE_TOKEN not in text and "hf_OtherLookingToken123" not in text and text.startswith("bad ***")


class TestBuildRelease:
    def test_folder_holds_exactly_the_release_files(self, release):
        assert set(release.files) == EXPECTED_FILES
        assert {p.name for p in release.folder.iterdir()} == EXPECTED_FILES  # no checkpoints, no training_args.bin

    def test_zip_holds_the_folder(self, release):
        assert release.zip_path == release.folder.parent / "out.zip"
        with zipfile.ZipFile(release.zip_path) as zf:
            names = {n for n in zf.namelist() if not n.endswith("/")}
            assert names == {f"out/{name}" for name in EXPECTED_FILES}
            assert zf.read("out/README.md") == b"# card\n"

    def test_adapter_points_at_the_hub_base(self, run, release):
        assert json.loads((run / "adapter_config.json").read_text())["base_model_name_or_path"] is None
        config = json.loads((release.folder / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert config["r"] == 4

    def test_release_adapter_loads_with_the_same_weights(self, release, run, tokenizer):
        import torch
        from peft import PeftModel
        from safetensors.torch import load_file

        model = PeftModel.from_pretrained(fresh_base(tokenizer), release.folder)
        saved = load_file(run / "adapter_model.safetensors")
        loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
        assert len(loaded) == len(saved) == 8  # 2 layers x (q, v) x (A, B)
        for key, tensor in saved.items():
            match = [v for k, v in loaded.items() if k.replace(".default", "").endswith(key.split("model.", 1)[1])]
            assert len(match) == 1 and torch.equal(match[0], tensor)

    def test_previous_release_is_replaced(self, run, release):
        again = hub.build_release(run, "# card v2\n", release.folder)
        assert (again.folder / "README.md").read_text() == "# card v2\n"
        assert set(again.files) == EXPECTED_FILES

    def test_foreign_out_dir_is_refused_and_kept(self, run, tmp_path):
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "thesis.docx").write_text("precious")
        with pytest.raises(ReleaseError, match="not empty and not a previous release"):
            hub.build_release(run, "# card\n", tmp_path / "mine")
        assert (tmp_path / "mine" / "thesis.docx").read_text() == "precious"

    def test_out_dir_cannot_be_the_run(self, run):
        with pytest.raises(ReleaseError, match="must differ"):
            hub.build_release(run, "# card\n", run)

    def test_default_out_dir_is_beside_the_run(self, run):
        release = hub.build_release(run, "# card\n")
        assert release.folder == run.parent / "tiny-run-release"
        assert release.zip_path == run.parent / "tiny-run-release.zip"

    @pytest.mark.parametrize("missing", ["adapter_model.safetensors", "adapter_config.json"])
    def test_missing_adapter_files_are_named(self, run, tmp_path, missing):
        (run / missing).unlink()
        with pytest.raises(ReleaseError, match=f"missing adapter files .*{missing}"):
            hub.build_release(run, "# card\n", tmp_path / "out")

    def test_missing_run_dir(self, tmp_path):
        with pytest.raises(ReleaseError, match="Run folder not found"):
            hub.build_release(tmp_path / "nope", "# card\n")


class TestPushRelease:
    def test_new_repo_is_created_private_and_gets_one_commit(self, release, fake_hub):
        url = hub.push_release(release.folder, REPO)
        assert url == f"https://huggingface.co/{REPO}/commit/abc123"
        assert calls(fake_hub, "create_repo") == [((REPO,), {"private": True, "exist_ok": True, "repo_type": "model"})]
        [(args, kwargs)] = calls(fake_hub, "create_commit")
        added = {op.path_in_repo for op in args[1] if isinstance(op, huggingface_hub.CommitOperationAdd)}
        assert added == EXPECTED_FILES and kwargs["revision"] is None
        assert not calls(fake_hub, "upload_folder") and fake_hub.tokens == [FAKE_TOKEN]

    def test_existing_private_repo_is_accepted(self, release, fake_hub):
        fake_hub.repos[REPO] = True
        assert hub.push_release(release.folder, REPO).endswith("/commit/abc123")

    @pytest.mark.parametrize("private", [False, None])
    def test_public_or_unknown_visibility_is_refused_and_nothing_uploaded(self, release, fake_hub, private):
        fake_hub.repos[REPO] = private
        with pytest.raises(ReleaseError, match=f"Refusing to upload: {REPO} exists and is PUBLIC"):
            hub.push_release(release.folder, REPO)
        assert not calls(fake_hub, "create_commit") and not calls(fake_hub, "create_branch")

    def test_revision_creates_the_branch_and_commits_there(self, release, fake_hub):
        hub.push_release(release.folder, REPO, revision="v1", commit_message="release v1")
        assert calls(fake_hub, "create_branch") == [((REPO,), {"branch": "v1", "exist_ok": True})]
        [(_, kwargs)] = calls(fake_hub, "create_commit")
        assert kwargs == {"commit_message": "release v1", "revision": "v1"}

    def test_stale_files_are_deleted_in_the_same_commit(self, release, fake_hub):
        fake_hub.files = [".gitattributes", "README.md", "old_eval.json"]
        hub.push_release(release.folder, REPO)
        [(args, _)] = calls(fake_hub, "create_commit")
        deleted = [op.path_in_repo for op in args[1] if isinstance(op, huggingface_hub.CommitOperationDelete)]
        assert deleted == ["old_eval.json"]

    @pytest.mark.parametrize(
        ("status", "hint"), [(401, "invalid or expired"), (403, "may not write"), (500, "Hub error while")]
    )
    def test_hub_errors_are_one_clear_line_without_the_token(self, release, fake_hub, status, hint):
        fake_hub.fail["create_repo"] = http_error(status, f"denied for token {FAKE_TOKEN}")
        with pytest.raises(ReleaseError) as excinfo:
            hub.push_release(release.folder, REPO)
        message = str(excinfo.value)
        assert hint in message and "creating the repo" in message and FAKE_TOKEN not in message
        assert excinfo.value.__cause__ is None and excinfo.value.__suppress_context__

    def test_commit_failure_names_the_step(self, release, fake_hub):
        fake_hub.fail["create_commit"] = http_error(413, "too large")
        with pytest.raises(ReleaseError, match="while uploading .*too large"):
            hub.push_release(release.folder, REPO)

    def test_offline_mode(self, release, fake_hub):
        fake_hub.fail["create_repo"] = OfflineModeIsEnabled("offline")
        with pytest.raises(ReleaseError, match="HF_HUB_OFFLINE is set"):
            hub.push_release(release.folder, REPO)

    def test_network_error(self, release, fake_hub):
        fake_hub.fail["repo_info"] = httpx2.ConnectError("connection refused")
        with pytest.raises(ReleaseError, match="Could not reach the Hugging Face Hub while checking"):
            hub.push_release(release.folder, REPO)

    def test_not_logged_in(self, release, fake_hub, monkeypatch):
        monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
        with pytest.raises(ReleaseError, match="Not logged in .*`hf auth login`"):
            hub.push_release(release.folder, REPO)
        assert not fake_hub.calls


class TestGetHubToken:
    """The real ``huggingface_hub.get_token`` lookup: HF_TOKEN, then the login store."""

    @pytest.fixture(autouse=True)
    def isolated_store(self, monkeypatch, tmp_path):
        for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
        return tmp_path / "token"

    def test_from_env(self, monkeypatch):
        monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
        assert hub.get_hub_token() == FAKE_TOKEN

    def test_from_login_store(self, isolated_store):
        isolated_store.write_text(FAKE_TOKEN)
        assert hub.get_hub_token() == FAKE_TOKEN

    def test_none(self):
        with pytest.raises(ReleaseError, match="Not logged in"):
            hub.get_hub_token()


class TestCli:
    def test_dry_run_builds_without_a_token_or_the_hub(self, run, tmp_path, monkeypatch, capsys):
        def no_hub(*args, **kwargs):
            raise AssertionError("dry run touched the Hub")

        monkeypatch.setattr(huggingface_hub, "HfApi", no_hub)
        monkeypatch.setattr(huggingface_hub, "get_token", no_hub)
        out = tmp_path / "out"
        assert push_adapter.main(["--run_dir", str(run), "--repo_id", REPO, "--dry-run", "--out", str(out)]) == 0
        assert {p.name for p in out.iterdir()} == EXPECTED_FILES and (tmp_path / "out.zip").is_file()
        card = ModelCard.load(out / "README.md")
        assert card.data.library_name == "peft" and f"hf download {REPO}" in card.text
        assert "Dry run: nothing uploaded" in capsys.readouterr().out

    def test_review_report_goes_into_the_card(self, run, tmp_path, monkeypatch):
        (tmp_path / "report.json").write_text(json.dumps(REVIEW_REPORT))
        args = ["--run_dir", str(run), "--repo_id", REPO, "--dry-run", "--out", str(tmp_path / "out")]
        assert push_adapter.main([*args, "--review_report", str(tmp_path / "report.json")]) == 0
        assert "**FAIL**" in (tmp_path / "out" / "README.md").read_text()

    def test_push_prints_the_commit_url_never_the_token(self, run, tmp_path, fake_hub, capsys):
        args = ["--run_dir", str(run), "--repo_id", REPO, "--out", str(tmp_path / "out"), "--revision", "v1"]
        assert push_adapter.main(args) == 0
        out, err = capsys.readouterr()
        assert f"https://huggingface.co/{REPO}/commit/abc123" in out
        assert FAKE_TOKEN not in out + err
        assert len(calls(fake_hub, "create_commit")) == 1
        assert "--revision v1" in (tmp_path / "out" / "README.md").read_text()

    def test_public_repo_is_refused_with_exit_1(self, run, tmp_path, fake_hub, capsys):
        fake_hub.repos[REPO] = False
        assert push_adapter.main(["--run_dir", str(run), "--repo_id", REPO, "--out", str(tmp_path / "out")]) == 1
        out, err = capsys.readouterr()
        assert err.startswith("error: Refusing to upload") and "Traceback" not in err
        assert not calls(fake_hub, "create_commit")

    def test_hub_error_message_has_no_token(self, run, tmp_path, fake_hub, capsys):
        fake_hub.fail["create_repo"] = http_error(401, f"Invalid credentials in header Bearer {FAKE_TOKEN}")
        assert push_adapter.main(["--run_dir", str(run), "--repo_id", REPO, "--out", str(tmp_path / "o")]) == 1
        out, err = capsys.readouterr()
        assert "invalid or expired" in err and FAKE_TOKEN not in out + err

    @pytest.mark.parametrize(
        ("case", "message"),
        [
            ("no_run_dir", "Run folder not found"),
            ("no_adapter", "missing adapter files adapter_model.safetensors"),
            ("bad_repo", "Malformed --repo_id"),
            ("not_logged_in", "Not logged in"),
            ("no_report", "Review report not found"),
        ],
    )
    def test_expected_errors_are_one_line(self, case, message, run, tmp_path, fake_hub, monkeypatch, capsys):
        args = {"--run_dir": str(run), "--repo_id": REPO, "--out": str(tmp_path / "out")}
        extra = []
        if case == "no_run_dir":
            args["--run_dir"] = str(tmp_path / "missing")
        elif case == "no_adapter":
            (run / "adapter_model.safetensors").unlink()
        elif case == "bad_repo":
            args["--repo_id"] = "just-a-name"
        elif case == "not_logged_in":
            monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
        else:
            extra = ["--review_report", str(tmp_path / "missing.json")]
        assert push_adapter.main([x for kv in args.items() for x in kv] + extra) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err
        assert not fake_hub.calls and not (tmp_path / "out").exists()

    def test_script_runs_from_anywhere(self, run, tmp_path):
        """The real script in a fresh process (the project root is not the cwd)."""
        out = tmp_path / "rel"
        cmd = [sys.executable, str(SCRIPT), "--run_dir", str(run), "--repo_id", REPO, "--dry-run", "--out", str(out)]
        result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert ModelCard.load(out / "README.md").data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"


class TestResolveAdapter:
    """``alpacare.modeling.resolve_adapter``: how the app and ``alpacare.generate`` pull a released adapter."""

    @pytest.fixture()
    def downloads(self, monkeypatch, tmp_path):
        """A fake ``snapshot_download`` recording its arguments and returning a local folder."""
        seen = []

        def fake_snapshot_download(repo_id, **kwargs):
            seen.append({"repo_id": repo_id, **kwargs})
            return str(tmp_path / "snapshot")

        monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
        return seen

    def test_none(self, downloads):
        assert modeling.resolve_adapter(None) is None and not downloads

    def test_local_folder_is_used_as_is(self, downloads, run):
        assert modeling.resolve_adapter(str(run)) == str(run) and not downloads

    def test_repo_id_is_downloaded_at_revision_with_token(self, downloads, tmp_path):
        assert modeling.resolve_adapter(REPO, revision="v1", token=FAKE_TOKEN) == str(tmp_path / "snapshot")
        assert downloads == [{"repo_id": REPO, "revision": "v1", "token": FAKE_TOKEN}]

    def test_token_falls_back_to_hf_token(self, downloads, monkeypatch):
        monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
        modeling.resolve_adapter(REPO)
        assert downloads == [{"repo_id": REPO, "revision": None, "token": FAKE_TOKEN}]

    def test_released_adapter_loads_by_repo_id(self, monkeypatch, release, tokenizer):
        """A release pulled by repo id (fake download = the release folder) loads into the base with peft."""
        from peft import PeftModel

        monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(release.folder))
        model = PeftModel.from_pretrained(fresh_base(tokenizer), modeling.resolve_adapter(REPO, revision="v1"))
        assert model.peft_config["default"].r == 4
