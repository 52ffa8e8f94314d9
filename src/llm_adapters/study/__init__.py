"""Studies: a grid of fine-tune + evaluate runs from one spec file (spec.py), run into a resumable, shardable store
(runner.py, store.py), reported with honest error bars and paired tests (report.py)."""
from __future__ import annotations

from llm_adapters.study.report import write_report
from llm_adapters.study.runner import plan, run_study
from llm_adapters.study.spec import Run, StudySpec, build_study, expand, load_study, shard

__all__ = ["Run", "StudySpec", "build_study", "expand", "load_study", "plan", "run_study", "write_report", "shard"]
