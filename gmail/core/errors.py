"""One exception type for every problem a user can fix; stages print it as a single line."""

import math


class PipelineError(RuntimeError):
    """A problem with inputs or parameters, worded as `what is wrong: how to fix it`."""


def check_loss(value: float, what: str, step: int, fix: str) -> float:
    """`value` if finite; a NaN or infinite training loss is a PipelineError, raised inside the
    training loop so that nothing trained on it is saved. `fix` names the learning rate to lower,
    e.g. "lower align.lr (now 0.001)"."""
    if not math.isfinite(value):
        raise PipelineError(f"{what} loss became {value} at step {step}: {fix} or check the inputs")
    return value
