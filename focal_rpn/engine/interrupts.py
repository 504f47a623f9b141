"""One clear ending for a run stopped by Ctrl-C (SIGINT), SIGTERM or SIGHUP, wherever it is
stopped.

Inside the training loop ``guards.GracefulInterrupt`` finishes the iteration and saves a
checkpoint. Anywhere else (reading the data, building the model, evaluating), ``run_tool``
turns the signal into ``SignalInterrupt`` / ``KeyboardInterrupt`` and ends with
``interruption_message``: one line that says what is saved in the run's folder and the exact
command that continues (the same command with ``--resume``), exit status 128 + the signal.

A second Ctrl-C while the checkpoint is being written interrupts the save: the previous
checkpoint stays whole (saves are atomic: ``checkpoint.AtomicCheckpointer``).
"""
import contextlib
import os
import re
import shlex
import signal
import sys
import threading
from typing import List, Optional, Sequence

#: a detectron2 config key on the command line: the first one starts the KEY VALUE options
_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


class SignalInterrupt(BaseException):
    """SIGTERM or SIGHUP received outside the training loop (a BaseException, as
    KeyboardInterrupt)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


#: the signals received while the current tool runs (see ``note_signal``)
_RECEIVED: List[int] = []


def note_signal(signum: int) -> None:
    """Record that ``signum`` arrived: an error that follows it (a data loader worker killed by
    the same SIGTERM sent to the whole process group) is then reported as the interruption."""
    _RECEIVED.append(int(signum))


def received_signal() -> Optional[int]:
    """The first signal noted since the tool started, or None."""
    return _RECEIVED[0] if _RECEIVED else None


def exit_code(signum: int) -> int:
    """The shell's status of a process ended by ``signum``: 128 + the signal number."""
    return 128 + int(signum)


def _raise_signal_interrupt(signum, frame):
    note_signal(signum)
    raise SignalInterrupt(signum)


#: signals whose default action ends the process without a word (SIGINT raises already)
TERMINATING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def sigterm_raises():
    """While in the body (main thread only), SIGTERM and SIGHUP raise ``SignalInterrupt``
    instead of ending the process without a word (an ignored one, as under ``nohup``, stays
    ignored); the previous handlers are restored after."""
    _RECEIVED.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise_signal_interrupt) for s in TERMINATING_SIGNALS
                if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def continue_command(argv: Optional[Sequence[str]] = None) -> str:
    """The command line that continues the interrupted one: ``--resume`` inserted before the
    KEY VALUE options (training), or the same command (``--eval-only``: nothing to resume)."""
    argv = list(sys.argv if argv is None else argv)
    args = argv[1:]
    if "--resume" not in args and "--eval-only" not in args:
        first_key = next((i for i, a in enumerate(args) if _CONFIG_KEY.match(a)), len(args))
        args.insert(first_key, "--resume")
    python = sys.executable
    with contextlib.suppress(ValueError):
        relative = os.path.relpath(python)
        python = relative if not relative.startswith("..") else python
    return shlex.join([python, argv[0], *args]) if argv else "--resume"


def saved_state(folders: List[str]) -> str:
    """What the run's folder holds to continue from: the checkpoint ``last_checkpoint`` names."""
    for folder in folders:
        tag = os.path.join(folder, "last_checkpoint")
        try:
            with open(tag) as f:
                name = f.read().strip()
        except OSError:
            continue
        if name and os.path.isfile(os.path.join(folder, name)):
            return f"the last checkpoint is {os.path.join(folder, name)}, whole"
    if folders:
        return f"no checkpoint was saved yet in {folders[0]}, so a resume starts from MODEL.WEIGHTS"
    return "nothing was saved"


def interruption_message(signum: int, folders: List[str], argv=None,
                         stopped: Optional[str] = None, resumable: bool = True) -> str:
    """One line: which signal, what is saved, the command that continues (``resumable``: a
    training tool that takes ``--resume``; else the command to run again)."""
    name = "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name
    if not resumable:
        return f"interrupted by {name}; nothing is lost but this run's own output: run it again"
    what = stopped or saved_state(folders)
    return f"interrupted by {name}: {what}. Continue with: {continue_command(argv)}"
