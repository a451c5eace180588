"""Release a training run: release folder + zip with a generated model card, pushed to a PRIVATE Hub repo.

    # build and inspect the release only (no token needed, nothing uploaded)
    python train/push_adapter.py --run_dir runs/smollm2-demo --repo_id demo-user/alpacare-smollm2 \
        --dry-run --out runs/smollm2-demo-release

    # push (token from HF_TOKEN or `hf auth login`; refuses a repo that exists and is public)
    python train/push_adapter.py --run_dir runs/smollm2-demo --repo_id demo-user/alpacare-smollm2 \
        --review_report reviews/report.json --revision v1

Download it again with ``hf download demo-user/alpacare-smollm2 --local-dir adapters/alpacare-smollm2`` or serve it
directly with ``python app.py --adapter demo-user/alpacare-smollm2``. Logic lives in ``alpacare/hub.py`` and
``model_card/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# model_card/ sits beside alpacare/ at the project root, which is not on sys.path when this file runs as a script.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from alpacare.hub import (  # noqa: E402
    ReleaseError,
    build_release,
    check_repo_id,
    check_run_dir,
    default_out_dir,
    get_hub_token,
    push_release,
    redact,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (there is deliberately no --token: it would land in the shell history)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run_dir", required=True, help="training run folder (train/train_lora.py --output_dir)")
    parser.add_argument("--repo_id", required=True, help="USER/NAME of the private model repo")
    parser.add_argument("--revision", default=None, help="branch to push to (created if missing; default main)")
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true", help="build only, no upload")
    parser.add_argument("--out", default=None, help="release folder (default <run_dir>-release); zip beside it")
    parser.add_argument("--review_report", default=None, help="JSON of `python -m alpacare.review report --json`")
    parser.add_argument("--commit_message", default=None)
    return parser.parse_args(argv)


def render_card(run: Path, repo_id: str, revision: str | None, review_report: str | None) -> str:
    """The model card of the run (the review report's results included when given)."""
    from model_card import load_run_info, render_model_card

    if review_report is not None and not Path(review_report).is_file():
        raise ReleaseError(f"Review report not found: {review_report}")
    try:
        fields = load_run_info(run, review_report)
    except (OSError, ValueError) as e:  # unreadable, or malformed JSON / YAML (both raise ValueError subclasses)
        raise ReleaseError(f"Cannot read the run's files: {e}") from None
    return render_model_card(repo_id=repo_id, revision=revision, **fields)


def main(argv: list[str] | None = None) -> int:
    """Build the release, then (unless --dry-run) push it; returns the exit code."""
    args = parse_args(argv)
    token = None
    try:
        repo_id = check_repo_id(args.repo_id)
        run = check_run_dir(args.run_dir)
        if not args.dry_run:
            token = get_hub_token()  # fail before building when not logged in
        card = render_card(run, repo_id, args.revision, args.review_report)
        release = build_release(run, card, args.out or default_out_dir(run))
        print(f"Release folder: {release.folder}\nZip: {release.zip_path}\nFiles: {', '.join(release.files)}")
        if args.dry_run:
            print(f"Dry run: nothing uploaded (would push to private repo {repo_id}@{args.revision or 'main'}).")
            return 0
        url = push_release(
            release.folder, repo_id, revision=args.revision, commit_message=args.commit_message, token=token
        )
    except ReleaseError as e:
        print(f"error: {redact(e, token)}", file=sys.stderr)
        return 1
    print(f"Pushed to private repo {repo_id}@{args.revision or 'main'}: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
