"""One error type for problems a user can fix: it names the problem and the fix."""


class PipelineError(Exception):
    """A problem with the user's input or environment, reported as one line.

    ``problem`` says what is wrong, ``fix`` says what to do about it. The CLI prints
    ``error: <problem> — fix: <fix>`` and exits non-zero without a traceback.
    """

    def __init__(self, problem: str, fix: str):
        super().__init__(f"{problem} — fix: {fix}")
        self.problem = problem
        self.fix = fix
