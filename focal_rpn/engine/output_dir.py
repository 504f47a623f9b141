"""Never mix two runs in one output folder; say where a resume really starts from.

``check_output_dir(path, resume=...)``
    Before a tool writes anything: a folder that holds the results of an earlier run (files
    matching ``markers``: by default a training run's ``model_final.pth``, ``model_*.pth``,
    ``last_checkpoint``, ``metrics.json``, ``eval_results.json``) is refused with
    ``OutputDirError`` unless ``resume`` is true. The message names the folder, what it holds and
    the two ways out: the resume flag, or a new folder (a free name is suggested). A folder with
    only a log or config (a run that failed while starting) is not a finished run. A path that is
    an existing file is refused too.

    The same function serves other tools: pass their own ``markers``, ``option`` (how the
    folder was given, e.g. ``"--output"``), ``resume_flag`` and what it does, ``resume_means``
    (e.g. ``"--overwrite"``, ``"replace it"``), or ``resume_flag=None`` when the tool has no
    such flag.

``claim_output_dir(path)``
    Makes one process the only run in a folder, atomically: an exclusive ``fcntl.flock`` on
    ``path/.focal_rpn.lock``, held until the run ends (``release_output_dir``) or the process
    dies. A second run into the folder, started at the same instant or later, is refused with
    ``OutputDirBusyError`` naming the folder and the holder (pid, host, command, start time,
    written into the lock file). A stale lock cannot block ``--resume``: the kernel drops a
    flock when its process ends, however it ends (SIGKILL and power loss included), so the
    file a killed run leaves behind holds no lock and the next run claims it at once. On a file
    system without locks the claim is skipped with a warning.

``check_resume(path)``
    For ``--resume``: a warning naming the folder when it does not exist or has no
    ``last_checkpoint`` (training then starts from MODEL.WEIGHTS; sibling folders that do hold
    checkpoints are listed, for a mistyped name); ``CheckpointLoadError`` when
    ``last_checkpoint`` is empty or names a file that is missing, listing the checkpoints that
    exist.
"""
import datetime
import errno
import fnmatch
import glob
import json
import logging
import os
import socket
import sys
from typing import Callable, Dict, List, Optional, Sequence

try:
    import fcntl
except ImportError:  # not POSIX: no claim (see claim_output_dir)
    fcntl = None

from .user_errors import UserError

logger = logging.getLogger(__name__)

#: files that mark a folder holding the results of a training run (fnmatch patterns)
TRAINING_RUN_MARKERS = ("model_final.pth", "model_*.pth", "last_checkpoint", "metrics.json",
                        "eval_results.json")
LAST_CHECKPOINT = "last_checkpoint"


class OutputDirError(UserError, ValueError):
    """An output folder holds an earlier run (or is a file); the message says how to go on."""


class OutputDirBusyError(OutputDirError):
    """Another live process holds the folder's claim; the message names it."""


#: the lock file of ``claim_output_dir`` (hidden; not a marker of a finished run)
LOCK_FILE = ".focal_rpn.lock"
#: folders this process holds: real path -> the open file descriptor carrying the flock
_HELD: Dict[str, int] = {}
_CLAIMED: List[str] = []


def _holder_text(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        holder = json.loads(os.read(fd, 65536).decode() or "{}")
        return (f"pid {holder['pid']} on {holder['host']}, started {holder['started']}: "
                f"{holder['command']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not yet written its name"


def claim_output_dir(path: str, *, option: str = "OUTPUT_DIR",
                     check: Optional[Callable[[], None]] = None) -> bool:
    """Claim ``path`` for this process (see the module docstring); creates the folder.

    ``check`` (e.g. a ``check_output_dir`` call): run before the folder is made and again once
    it is claimed, when it also sees what a run that ended in between left there.
    Returns True when claimed now, False when this process already held it or the file
    system has no locks. Raises ``OutputDirBusyError`` when another process holds it."""
    if not path:
        return False
    if check is not None:
        check()
    claimed = _claim(path, option)
    if check is not None:
        check()
    return claimed


def _claim(path: str, option: str) -> bool:
    os.makedirs(path, exist_ok=True)
    key = os.path.realpath(path)
    if key in _HELD or fcntl is None:
        return False
    fd = os.open(os.path.join(path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = _holder_text(fd) if e.errno in (errno.EAGAIN, errno.EACCES) else None
        os.close(fd)
        if holder is None:  # ENOLCK, EOPNOTSUPP...: a file system without locks
            logger.warning(f"{option} {path!r}: the file system cannot lock files ({e}); two "
                           "runs started into this folder at once would not be told apart")
            return False
        raise OutputDirBusyError(
            f"{option} {path!r} is in use by another run ({holder}). Two runs in one folder "
            f"would write every metric twice and mix their checkpoints. Wait for that run to "
            f"end, or choose a new folder, e.g. {option} {free_folder_name(path)}. (The claim "
            f"is a lock on {LOCK_FILE} that ends with its process, however it ends: a killed "
            "run leaves no claim behind.)") from None
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": " ".join(sys.argv)}
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(record).encode())
    _HELD[key] = fd
    if key in _CLAIMED:
        _CLAIMED.remove(key)
    _CLAIMED.append(key)
    return True


def claimed_output_dirs() -> List[str]:
    """The folders this process has claimed (its runs' OUTPUT_DIRs), the latest first, also
    those released since (an interrupted run releases its folder before the tool reports)."""
    return list(reversed(_CLAIMED))


def release_output_dir(path: str) -> None:
    """End this process's claim of ``path`` (nothing if it holds none)."""
    fd = _HELD.pop(os.path.realpath(path), None) if path else None
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock


def run_files(path: str, markers: Sequence[str] = TRAINING_RUN_MARKERS) -> List[str]:
    """The names of the files directly in ``path`` that match ``markers`` (sorted)."""
    if not os.path.isdir(path):
        return []
    names = os.listdir(path)
    return sorted(n for n in names if any(fnmatch.fnmatch(n, m) for m in markers))


def free_folder_name(path: str) -> str:
    """``path`` with the first of ``_2``, ``_3``, ... appended that does not exist."""
    base = os.path.normpath(path)
    i = 2
    while os.path.exists(f"{base}_{i}"):
        i += 1
    return f"{base}_{i}"


def check_output_dir(path: str, *, resume: bool, option: str = "OUTPUT_DIR",
                     resume_flag: Optional[str] = "--resume",
                     markers: Sequence[str] = TRAINING_RUN_MARKERS,
                     what: str = "a training run", resume_means: str = "continue it") -> None:
    """Raise ``OutputDirError`` if ``path`` is a file, or holds ``what`` (files matching
    ``markers``) and ``resume`` is false. See the module docstring."""
    if not path:
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputDirError(f"{option} {path!r} is an existing file, not a folder: "
                             f"give a folder (e.g. {option} {free_folder_name(path)})")
    if resume:
        return
    found = run_files(path, markers)
    if not found:
        return
    shown = ", ".join(found[:6]) + (", ..." if len(found) > 6 else "")
    ways = [f"{resume_means} with {resume_flag}"] if resume_flag else []
    ways.append(f"choose a new folder, e.g. {option} {free_folder_name(path)}")
    raise OutputDirError(
        f"{option} {path!r} already holds {what} ({shown}); running again into it would replace "
        f"its results and mix them with the new ones. Either " + ", or ".join(ways) + ".")


def _checkpoints(path: str) -> List[str]:
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(path), "*.pth")))


def _siblings_with_checkpoints(path: str) -> List[str]:
    parent = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(parent):
        return []
    return sorted(os.path.join(parent, d) for d in os.listdir(parent)
                  if os.path.isfile(os.path.join(parent, d, LAST_CHECKPOINT)))[:5]


def check_resume(path: str) -> Optional[str]:
    """What ``--resume`` into ``path`` will load: the checkpoint file named by
    ``last_checkpoint``, or None (with a warning naming the folder) when there is nothing to
    resume. Raises ``CheckpointLoadError`` when ``last_checkpoint`` is empty or names a
    missing file."""
    from .checkpoint import CheckpointLoadError

    tag = os.path.join(path, LAST_CHECKPOINT)
    if not os.path.isfile(tag):
        state = "does not exist" if not os.path.exists(path) else (
            "is empty" if os.path.isdir(path) and not os.listdir(path) else
            "has no last_checkpoint file")
        siblings = _siblings_with_checkpoints(path)
        hint = f" Folders beside it that hold checkpoints: {siblings}." if siblings else ""
        logger.warning(f"--resume: OUTPUT_DIR {path!r} {state}, so there is nothing to resume: "
                       f"training starts from MODEL.WEIGHTS at iteration 0. Is the folder name "
                       f"right?{hint}")
        return None
    with open(tag) as f:
        name = f.read().strip()
    existing = _checkpoints(path)
    listed = (f"checkpoints in the folder: {existing}; to resume from one, write its file name "
              f"into {tag}" if existing else "the folder holds no checkpoint (*.pth)")
    if not name:
        raise CheckpointLoadError(f"--resume: {tag} is empty, so it names no checkpoint; {listed}")
    target = os.path.join(path, name)
    if not os.path.isfile(target):
        raise CheckpointLoadError(f"--resume: {tag} names {name!r}, which does not exist; {listed}")
    return target
