"""The errors a user can cause and fix: each message is one line naming the file or key.

Every command turns a `UserError` into `error: <message>` and exit status 2, with no traceback;
anything else is a bug in frcnn and keeps its traceback.
"""


class UserError(Exception):
    """Bad input (params, data, a checkpoint, the environment); the message says which and why."""


class ConfigError(UserError, ValueError):
    """A params file or override that cannot be used; the message names the key."""


class DataError(UserError, ValueError):
    """Bad input data (a file, an archive, a download); the message names the file and the problem."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the problem."""
