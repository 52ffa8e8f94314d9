"""Studies: a grid of fine-tune + evaluate runs from one spec file (spec.py), run into a resumable, shardable store
(runner.py, store.py), read back per question (records.py), reported with intervals, paired differences and
Holm's correction (statistics.py: the numbers; report.py: tables and sentences; html.py: the page)."""
from __future__ import annotations

from llm_adapters.study.records import load_study_records
from llm_adapters.study.report import write_report
from llm_adapters.study.runner import plan, run_study
from llm_adapters.study.spec import Run, StudySpec, build_study, expand, load_study, shard

__all__ = ["Run", "StudySpec", "build_study", "expand", "load_study", "load_study_records", "plan", "run_study",
           "write_report", "shard"]
