"""After the merge: train, convert, record. The same steps whatever the backend.

A run is the state machine in runner/ledger.py. `advance` moves it one step and saves
the record, so any process (this one, a re-run, a scheduled `runner reconcile`) can
pick a run up wherever the last one stopped. Jobs carry labels (recipe, run, commit,
stage) so a repeated submission adopts the job already running instead of paying twice.
The spend gate (gate.py) decides what may be submitted; lifecycle.py moves runs; follow.py
watches jobs; step.py holds what they share.
"""

from runner.gitrepo import git_commit, on_branch, snapshot
from runner.runs.gate import authorize, check_spend, preview
from runner.runs.lifecycle import advance, begin, cancel, drive, run_lock, start, verify_training
from runner.runs.step import (Echo, RunBusy, SpendRefused, Step, identity, local_places, new_run_id, recipe_version,
                              sha256_file)

__all__ = ["Echo", "RunBusy", "SpendRefused", "Step", "advance", "authorize", "begin", "cancel", "check_spend", "drive",
           "git_commit", "identity", "local_places", "new_run_id", "on_branch", "preview", "recipe_version", "run_lock",
           "sha256_file", "snapshot", "start", "verify_training"]
