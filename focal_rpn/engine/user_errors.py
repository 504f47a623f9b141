"""One clear message for a user's mistake, instead of a library traceback.

``run_tool(prog, fn)`` calls ``fn()``; when it raises a *user error* (a bad config, dataset,
image, checkpoint or output folder: see ``user_error_types``), it prints ``PROG: error:
MESSAGE`` on stderr and exits with status 1, with no traceback. With ``--debug`` on the command
line or ``FOCAL_RPN_DEBUG=1`` in the environment the exception propagates as is. Ctrl-C and
SIGTERM end it with one line too (``focal_rpn.engine.interrupts``).

A user error is found wherever it hides: as the exception itself, in its ``__cause__`` /
``__context__`` chain, or re-raised by a DataLoader worker or a spawned process (their
messages quote the worker's traceback; the last ``Type: message`` line of it is the message).
While a tool runs, detectron2's "Exception during training:" log record loses its traceback
when the exception is a user error (``QuietUserErrors``), so the message is not buried under
pages of frames. Everything else (bugs) keeps its traceback.
"""
import contextlib
import errno
import functools
import logging
import os
import re
import signal
import sys
from typing import Callable, Optional, Tuple, Type

DEBUG_ENV = "FOCAL_RPN_DEBUG"
#: exit status of a tool stopped by a user error
USER_ERROR_EXIT_CODE = 1


class UserError(Exception):
    """Mixin of errors caused by the user's input; the message says what to do."""


def user_error_types() -> Tuple[Type[BaseException], ...]:
    """The exception classes whose message is meant for the user (imported lazily: the
    modules that define them import torch and detectron2)."""
    from ..data.errors import DatasetError, ImageReadError
    from .checkpoint import CheckpointLoadError, NonFiniteWeightsError
    from .config_merge import ConfigError
    from .guards import NonFiniteLossError

    return (UserError, DatasetError, ImageReadError, ConfigError, CheckpointLoadError,
            NonFiniteLossError, NonFiniteWeightsError)


def debug_requested(argv=None) -> bool:
    """``--debug`` in ``argv`` (default sys.argv) or FOCAL_RPN_DEBUG set to a true value."""
    argv = sys.argv[1:] if argv is None else argv
    env = os.environ.get(DEBUG_ENV, "").strip().lower()
    return "--debug" in argv or env not in ("", "0", "false", "no", "off")


#: OSErrors of the user's storage (not of the code): permission, read-only, full disk, quota
_STORAGE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)

_QUOTED_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+): (.+)$")


def _quoted_user_error(text: str, names) -> Optional[str]:
    """The message of the last ``[module.]Name: message`` line of a quoted traceback whose
    Name is a user error type."""
    found = None
    for line in text.splitlines():
        match = _QUOTED_LINE.match(line.strip())
        if match and match.group(1) in names:
            found = match.group(2)
    return found


def _with_subclasses(cls):
    yield cls
    for sub in cls.__subclasses__():
        yield from _with_subclasses(sub)


def display_path(path) -> str:
    """A path quoted as text, also when a library gave it as bytes (tensorboard's writer)."""
    return repr(os.fsdecode(path)) if isinstance(path, (bytes, str, os.PathLike)) else repr(path)


def find_user_error(exc: BaseException) -> Optional[str]:
    """The message of the user error that ``exc`` is, wraps or quotes, else None."""
    types = user_error_types()
    names = {cls.__name__ for t in types for cls in _with_subclasses(t)}
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc)
        if "Traceback (most recent call last)" in text:  # a worker's / child's exception
            quoted = _quoted_user_error(text, names)
            if quoted is not None:
                return quoted
        if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS and exc.filename:
            return f"cannot write or read {display_path(exc.filename)}: {exc.strerror}"
        if isinstance(exc, types):
            return text
        exc = exc.__cause__ or exc.__context__
    return None


class QuietUserErrors(logging.Filter):
    """Drops the traceback from log records of an exception that is a user error (the tool
    prints its message once, at the end)."""

    def filter(self, record):
        if record.exc_info and record.exc_info[1] is not None:
            if find_user_error(record.exc_info[1]) is not None:
                record.exc_info = None
                record.exc_text = None
                record.msg = f"{record.getMessage()} (a user error: see the message at the end)"
                record.args = ()
        return True


#: the loggers that log exceptions before re-raising them (detectron2's training loop, ours)
EXCEPTION_LOGGERS = ("detectron2.engine.train_loop", "detectron2.engine.hooks", "focal_rpn.engine",
                     "focal_rpn.engine.trainer")


@contextlib.contextmanager
def quiet_user_error_logs():
    """While in the body, ``EXCEPTION_LOGGERS`` log user errors without their traceback."""
    quiet = QuietUserErrors()
    loggers = [logging.getLogger(name) for name in EXCEPTION_LOGGERS]
    for log in loggers:
        log.addFilter(quiet)
    try:
        yield
    finally:
        for log in loggers:
            log.removeFilter(quiet)


def _call_quietly(fn, *args, **kwargs):
    with quiet_user_error_logs():
        return fn(*args, **kwargs)


def quietly(fn):
    """``fn`` run under ``quiet_user_error_logs`` (picklable, for processes started by spawn,
    which do not inherit the parent's log filters)."""
    return functools.partial(_call_quietly, fn)


def run_tool(prog: str, fn: Callable[[], object], debug: Optional[bool] = None,
             resumable: bool = False):
    """Run ``fn()``; a user error ends the process with ``PROG: error: MESSAGE`` (exit 1).

    Ctrl-C or SIGTERM ends it with one line (``focal_rpn.engine.interrupts``), exit status 128 +
    the signal; ``resumable``: the tool trains and takes ``--resume`` (the line then names the
    checkpoint and the command that continues). ``debug`` (default: ``debug_requested()``):
    let every exception propagate with its traceback.
    """
    from .guards import TrainingInterrupted
    from .interrupts import (
        SignalInterrupt,
        exit_code,
        interruption_message,
        received_signal,
        sigterm_raises,
    )
    from .output_dir import claimed_output_dirs

    debug = debug_requested() if debug is None else debug
    try:
        with sigterm_raises():
            if debug:
                return fn()
            with quiet_user_error_logs():
                return fn()
    except TrainingInterrupted as e:  # stopped in the training loop, checkpoint saved
        stopped = f"stopped after iteration {e.iteration}, checkpoint {e.checkpoint}"
        print(f"{prog}: {interruption_message(e.signum, [], stopped=stopped)}", file=sys.stderr)
        sys.exit(e.code)
    except (KeyboardInterrupt, SignalInterrupt) as e:
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"{prog}: {interruption_message(signum, claimed_output_dirs(), resumable=resumable)}",
              file=sys.stderr)
        if debug:
            raise
        sys.exit(exit_code(signum))
    except SystemExit:
        raise
    except Exception as e:
        signum = received_signal()
        if signum is not None and not debug:  # e.g. a worker killed by the same signal
            first_line = (str(e).strip().splitlines() or [""])[0]
            line = interruption_message(signum, claimed_output_dirs(), resumable=resumable)
            print(f"{prog}: {line} (it stopped with {type(e).__name__}: {first_line})",
                  file=sys.stderr)
            sys.exit(exit_code(signum))
        message = None if debug else find_user_error(e)
        if message is None:
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        print(f"(for the traceback, run again with --debug or {DEBUG_ENV}=1)", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)
