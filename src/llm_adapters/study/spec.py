"""A study: one YAML file that expands into runs (fine-tune one adapter, then evaluate it), each with a stable id.

    name: mini-rq1-placement
    base_model: smollm2-135m
    data: data/math-300.json           # a path, or {builder: math|commonsense|synthetic-arithmetic, ...options}
    finetune: {num_epochs: 1, batch_size: 16, micro_batch_size: 4}   # FinetuneConfig fields
    evaluate: {tasks: [gsm8k, svamp, mawps], limit: 40}               # EvalConfig fields
    adapter: {dropout: 0.0}            # optional: spec fields every run starts from
    grid:                              # the cartesian product (a list of mappings: the union of products)
      method: [lora, series, parallel] # any AdapterSpec or FinetuneConfig field may be an axis
      placement: [attn, mlp, attn+mlp]
      seed: [1, 2]
    overrides: {lora: {r: 32, alpha: 64}}   # per-method spec fields
    exclude: [{method: series, placement: attn}]
    in_distribution: [gsm8k]           # optional: the tasks that are in-distribution (RQ3 plots)
    baseline: true                     # optional (default true): also evaluate the base model alone, once
    power: {accuracy: 0.5, seed_sd: 0.02, correlation: 0.5}   # optional: `study plan`'s assumptions (below)
    hypotheses:                        # optional: the pre-registered contrasts, tested as confirmatory (below)
      - {name: H1, better: {method: lora}, worse: {method: prefix}}            # on the average column
      - {name: H2, better: {method: lora}, worse: base model, scope: boolq}   # on one task

A run's adapter spec is `adapter`, then the method's `overrides`, then the grid's spec values; its fine-tuning
settings are `finetune`, then the grid's finetune values. Its id hashes what decides its results within the
study: the fine-tuning settings, the base model, the spec's fields the method uses (placement resolved), and the
evaluation settings; the training data, the same for every run, is checked by content when a study folder is
opened (`StudySpec.fixed`). Two grid points that resolve to the same run are one run.

The `baseline` run is the base model evaluated once with the study's evaluation settings (its template: the
`evaluate` section's, else the `finetune` section's, which the adapters are trained and evaluated with); it is
stored and resumed like any run (`base-<id>`), and the report shows it as the first row.

`power` holds what `study plan` assumes to print the minimum detectable differences (`statistics.
minimum_detectable_difference`): `accuracy` (a number, or a mapping task -> number; default 0.5, where the
question noise is largest), `seed_sd` (the standard deviation of a configuration's accuracy over training seeds,
default 0.02) and `correlation` (of two configurations' per-question outcomes, default 0.5).

`hypotheses` are the contrasts a study is run to test, written before it runs: each names the configuration the
paper predicts `better` and the one it predicts `worse` (grid values that pick exactly one configuration, or
`base model`), optionally a `scope` (a task; default the average column), a `name` and a `source` (where the
prediction comes from). The report tests them as confirmatory, Holm-adjusted over them alone, and every other
comparison as exploratory. They enter no run id: they are about the report, not the runs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_adapters import config as configs
from llm_adapters.errors import UserError

KEYS = ("name", "description", "base_model", "data", "finetune", "evaluate", "adapter", "grid", "overrides",
        "exclude", "in_distribution", "resources", "baseline", "power", "hypotheses")
# `study plan`'s assumptions for the minimum detectable differences (the module docstring says what each means).
POWER_DEFAULTS = {"accuracy": 0.5, "seed_sd": 0.02, "correlation": 0.5}
# Set by the study for every run: not for `finetune` / `evaluate` sections or grid axes.
_FINETUNE_SET = ("data", "base_model", "adapter", "output_dir", "overwrite", "progress")
_EVALUATE_SET = ("base_model", "adapter", "output_dir", "overwrite", "progress")
# Ids grow with the study; short enough to read beside a name, long enough not to collide in a grid.
ID_LENGTH = 10
_SHORT = {"seed": "s", "r": "r", "alpha": "a", "bottleneck_size": "bn", "num_virtual_tokens": "vt",
          "learning_rate": "lr", "num_epochs": "ep"}


@dataclass(frozen=True)
class Run:
    """One grid point: an adapter spec, its fine-tuning settings and the evaluation settings."""

    id: str
    name: str
    values: dict[str, Any]  # the grid values of this run, by axis
    spec: Any  # AdapterSpec
    finetune: dict[str, Any]  # FinetuneConfig fields, without data, base_model, adapter, output_dir
    evaluate: dict[str, Any]  # EvalConfig fields, without base_model, adapter, output_dir

    @property
    def is_baseline(self) -> bool:
        """The base model alone (no adapter, no fine-tuning)."""
        return self.spec is None

    @property
    def configuration(self) -> str:
        """The configuration this run is a seed of (`configuration_key`)."""
        return BASELINE if self.is_baseline else configuration_key(self.values)

    @property
    def folder_name(self) -> str:
        return re.sub(r"[^A-Za-z0-9.+_-]+", "-", f"{self.name}-{self.id}")


@dataclass(frozen=True)
class StudySpec:
    """A study spec, validated (see the module docstring for the keys)."""

    name: str
    base_model: str
    data: str | dict
    grid: tuple[dict[str, tuple], ...]
    finetune: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)
    adapter: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    exclude: tuple[dict[str, Any], ...] = ()
    in_distribution: tuple[str, ...] = ()
    resources: dict[str, Any] = field(default_factory=dict)
    baseline: bool = True
    power: dict[str, Any] = field(default_factory=dict)  # plan's assumptions, over POWER_DEFAULTS
    hypotheses: tuple[dict[str, Any], ...] = ()  # pre-registered contrasts: the report's confirmatory tests
    description: str = ""
    source: str = ""  # the file it was read from

    def fixed(self) -> dict[str, Any]:
        """What every run shares and its id depends on: a study folder refuses a spec whose fixed part changed
        (growing the grid is allowed)."""
        return {"base_model": _base(self.base_model), "data": data_identity(self.data, self.source),
                "finetune": self.finetune, "evaluate": self.evaluate, "adapter": self.adapter,
                "overrides": self.overrides}

    def assumptions(self) -> dict[str, Any]:
        """`study plan`'s assumptions: POWER_DEFAULTS with the spec's `power` on top."""
        return {**POWER_DEFAULTS, **self.power}

    def axes(self) -> list[str]:
        """Every grid axis, in the order the spec names them."""
        return list(dict.fromkeys(axis for product in self.grid for axis in product))

    def data_path(self) -> Path | None:
        """The training data file of a `data: path` spec (relative paths: to the spec file's folder, else the
        working directory); None for a builder."""
        if isinstance(self.data, dict):
            return None
        path = Path(self.data).expanduser()
        if not path.is_absolute() and self.source and not path.exists():
            beside = Path(self.source).parent / path
            if beside.exists():
                return beside
        return path


def data_identity(data: str | dict, source: str = "") -> dict[str, Any]:
    """Training data by content: a file's sha256, or a builder and its (deterministic) options."""
    from llm_adapters.files import sha256_path

    if isinstance(data, dict):
        return {"builder": data["builder"], "options": _builder_options(data)}
    path = StudySpec("", "", data, (), source=source).data_path()
    if not path.exists():
        raise UserError(f"study data {data!r}: no such file ({path}); build it first (llm-adapters data build) or "
                        "give {builder: ...}")
    return {"sha256": sha256_path(path)}


def _builder_options(data: dict) -> dict[str, Any]:
    from llm_adapters.data.builders import BUILDERS

    builder = BUILDERS[data["builder"]]
    options = {k: v for k, v in data.items() if k != "builder"}
    return configs.to_dict(configs.build(builder.options, options, label=f"study data ({data['builder']})"))


def load_study(path: str | Path) -> StudySpec:
    """Read and validate a study spec; every problem in one error.

    Raises:
        MissingInputError: no such file.
        UserError: unknown keys, bad sections or axes, a grid point that is not a valid run (named).
    """
    values = configs.read_yaml(path)
    return build_study(values, source=str(path))


def build_study(values: dict[str, Any], source: str = "") -> StudySpec:
    from llm_adapters.eval.config import EvalConfig
    from llm_adapters.methods import get_method
    from llm_adapters.methods.spec import AdapterSpec
    from llm_adapters.train.config import FinetuneConfig

    where = f"{source}: " if source else ""
    problems = [f"unknown key {key!r}; accepted: {', '.join(KEYS)}" for key in values if key not in KEYS]
    for key in ("name", "base_model", "data", "grid"):
        if key not in values:
            problems.append(f"{key} is required")
    spec_fields = {f.name for f in dataclasses.fields(AdapterSpec)}
    finetune_fields = set(configs.fields(FinetuneConfig)) - set(_FINETUNE_SET)
    evaluate_fields = set(configs.fields(EvalConfig)) - set(_EVALUATE_SET)
    for section, accepted in (("finetune", finetune_fields), ("evaluate", evaluate_fields),
                              ("adapter", spec_fields | {"preset"})):
        value = values.get(section, {}) or {}
        if not isinstance(value, dict):
            problems.append(f"{section} must be a mapping of fields, got {value!r}")
            continue
        problems += [f"{section}.{key}: not a field here; accepted: {', '.join(sorted(accepted))}"
                     for key in value if key not in accepted]
    data = values.get("data")
    if isinstance(data, dict):
        from llm_adapters.data.builders import BUILDERS

        if data.get("builder") not in BUILDERS:
            problems.append(f"data.builder {data.get('builder')!r} is not one of {', '.join(BUILDERS)}")
        else:
            try:
                _builder_options(data)
            except UserError as error:
                problems.append(str(error))
    elif data is not None and not isinstance(data, str):
        problems.append(f"data must be a path or {{builder: ..., options...}}, got {data!r}")
    grid = values.get("grid")
    products = [grid] if isinstance(grid, dict) else grid if isinstance(grid, list) else None
    if grid is not None and (products is None or not all(isinstance(p, dict) for p in products)):
        problems.append("grid must be a mapping of axis -> list of values, or a list of such mappings")
        products = []
    axes_ok = spec_fields | finetune_fields
    for product in products or []:
        for axis, axis_values in product.items():
            if axis not in axes_ok:
                problems.append(f"grid axis {axis!r} is not an adapter spec or finetune field")
            if not isinstance(axis_values, list) or not axis_values:
                problems.append(f"grid axis {axis!r} must be a non-empty list, got {axis_values!r}")
    overrides = values.get("overrides", {}) or {}
    for method, fields_ in overrides.items() if isinstance(overrides, dict) else []:
        try:
            get_method(method)
        except UserError as error:
            problems.append(f"overrides.{method}: {error}")
        if not isinstance(fields_, dict):
            problems.append(f"overrides.{method} must be a mapping of spec fields, got {fields_!r}")
            continue
        problems += [f"overrides.{method}.{key}: not an adapter spec field" for key in fields_
                     if key not in spec_fields | {"preset"}]
    exclude = values.get("exclude", []) or []
    all_axes = {axis for product in products or [] for axis in product}
    for entry in exclude if isinstance(exclude, list) else [exclude]:
        if not isinstance(entry, dict) or not set(entry) <= all_axes:
            problems.append(f"exclude entry {entry!r}: a mapping of grid axes ({', '.join(sorted(all_axes))})")
    problems += _resources_problems(values.get("resources") or {})
    if not isinstance(values.get("hypotheses") or [], list):
        problems.append(f"hypotheses must be a list of {{name, better, worse, scope, source}} mappings, got "
                        f"{values['hypotheses']!r}")
        values = {**values, "hypotheses": []}
    baseline = values.get("baseline", True)
    if not isinstance(baseline, bool):
        problems.append(f"baseline must be true or false, got {baseline!r}")
    problems += _power_problems(values.get("power") or {})
    if problems:
        raise UserError(f"invalid study spec: {where}" + "; ".join(problems))
    study = StudySpec(
        name=str(values["name"]), base_model=str(values["base_model"]), data=data,
        grid=tuple({axis: tuple(v) for axis, v in product.items()} for product in products),
        finetune=dict(values.get("finetune") or {}), evaluate=dict(values.get("evaluate") or {}),
        adapter=dict(values.get("adapter") or {}), overrides={k: dict(v) for k, v in overrides.items()},
        exclude=tuple(exclude), in_distribution=tuple(values.get("in_distribution") or ()),
        resources=dict(values.get("resources") or {}), baseline=baseline, power=dict(values.get("power") or {}),
        hypotheses=tuple(values.get("hypotheses") or ()), description=str(values.get("description", "")),
        source=source)
    runs = expand(study)  # every grid point must be a valid run: reported now, not after hours of the others
    problems = _hypotheses_problems(study, runs)
    if problems:
        raise UserError(f"invalid study spec: {where}" + "; ".join(problems))
    return study


HYPOTHESIS_KEYS = ("name", "better", "worse", "scope", "source")


def hypothesis_configuration(selector: Any, runs: list["Run"]) -> str | None:
    """The configuration key a hypothesis' `better` or `worse` picks: `base model`, or the one configuration
    whose grid values include the selector's; None if none or several do."""
    if selector in (BASELINE, "base"):
        return BASELINE if any(run.is_baseline for run in runs) else None
    if not isinstance(selector, dict):
        return None
    keys = {configuration_key(run.values) for run in runs if not run.is_baseline
            and all(_same_value(run.values.get(axis), value) for axis, value in selector.items())}
    return keys.pop() if len(keys) == 1 else None


def _same_value(have: Any, want: Any) -> bool:
    if isinstance(have, (int, float)) and isinstance(want, str):  # YAML reads 1e-3 (no dot) as a string
        try:
            want = float(want)
        except ValueError:
            return False
    if isinstance(have, (int, float)) and isinstance(want, (int, float)) and not isinstance(want, bool):
        return math.isclose(have, want, rel_tol=1e-12)
    return have == want or (isinstance(have, (list, tuple)) and list(have) == want)


def _hypotheses_problems(study: StudySpec, runs: list["Run"]) -> list[str]:
    tasks = set(configs.build(_eval_config_class(), study.evaluate, label="study evaluate").tasks)
    problems = []
    for number, entry in enumerate(study.hypotheses, start=1):
        where = f"hypotheses[{number}]"
        if not isinstance(entry, dict):
            problems.append(f"{where} must be a mapping of {', '.join(HYPOTHESIS_KEYS)}, got {entry!r}")
            continue
        problems += [f"{where}.{key}: unknown; accepted: {', '.join(HYPOTHESIS_KEYS)}" for key in entry
                     if key not in HYPOTHESIS_KEYS]
        picked = []
        for side in ("better", "worse"):
            if side not in entry:
                problems.append(f"{where}.{side} is required (grid values, or 'base model')")
            elif isinstance(entry[side], dict) and "seed" in entry[side]:
                problems.append(f"{where}.{side} names a seed: a configuration is its seeds together (leave seed out)")
            elif (found := hypothesis_configuration(entry[side], runs)) is not None:
                picked.append(found)
            else:
                problems.append(f"{where}.{side} {entry[side]!r} does not pick exactly one configuration of the "
                                "grid (give more grid values), or names the base model with baseline: false")
        if len(picked) == 2 and picked[0] == picked[1]:
            problems.append(f"{where}: better and worse pick the same configuration ({picked[0]})")
        scope = entry.get("scope", "average")
        if scope != "average" and scope not in _task_names(tasks):
            problems.append(f"{where}.scope {scope!r} is not 'average' or one of the study's tasks")
    return problems


def _eval_config_class() -> type:
    from llm_adapters.eval.config import EvalConfig

    return EvalConfig


def _task_names(tasks: set[str]) -> set[str]:
    from llm_adapters.data.tasks import resolve_tasks

    return {task.name for task in resolve_tasks(sorted(tasks))}


def _resources_problems(resources: Any) -> list[str]:
    """What is wrong with a spec's `resources` (each run's Ray task): cpus > 0, 0 <= gpus <= 1 (one process
    a run; fractions share a GPU)."""
    if not isinstance(resources, dict):
        return [f"resources must be a mapping such as {{gpus: 1, cpus: 8}}, got {resources!r}"]
    problems = [f"resources.{key}: unknown; accepted: cpus, gpus" for key in resources if key not in ("cpus", "gpus")]
    for key, low in (("cpus", 0), ("gpus", 0)):
        value = resources.get(key)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                  or not math.isfinite(value) or value < low or (key == "cpus" and value == 0)):
            problems.append(f"resources.{key} must be a number {'> 0' if key == 'cpus' else '>= 0'}, got {value!r}")
        elif key == "gpus" and value is not None and value > 1:
            problems.append(f"resources.gpus {value!r}: a study run is one process on one GPU, so more would sit "
                            "idle; accepted: 0 to 1 (a fraction shares a GPU between runs)")
    return problems


def _power_problems(power: Any) -> list[str]:
    """What is wrong with a spec's `power` section (accuracy in (0, 1), or a mapping task -> such a number;
    seed_sd >= 0; correlation in [-1, 1])."""
    if not isinstance(power, dict):
        return [f"power must be a mapping ({', '.join(POWER_DEFAULTS)}), got {power!r}"]
    problems = [f"power.{key}: unknown; accepted: {', '.join(POWER_DEFAULTS)}" for key in power
                if key not in POWER_DEFAULTS]

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    accuracy = power.get("accuracy", POWER_DEFAULTS["accuracy"])
    for task, value in accuracy.items() if isinstance(accuracy, dict) else [(None, accuracy)]:
        if not number(value) or not 0 < value < 1:
            where = "power.accuracy" + (f".{task}" if task is not None else "")
            problems.append(f"{where} must be a number in (0, 1) (or a mapping task -> such a number), "
                            f"got {value!r}")
    seed_sd = power.get("seed_sd", POWER_DEFAULTS["seed_sd"])
    if not number(seed_sd) or seed_sd < 0:
        problems.append(f"power.seed_sd must be a number >= 0 (an accuracy's sd over seeds, 0.02 = 2 points), "
                        f"got {seed_sd!r}")
    correlation = power.get("correlation", POWER_DEFAULTS["correlation"])
    if not number(correlation) or not -1 <= correlation <= 1:
        problems.append(f"power.correlation must be a number in [-1, 1], got {correlation!r}")
    return problems


# The configuration of the baseline run (the base model alone): the first row of a report.
BASELINE = "base model"


def configuration_key(values: dict[str, Any]) -> str:
    """The configuration a run is a seed of: its grid values but the seed, with their axis names
    (`method=lora,r=8`), so two grid points that print alike (`r: 8` and `alpha: 8`) stay two configurations."""
    parts = [f"{axis}={_text(value)}" for axis, value in values.items() if axis != "seed"]
    return ",".join(parts) or "(no grid values)"


def _text(value: Any) -> str:
    return "+".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def baseline_run(study: StudySpec) -> Run:
    """The base model evaluated alone with the study's evaluation settings, its id a hash of the base model and
    those settings (template: `evaluate`'s, else `finetune`'s, else the fine-tuning default)."""
    from llm_adapters.train.config import FinetuneConfig

    evaluate = dict(study.evaluate)
    template_default = next(f.default for f in dataclasses.fields(FinetuneConfig) if f.name == "template")
    evaluate.setdefault("template", study.finetune.get("template", template_default))
    identity = {"baseline": True, "evaluate": _eval_identity(evaluate), "base_model": _base(study.base_model)}
    run_id = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:ID_LENGTH]
    return Run(run_id, "base", {}, None, {}, evaluate)


def _eval_identity(evaluate: dict[str, Any]) -> dict[str, Any]:
    """The evaluation settings a run's results depend on, with the precision they resolve to on this machine
    (`models.planned_precision`: `bfloat16` is bf16 products on a CPU with bf16 units, bf16 throughout elsewhere;
    `auto` is bf16 on a GPU), so that shards run on different machines are different runs, not one mixed."""
    from llm_adapters.eval.config import EvalConfig
    from llm_adapters.models import planned_precision

    settings = configs.build(EvalConfig, evaluate, label="study evaluate").to_dict()
    identity = {k: settings[k] for k in ("tasks", "limit", "template", "protocol", "scoring", "rules",
                                         "max_new_tokens", "loglik_split")}
    return {**identity, "precision": planned_precision(settings["device"], settings["dtype"])}


def _base(name_or_path: str) -> dict[str, Any]:
    """The base model by content (`models.base_identity`): a run's id does not change when its base folder moves."""
    from llm_adapters.models import base_identity

    return base_identity(name_or_path)


def expand(study: StudySpec) -> list[Run]:
    """The study's runs: the baseline run first (unless `baseline: false`), then the grid's runs in grid order,
    without exclusions and duplicates.

    Raises:
        UserError: a grid point that is not a valid run (its adapter spec or fine-tuning settings), named.
    """
    from llm_adapters.methods.spec import AdapterSpec, make_spec
    from llm_adapters.train.config import FinetuneConfig

    spec_fields = {f.name for f in dataclasses.fields(AdapterSpec)}
    eval_identity = _eval_identity(study.evaluate)
    runs: dict[str, Run] = {}
    if study.baseline:
        base = baseline_run(study)
        runs[base.id] = base
    problems = []
    for product in study.grid:
        axes = list(product)
        for combination in itertools.product(*(product[a] for a in axes)):
            values = dict(zip(axes, combination))
            if any(all(values.get(k) == v for k, v in entry.items()) for entry in study.exclude):
                continue
            name = _name(values)
            method = values.get("method", study.adapter.get("method"))
            spec_values = {**study.adapter, **study.overrides.get(method, {}),
                           **{k: v for k, v in values.items() if k in spec_fields}}
            finetune = {**study.finetune, **{k: v for k, v in values.items() if k not in spec_fields}}
            preset = spec_values.pop("preset", None)
            try:
                spec = make_spec(preset, **{k: configs.coerce(AdapterSpec, k, v) for k, v in spec_values.items()})
                config = configs.build(FinetuneConfig, {**finetune, "data": "<study data>", "output_dir": "<run>",
                                                        "base_model": study.base_model, "adapter": spec.to_dict()},
                                       label="finetune settings")
            except UserError as error:
                problems.append(f"run {name}: {error}")
                continue
            settings = {**config.identity(), **config.planned_machine()}  # the precision it trains in here
            settings.pop("adapter")  # as `_spec_identity`: only the fields the method uses
            # The data is not in the id: it is the same for every run of a study, and a study folder refuses
            # other data by content (`fixed`), so a spec whose data file is not here yet still plans.
            identity = {"finetune": settings, "adapter": _spec_identity(spec), "evaluate": eval_identity,
                        "base_model": _base(study.base_model)}
            text = json.dumps(identity, sort_keys=True, default=str)
            run_id = hashlib.sha256(text.encode()).hexdigest()[:ID_LENGTH]
            runs.setdefault(run_id, Run(run_id, name, values, spec, finetune, dict(study.evaluate)))
    if problems:
        raise UserError(f"invalid study spec: {study.source + ': ' if study.source else ''}" + "; ".join(problems))
    return list(runs.values())


def _spec_identity(spec: Any) -> dict[str, Any]:
    """The spec fields that decide the adapter: the method's own, with the placement resolved (`default` and the
    method's default placement are the same run)."""
    method = spec.method_record
    identity = {"method": spec.method}
    for name in method.uses:
        value = spec.resolved_placement if name == "placement" else getattr(spec, name)
        identity[name] = list(value) if isinstance(value, tuple) else value
    return identity


def _name(values: dict[str, Any]) -> str:
    """A readable run name from its grid values: lora-attn-s1, series-bn64-s2, lora-r16-lr0.0003-s1."""
    parts = []
    for axis, value in values.items():
        if axis in ("method", "placement"):
            parts.append(str(value).replace("peft:", "") if not isinstance(value, list) else ",".join(value))
        else:
            parts.append(f"{_SHORT.get(axis, axis)}{value}")
    ordered = sorted(parts, key=lambda p: p.startswith("s") and p[1:].isdigit())  # the seed last
    return "-".join(ordered) or "run"


def shard(runs: list[Run], shard_spec: str | None) -> list[Run]:
    """The runs of shard `i/n` (1-based): those whose id falls to it, so a shard keeps its runs when the grid
    grows. None: all runs.

    Raises:
        UserError: not of the form i/n with 1 <= i <= n.
    """
    if shard_spec is None:
        return runs
    match = re.fullmatch(r"(\d+)/(\d+)", shard_spec.strip())
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise UserError(f"--shard {shard_spec!r}: give i/n with 1 <= i <= n, e.g. 1/4")
    i, n = int(match.group(1)), int(match.group(2))
    return [run for run in runs if int(run.id, 16) % n == i - 1]
