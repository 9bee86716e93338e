"""The exceptions that mean "the user's input is wrong", for the command-line entry points.

Each names the problem and the fix in its message, so ``python -m amd_fast.train`` / ``.probe`` print
that message and exit 2 instead of a traceback. Anything not listed here is a bug and keeps its traceback.
Config errors are caught earlier, by ``load_config``'s callers.
"""
from amd_fast.data import CodecError, ShardError
from amd_fast.models.checkpoint import CheckpointImportError
from amd_fast.trainer.checkpoint import CheckpointError

INPUT_ERRORS = (ShardError, CodecError, CheckpointError, CheckpointImportError, FileNotFoundError)
