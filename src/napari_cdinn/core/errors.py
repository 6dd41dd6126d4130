"""The project's own error and warning types: every bad input ends in one of these."""


class CdinnError(Exception):
    """A problem the user can fix (bad file, wrong shape, unknown option), with a one-line message."""


class InputError(CdinnError):
    """An input file or array cannot be used; the message names the file and the problem."""

    def __init__(self, source: object, problem: str):
        self.source = str(source) if source is not None else None
        self.problem = problem
        super().__init__(f"{self.source}: {problem}" if self.source else problem)


class InputWarning(UserWarning):
    """The input was usable only after a repair (e.g. NaN pixels masked); the message says which."""
