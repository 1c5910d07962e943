"""The conversion engine: a job (source + plan + sink) and the one streaming loop that runs it (docs/engine.md)."""

from quantcli.engine.job import Job, RecipeOptions, VerifyOptions, convert_model, make_job, run
from quantcli.engine.target import Target, resolve_target

__all__ = ["Job", "RecipeOptions", "Target", "VerifyOptions", "convert_model", "make_job", "resolve_target", "run"]
