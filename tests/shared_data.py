"""Where the tests read the public benchmark files (layout: llm-adapters/dataset/..., extra/...): the first of
$LLM_ADAPTERS_TEST_DATASETS, ../shared/datasets beside the repository, and ../shared/datasets beside the repository
this one was cloned from (a clean clone made anywhere, as CI's, still finds them)."""
import os
import subprocess
from pathlib import Path

ENV_TEST_DATASETS = "LLM_ADAPTERS_TEST_DATASETS"
REPO = Path(__file__).resolve().parents[1]


def _origin() -> Path | None:
    """The local folder this clone came from, if it came from one."""
    try:
        url = subprocess.run(["git", "-C", str(REPO), "config", "--get", "remote.origin.url"],
                             capture_output=True, text=True, check=False).stdout.strip().removeprefix("file://")
    except OSError:  # no git
        return None
    path = Path(url) if url and "://" not in url else None
    return path if path and path.is_dir() else None


def _candidates() -> list[Path]:
    if os.environ.get(ENV_TEST_DATASETS):
        return [Path(os.environ[ENV_TEST_DATASETS])]
    origin = _origin()
    return [REPO.parent / "shared" / "datasets"] + ([origin.resolve().parent / "shared" / "datasets"] if origin else [])


CANDIDATES = _candidates()
SHARED_DATASETS = next((c for c in CANDIDATES if (c / "llm-adapters" / "dataset").is_dir()), CANDIDATES[0])
LLM_ADAPTERS_DATA = SHARED_DATASETS / "llm-adapters"


def missing_message() -> str | None:
    """Why the shared files cannot be used, or None when they are there."""
    if (LLM_ADAPTERS_DATA / "dataset").is_dir():
        return None
    return (f"the tests marked shared_data need the public benchmark files, and none of "
            f"{', '.join(str(c / 'llm-adapters' / 'dataset') for c in CANDIDATES)} exists: set "
            f"${ENV_TEST_DATASETS} to the folder that holds llm-adapters/dataset/ and extra/, "
            f"or deselect them with -m 'not shared_data'")
