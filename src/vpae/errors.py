"""Expected failures: bad input, a run directory that cannot continue, a diverged run. The command line
prints them as one `error:` line with exit code 2 (no traceback; `vpae --debug ...` shows it); anything
else is a bug and keeps its traceback."""


class VpaeError(Exception):
    """Base of every expected failure; the message names the problem and what to do."""


class DivergenceError(VpaeError, FloatingPointError):
    """Training produced non-finite values or exploded; the message names the last checkpoint before it."""
