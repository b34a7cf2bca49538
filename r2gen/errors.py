"""The error boundary: a mistake in what the user gave (config, data, files) versus a bug.

Raise one of these for the first; the entry points (`r2gen.boundary.run_cli`) print its message as one line and exit
with code 2. Anything else (a bug in r2gen, torch, transformers) keeps its traceback. Each class also derives from
the builtin a caller would expect (`ValueError`, `FileNotFoundError`, `OSError`), so `except ValueError` around the
Python API keeps working.

A message names the thing that is wrong, the bad value and the fix:
`ConfigError("lm.pad_token='foo': choose keep, eos, unk, add or an integer token id")`.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user gave is wrong or missing; the message says what and how to fix it."""


class ConfigError(UserError, ValueError):
    """A config key has a value r2gen cannot use (`key=value: what is wrong; the fix`)."""


class InputError(UserError, ValueError):
    """A file the user named is unreadable or malformed: a checkpoint, an annotation table, an image, a model folder."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class UnsafeWriteError(UserError, OSError):
    """r2gen was about to write into, replace or delete something that is not its own; nothing was touched."""


class StorageError(UserError, OSError):
    """Writing failed (full disk, no permission); what was written before is intact."""


class TrainingDiverged(UserError, FloatingPointError):
    """The loss or the gradients became NaN/inf; the checkpoints on disk hold the last finite weights."""
