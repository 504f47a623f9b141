"""Atomic checkpoints that refuse non-finite weights and load nothing but tensors.

Saving (``AtomicCheckpointer``, a ``DetectionCheckpointer``)
    A checkpoint is written to a hidden temporary file in OUTPUT_DIR, fsync'ed, then renamed
    over its final name (``os.replace`` is atomic on POSIX); ``last_checkpoint`` is updated the
    same way, after the file. A kill at any moment (SIGKILL, power loss after fsync) leaves
    either the old or the new file, never a truncated one, and ``last_checkpoint`` never names
    a file that is not complete. A model with a NaN/inf parameter or buffer is never saved
    (``NonFiniteWeightsError`` names the tensor), so a good checkpoint is never replaced by a
    bad one.

Loading
    Our ``.pth`` files hold only tensors and plain Python containers, and are read by
    detectron2's own loader, whose ``torch.load`` unpickles with ``weights_only=True`` (torch
    >= 2.6's default; this project pins torch 2.14). A ``.pth`` that needs arbitrary classes is
    refused with ``CheckpointLoadError``, which says how to convert a trusted file; a truncated
    one names the other checkpoints of its folder. detectron2's model-zoo formats (``.pkl``,
    ``.pyth``) and URL options (detectron2 main's ``?matching_heuristics=True``) are handled by
    detectron2 as before (``.pkl`` is a pickle by definition: use only files you trust).
"""
import contextlib
import glob
import os
import pickle
from typing import List, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..d2_adapter import CheckpointerWithFileReader

#: marks the temporary files of checkpoints being written (removed if a save fails)
TMP_MARK = ".tmp-"


class NonFiniteWeightsError(FloatingPointError):
    """A checkpoint would hold NaN/inf weights; the message names the tensor."""


class CheckpointLoadError(RuntimeError):
    """A checkpoint file cannot be loaded safely; the message names the file and why."""


def non_finite_tensors(state_dict) -> List[Tuple[str, int, int]]:
    """``[(name, number of NaN/inf values, numel), ...]`` of the floating-point tensors of
    ``state_dict`` that are not finite everywhere."""
    bad = []
    for name, value in state_dict.items():
        if torch.is_tensor(value) and value.is_floating_point():
            finite = torch.isfinite(value.detach())
            if not bool(finite.all()):
                bad.append((name, int((~finite).sum()), value.numel()))
    return bad


def _fsync_path(path: str, directory=False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory
        if not directory:
            raise
    finally:
        os.close(fd)


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, fsync and ``os.replace``."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}{TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_path(directory, directory=True)


class AtomicCheckpointer(CheckpointerWithFileReader, DetectionCheckpointer):
    """``DetectionCheckpointer`` whose saves are atomic and refuse non-finite weights, and whose
    loads unpickle nothing but tensors and containers (see the module docstring).

    ``save`` behaves as detectron2's (same file names, contents and ``last_checkpoint`` tag)
    for a local ``save_dir``; other storage (e.g. an iopath URL) is saved by detectron2
    unchanged, without the atomic rename.
    """

    def __init__(self, model, save_dir="", *, save_to_disk=None, **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self._writing_tmp = False
        #: the ``iteration`` of the last ``save`` call (on every rank), or None
        self.last_saved_iteration = None

    @classmethod
    def from_checkpointer(cls, checkpointer: DetectionCheckpointer) -> "AtomicCheckpointer":
        """The same model, directory, save_to_disk and checkpointables, saved atomically."""
        return cls(checkpointer.model, checkpointer.save_dir,
                   save_to_disk=checkpointer.save_to_disk, **checkpointer.checkpointables)

    def _local(self) -> bool:
        return bool(self.save_dir) and "://" not in str(self.save_dir)

    def save(self, name: str, **kwargs) -> None:
        self.last_saved_iteration = kwargs.get("iteration")
        if not self.save_dir or not self.save_to_disk:
            return
        basename = f"{name}.pth"
        bad = non_finite_tensors(self.model.state_dict())
        if bad:
            tensor, count, numel = bad[0]
            more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
            previous = self.get_checkpoint_file() if self.has_checkpoint() else None
            raise NonFiniteWeightsError(
                f"refusing to save checkpoint {basename!r}: {tensor!r} has {count} NaN/inf "
                f"values of {numel}{more}. The last checkpoint "
                f"{previous!r} is kept; resume from it, e.g. with a lower SOLVER.BASE_LR or "
                "SOLVER.CLIP_GRADIENTS.ENABLED True")
        if not self._local():
            super().save(name, **kwargs)
            return
        os.makedirs(self.save_dir, exist_ok=True)
        self._remove_stale_tmp_files()
        tmp_name = f".{name}{TMP_MARK}{os.getpid()}"
        tmp = os.path.join(self.save_dir, tmp_name + ".pth")
        final = os.path.join(self.save_dir, basename)
        self._writing_tmp = True
        try:
            super().save(tmp_name, **kwargs)  # detectron2 writes the file (and no tag, below)
            _fsync_path(tmp)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
        finally:
            self._writing_tmp = False
        _fsync_path(self.save_dir, directory=True)
        self.tag_last_checkpoint(basename)
        self.logger.info(f"Checkpoint {final} complete")

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if self._writing_tmp:  # the tag is written after the rename, by save
            return
        if not self._local():
            super().tag_last_checkpoint(last_filename_basename)
            return
        atomic_write_text(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)

    def _remove_stale_tmp_files(self) -> None:
        """Temporary files left by a killed save of this folder are never complete."""
        for path in glob.glob(os.path.join(glob.escape(self.save_dir), f".*{TMP_MARK}*")):
            with contextlib.suppress(OSError):
                os.remove(path)
                self.logger.info(f"Removed {path}, left by an interrupted checkpoint save")

    def read_checkpoint_file(self, filename: str, read):
        """detectron2's reader (``read()``) with its errors turned into ``CheckpointLoadError``s
        that name the file and what to do."""
        try:
            return read()
        except pickle.UnpicklingError as e:
            raise CheckpointLoadError(
                f"checkpoint {filename!r} holds Python objects other than tensors and plain "
                f"containers, which focal_rpn does not unpickle (torch.load weights_only=True): "
                f"{str(e).splitlines()[0] if str(e) else e!r}. If you trust the file, convert it "
                f"once: python -c \"import torch; c = torch.load('{filename}', "
                "weights_only=False); torch.save({'model': c['model']}, 'weights.pth')\""
            ) from None
        except (RuntimeError, EOFError) as e:
            if filename.endswith((".pkl", ".pyth")) or not os.path.isfile(filename):
                raise
            others = sorted(os.path.basename(p) for p in glob.glob(
                os.path.join(glob.escape(os.path.dirname(filename)), "*.pth")) if p != filename)
            raise CheckpointLoadError(
                f"checkpoint {filename!r} is truncated or corrupt ({e}). Other checkpoints "
                f"in its folder: {others or 'none'}; to resume from one, write its file name "
                "into the folder's last_checkpoint file") from e
