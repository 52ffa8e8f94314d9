"""Where the tests read the public benchmark files: $LLM_ADAPTERS_TEST_DATASETS, else ../shared/datasets beside
the repository (its README describes the layout: llm-adapters/dataset/..., extra/...)."""
import os
from pathlib import Path

ENV_TEST_DATASETS = "LLM_ADAPTERS_TEST_DATASETS"
SHARED_DATASETS = Path(os.environ.get(ENV_TEST_DATASETS) or Path(__file__).resolve().parents[2] / "shared" / "datasets")
LLM_ADAPTERS_DATA = SHARED_DATASETS / "llm-adapters"


def missing_message() -> str | None:
    """Why the shared files cannot be used, or None when they are there."""
    if (LLM_ADAPTERS_DATA / "dataset").is_dir():
        return None
    return (f"the tests marked shared_data need the public benchmark files, and {LLM_ADAPTERS_DATA / 'dataset'} "
            f"does not exist: set ${ENV_TEST_DATASETS} to the folder that holds llm-adapters/dataset/ and extra/ "
            f"(now {SHARED_DATASETS}), or deselect them with -m 'not shared_data'")
