"""Deploy the app to a Hugging Face Space through the Hub's upload API (never a plain ``git push``).

    python scripts/deploy_space.py OWNER/NAME --dry-run   # one "path<TAB>bytes" line per file, nothing sent
    python scripts/deploy_space.py OWNER/NAME             # create the Space (Gradio SDK) if missing, upload

The Hub refuses a ``git push`` of binary files or files over 10 MiB that are not stored through Xet/LFS,
and the embedded set is a 22 MB safetensors file beside JPEG examples. ``HfApi.upload_folder`` sends
such files through the Hub's own large-file storage, so nothing in this repository needs LFS set up.

What goes up (:data:`SPACE_FILES`, intersected with the files git tracks, so outputs, runs and anything
untracked never leave the machine): the app, the two packages, the embedded CamVid set and the report
its curves come from, the example images, ``requirements.txt``, README (the Space's front matter) with
its picture and docs, and the licence. Tests, benchmarks, scripts and datasets stay behind. Files on
the Space that are not in the set are deleted in the same commit, so the Space mirrors the set.

Before anything is sent, README's front matter is checked against ``requirements.txt``
(:func:`front_matter_problems`); the token is huggingface_hub's (``hf auth login`` or ``HF_TOKEN``).
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SPACE_FILES: tuple[str, ...] = (
    "README.md",
    "LICENSE",
    "app.py",
    "requirements.txt",
    "structtoken/**.py",  # ** crosses folders: subpackages are in
    "structtoken/resources/*.json",
    "analysis/**.py",
    "assets/camvid/*.safetensors",
    "assets/camvid/*.json",
    "assets/camvid/report/metrics.json",
    "assets/examples/*.jpg",
    "assets/examples/README.md",
    "docs/*.md",
    "docs/img/*.png",
)
"""fnmatch patterns (on POSIX paths relative to the checkout) of what the Space gets: ``*`` stays within a folder,
``**`` crosses folders (:func:`_matches`)."""


def tracked_files(root: Path = ROOT) -> list[str]:
    """The checkout's files as POSIX paths: what git tracks, or every file when ``root`` is no git checkout."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True, text=True, timeout=60
        ).stdout
        return sorted(p for p in out.split("\0") if p and (root / p).is_file())
    except (OSError, subprocess.CalledProcessError):
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and ".git" not in p.parts)


def _matches(path: str, pattern: str) -> bool:
    """fnmatch within one folder level: ``*`` does not cross ``/`` (``assets/camvid/*.safetensors`` is the set,
    not ``assets/camvid/v2/heads/*``), ``**`` does."""
    if "**" in pattern:
        return fnmatch.fnmatchcase(path, pattern)
    return path.count("/") == pattern.count("/") and fnmatch.fnmatchcase(path, pattern)


def space_files(root: Path = ROOT) -> list[tuple[str, int]]:
    """``(path, bytes)`` of every file the Space gets, sorted by path."""
    keep = [
        p
        for p in tracked_files(root)
        if any(_matches(p, pat) for pat in SPACE_FILES) and "__pycache__" not in p.split("/")
    ]
    return [(p, (root / p).stat().st_size) for p in keep]


# ------------------------------------------------------------------------------------ front matter
def front_matter(readme: str) -> dict[str, str]:
    """The ``key: value`` lines between README's opening ``---`` lines (values unquoted), as strings."""
    lines = readme.splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    out: dict[str, str] = {}
    for line in lines[1:]:
        if line.strip() == "---":
            return out
        key, sep, value = line.partition(":")
        if sep and not line.startswith((" ", "#")):
            out[key.strip()] = value.strip()
    return {}  # never closed


def pinned(requirements: str, name: str) -> str | None:
    """The ``==`` version of ``name`` in a requirements file, or None."""
    for line in requirements.splitlines():
        m = re.match(rf"^\s*{re.escape(name)}\s*==\s*([^\s;#]+)", line, flags=re.IGNORECASE)
        if m:
            return m.group(1)
    return None


def _min_python(pyproject: str) -> tuple[int, int] | None:
    m = re.search(r'^requires-python\s*=\s*">=\s*(\d+)\.(\d+)', pyproject, flags=re.MULTILINE)
    return (int(m.group(1)), int(m.group(2))) if m else None


def front_matter_problems(root: Path = ROOT) -> list[str]:
    """What in README's front matter disagrees with the repository (empty: deployable).

    ``sdk: gradio`` with ``sdk_version`` equal to the ``gradio==`` pin of ``requirements.txt`` (the Space
    installs that Gradio itself, before the requirements); ``python_version`` quoted (YAML reads 3.10
    as 3.1) and at least pyproject's ``requires-python``; ``app_file`` present.
    """
    readme = (root / "README.md").read_text(encoding="utf-8")
    meta = front_matter(readme)
    if not meta:
        return ["README.md has no front matter (--- key: value ... ---) at its top"]
    problems = []
    if meta.get("sdk") != "gradio":
        problems.append(f"sdk is {meta.get('sdk')!r}, expected 'gradio'")
    pin = pinned((root / "requirements.txt").read_text(encoding="utf-8"), "gradio")
    if pin is None:
        problems.append("requirements.txt pins no gradio==VERSION")
    elif meta.get("sdk_version") != pin:
        problems.append(f"sdk_version {meta.get('sdk_version')!r} differs from requirements.txt's gradio=={pin}")
    raw = meta.get("python_version", "")
    version = raw.strip("\"'")
    if not re.fullmatch(r"3\.\d+", version) or raw == version:
        problems.append(f'python_version {raw!r}: expected a quoted major.minor such as "3.11"')
    else:
        least = _min_python((root / "pyproject.toml").read_text(encoding="utf-8"))
        if least and tuple(int(x) for x in version.split(".")) < least:
            problems.append(f"python_version {version} is below requires-python >={least[0]}.{least[1]}")
    app_file = meta.get("app_file", "")
    if not app_file or not (root / app_file).is_file():
        problems.append(f"app_file {app_file!r} is not a file of the repository")
    return problems


# ------------------------------------------------------------------------------------------ deploy
def deploy(repo_id: str, root: Path = ROOT, private: bool = False, token: str | None = None) -> str:
    """Create the Space if missing and upload :func:`space_files` in one commit; returns the Space's URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    files = [p for p, _ in space_files(root)]
    api.upload_folder(
        repo_id=repo_id,
        repo_type="space",
        folder_path=root,
        allow_patterns=files,  # exact paths: fnmatch patterns without wildcards
        delete_patterns=["*"],  # remote files not uploaded now (the Hub keeps .gitattributes)
        commit_message="Deploy StructToken Explorer (scripts/deploy_space.py)",
    )
    return str(url)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/deploy_space.py", description=__doc__.split("\n\n")[0])
    p.add_argument("repo_id", metavar="OWNER/NAME", help="the Space, e.g. alice/structtoken-explorer")
    p.add_argument("--dry-run", action="store_true", help="print 'path<TAB>bytes' per file; send nothing")
    p.add_argument("--private", action="store_true", help="create the Space private (when it does not exist)")
    args = p.parse_args(argv)
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", args.repo_id):
        p.error(f"expected OWNER/NAME, got {args.repo_id!r}")
    problems = front_matter_problems()
    if problems:
        print("error: README front matter:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    files = space_files()
    if args.dry_run:
        for path, size in files:
            print(f"{path}\t{size}")
        total = sum(s for _, s in files)
        summary = f"{len(files)} files, {total / 2**20:.1f} MiB for {args.repo_id} (dry run: nothing sent)"
        print(summary, file=sys.stderr)
        return 0
    url = deploy(args.repo_id, private=args.private, token=os.environ.get("HF_TOKEN"))
    print(f"uploaded {len(files)} files to {url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
