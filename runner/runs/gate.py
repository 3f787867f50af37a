"""The spend gate: the job a run may submit, derived from the recipe at the run's commit and its plan and
checked against the record; anything that disagrees is refused with the numbers, before any request."""

from __future__ import annotations

from runner.backends.base import Backend
from runner.gitrepo import git_commit
from runner.jobspec import (
    GgufJobConfig,
    JobConfig,
    JobConfigs,
    JobSpec,
    bundle_dir,
    gguf_config,
    shipped_files,
    train_config,
)
from runner.ledger import RunRecord
from runner.plan import Plan
from runner.recipe import LoadedRecipe
from runner.revisions import consistent
from runner.runs.step import (
    LOCAL_GGUF_TIMEOUT,
    SpendRefused,
    Step,
    _labels,
    _local_gguf_places,
    _places,
    trial_branch_of,
    recipe_version,
    sha256_file,
)


def check_spend(plan: Plan, backend: Backend, display: str) -> None:
    """The spend gate for one run: money is spent only on a plan the gate accepts."""
    if not backend.bills:
        return  # this machine's time: nothing is billed
    if not plan.fits or not plan.jobs:
        raise SpendRefused(f"{display}: no Hugging Face Jobs flavor fits this run (see `runner plan`); "
                           "nothing submitted")
    if plan.refusal:
        raise SpendRefused(f"{display}: {plan.refusal}; nothing submitted")


def _fix_configs(step: Step, record: RunRecord) -> None:
    """Fix every job's config at the start: later steps read these, whatever the recipe file says by then."""
    record.configs = JobConfigs(train=_derived_config(step, record, "train"))
    assert step.loaded is not None
    if step.loaded.recipe.gguf.enabled:
        record.configs = JobConfigs(train=record.configs.train, gguf=_derived_config(step, record, "gguf"))


def _derived_config(step: Step, record: RunRecord, stage: str) -> JobConfig:
    """The job's config as the runner's code derives it from the recipe and its plan (never from the record)."""
    loaded, plan = step.loaded, step.plan
    assert loaded is not None and plan is not None
    # The commits the run resolved when it started: a record may name only commits of the recipe's own
    # Hub inputs (exactly the one a recipe pins), never a revision for a local input.
    if problem := consistent(loaded, record.revisions):
        raise SpendRefused(f"run {record.run_id} ({record.recipe}): the record {problem}; not submitting")
    if stage == "train":
        # record.version is the recipe's own here: fixed from it at the start, checked against it before submitting.
        branch = trial_branch_of(step.trial, record.version)
        places = _places(step.backend, loaded, record.run_id, step.hub_dir, branch)
        return train_config(loaded, plan, record.run_id, places, push=record.push, resume=record.resume,
                            resolved=record.revisions, branch=branch if step.backend.branches else None)
    places = _places(step.backend, loaded, record.run_id, None) if record.push else _local_gguf_places(record)
    return gguf_config(loaded, places, record.run_id, adapter=plan.lora, push=record.push, resolved=record.revisions)


def authorize(step: Step, record: RunRecord, stage: str) -> JobSpec:
    """The job to submit: the config the run fixed at its start; on the Hub also derived again from the
    recipe and re-checked by the spend gate, and refused where the record disagrees.

    Run records are data any merged pull request can edit: they may say what a run was, never what
    is submitted next on the Hub. So there the version, the output repo, the job config and the planned
    flavor and timeout must all equal what the recipe at the run's commit gives, or nothing is submitted.
    """
    where = f"run {record.run_id} ({record.recipe})"
    fixed = getattr(record.configs, stage)
    if fixed is None:
        raise SpendRefused(f"{where}: the run fixed no {stage} job config when it started; not submitting one")
    fixed = _with_trained_revision(record, fixed)
    if record.push != step.backend.bills:  # the record's word against the engine's
        raise SpendRefused(f"{where}: the record says push={record.push} but runs on the {step.backend.name} "
                           f"backend; not submitting the {stage} job")
    if not step.backend.bills:  # this machine's time: nothing is billed, and the record is its own
        timeout = (record.plan.timeout_seconds if record.plan else None) if stage == "train" else LOCAL_GGUF_TIMEOUT
        return JobSpec(script=stage, config=fixed, labels=_labels(record, step.name, stage),
                       timeout_seconds=timeout, processes=record.processes if stage == "train" else 1)
    loaded, plan = step.loaded, step.plan
    if loaded is None or plan is None:
        raise SpendRefused(f"{where}: no plan derived from the recipe; not submitting the {stage} job from a record")
    check_spend(plan, step.backend, where)
    version = recipe_version(loaded, record.revisions)
    if record.version not in (version, recipe_version(loaded)):  # or as versioned before named refs' commits counted
        raise SpendRefused(f"{where}: the record says version {record.version or '(none)'}, the recipe at commit "
                           f"{(record.commit or 'HEAD')[:12]} is version {version}; not submitting the {stage} job")
    train = record.configs.train
    if (train.repo if train else None) != loaded.output_repo:
        raise SpendRefused(f"{where}: the record's output repo differs from the recipe's ({loaded.output_repo}); "
                           f"not submitting the {stage} job")
    expected = _with_trained_revision(record, _derived_config(step, record, stage))
    if fixed != expected:
        theirs, ours = fixed.model_dump(), expected.model_dump()
        keys = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        raise SpendRefused(f"{where}: the record's {stage} job config differs from the recipe's "
                           f"({', '.join(keys)}); not submitting")
    planned = plan.job(stage)
    recorded = record.plan.job(stage) if record.plan else None
    if planned is None:
        raise SpendRefused(f"{where}: the plan has no {stage} job; nothing submitted")
    if recorded is not None and (recorded.flavor, recorded.timeout_seconds) != \
            (planned.flavor, planned.timeout_seconds):
        raise SpendRefused(f"{where}: the record plans {stage} on {recorded.flavor} for "
                           f"{recorded.timeout_seconds} s, the recipe's plan on {planned.flavor} for "
                           f"{planned.timeout_seconds} s; not submitting")
    return JobSpec(script=stage, config=fixed, labels=_labels(record, step.name, stage), flavor=planned.flavor,
                   timeout_seconds=planned.timeout_seconds, processes=record.processes if stage == "train" else 1,
                   bundle_repo=loaded.output_repo, bundle_dir=bundle_dir(record.run_id),
                   files={k: str(v) for k, v in shipped_files(loaded).items()})


def _with_trained_revision(record: RunRecord, config: JobConfig) -> JobConfig:
    """A GGUF config pinned to the commit the training job pushed (known only once it has): what it converts."""
    pushed = record.train_summary.pushed if record.train_summary else None
    if not isinstance(config, GgufJobConfig) or config.model_repo is None or pushed is None:
        return config
    return config.model_copy(update={"model_revision": pushed.commit})


def preview(loaded: LoadedRecipe, plan: Plan, engine: type[Backend]) -> list[JobSpec]:
    """The jobs a run of this recipe would submit on `engine`, derived and gated exactly as `start` and `advance`
    do; the engine's class is enough (its capabilities: no client, no token, no request)."""
    check_spend(plan, engine, loaded.display)  # type: ignore[arg-type]  # class attributes serve as capabilities
    push = engine.bills
    record = RunRecord(run_id="dry-run", recipe=loaded.display, recipe_sha256=sha256_file(loaded.path),
                       version=recipe_version(loaded), commit=git_commit(loaded.root), backend=engine.name,
                       plan=plan, push=push,
                       processes=max(plan.devices, 1) if push else 1)
    step = Step(loaded, engine, plan=plan)  # type: ignore[arg-type]
    _fix_configs(step, record)
    specs = [authorize(step, record, "train")]
    if record.configs.gguf is not None:
        specs.append(authorize(step, record, "gguf"))
    return specs
