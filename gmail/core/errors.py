"""One exception type for every problem a user can fix; stages print it as a single line."""


class PipelineError(RuntimeError):
    """A problem with inputs or parameters, worded as `what is wrong: how to fix it`."""
