"""What a comparison trains: its entries (configs or config variants), their equal schedule, and
one training run per (seed, entry) through tools/train_net.py in a subprocess.

An entry is a config file plus options. ``--config [NAME=]FILE`` gives one per file;
``--variant "NAME: KEY VALUE ..."`` gives one per variant of every config file. The first
entry is the baseline that every other one is compared against.
"""
import dataclasses
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

from ..engine.budget import scaled_schedule, schedule_options
from ..engine.config_merge import flag_among_options

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
#: written into a run's folder when its train_net process ends: what ran and how it ended.
RUN_RECORD = "compare_run.json"
_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


class ComparisonError(ValueError):
    """A comparison that cannot run as asked (bad --config / --variant / --seeds, output dir)."""


@dataclasses.dataclass
class Entry:
    name: str            # shown in the tables
    config_file: str
    opts: List[str]      # KEY VALUE options of this entry (after the common ones)
    seed_offset: int = 0  # trains with SEED = seed + seed_offset (an A/A arm: other seeds)

    @property
    def key(self) -> str:
        """Folder name: the name in lower case, other characters as '_'."""
        return re.sub(r"[^a-z0-9]+", "_", self.name.lower()).strip("_") or "model"


def parse_seeds(spec: str) -> List[int]:
    """"0,1,2" -> [0, 1, 2]; distinct non-negative integers."""
    try:
        seeds = [int(s) for s in spec.split(",") if s.strip() != ""]
    except ValueError:
        raise ComparisonError(f"--seeds {spec!r}: give comma-separated integers, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ComparisonError(f"--seeds {spec!r}: give distinct integers >= 0, e.g. 0,1,2")
    return seeds


def parse_options(tokens: Sequence[str], where: str) -> List[str]:
    """Check KEY VALUE pairs: an even count, keys in detectron2's dotted upper-case form."""
    tokens = list(tokens)
    found = flag_among_options(tokens)
    if found:
        raise ComparisonError(
            f"{where}: the flag {found[0]} stands among the KEY VALUE options (after "
            f"{found[1] or 'nothing'!r}); everything after the first KEY is read as a config "
            "option: put flags before the options")
    if len(tokens) % 2:
        raise ComparisonError(f"{where}: options come in KEY VALUE pairs; {tokens[-1]!r} has no value")
    for key in tokens[::2]:
        if not _KEY.match(key):
            raise ComparisonError(f"{where}: {key!r} is not a config key (like MODEL.RPN.NMS_THRESH)")
    return tokens


def parse_variant(spec: str) -> tuple:
    """"NAME: KEY VALUE KEY VALUE" -> (NAME, [KEY, VALUE, ...]); "NAME:" is the config as is.
    Values with spaces are quoted as in a shell: "B: SOLVER.STEPS '(100, 200)'"."""
    name, sep, rest = spec.partition(":")
    name = name.strip()
    if not sep or not name:
        raise ComparisonError(
            f"--variant {spec!r} is malformed: write \"NAME: KEY VALUE ...\" (a name, a colon, "
            "then config options; \"NAME:\" alone is the config unchanged)")
    try:
        tokens = shlex.split(rest)
    except ValueError as e:
        raise ComparisonError(f"--variant {spec!r} is malformed: {e}") from None
    return name, parse_options(tokens, f"--variant {spec!r}")


def parse_config_spec(spec: str) -> tuple:
    """"NAME=FILE" or "FILE" (named by its file name) -> (NAME, absolute FILE)."""
    name, sep, path = spec.partition("=")
    if not sep:
        name, path = os.path.splitext(os.path.basename(spec))[0], spec
    path = os.path.abspath(path if os.path.isabs(path) or os.path.exists(path) else os.path.join(REPO, path))
    if not os.path.isfile(path):
        raise ComparisonError(f"--config {spec!r}: no such config file {path}")
    return name.strip(), path


def build_entries(config_specs: Sequence[str], variant_specs: Sequence[str]) -> List[Entry]:
    """One entry per config, or per (config, variant) when variants are given; baseline first."""
    if not config_specs:
        raise ComparisonError("give at least one --config")
    configs = [parse_config_spec(s) for s in config_specs]
    variants = [parse_variant(s) for s in variant_specs]
    if variants:
        entries = [Entry(vname if len(configs) == 1 else f"{cname} {vname}", path, opts)
                   for cname, path in configs for vname, opts in variants]
    else:
        entries = [Entry(cname, path, []) for cname, path in configs]
    if len(entries) < 2:
        raise ComparisonError("a comparison needs at least two entries: several --config, or "
                              "one --config with several --variant")
    keys = [e.key for e in entries]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ComparisonError(f"entry names must differ (as folder names): {dup} repeat; name "
                              "them with --config NAME=FILE or distinct --variant names")
    return entries


def apply_seed_offsets(entries: List[Entry], specs: Sequence[str]) -> None:
    """``--seed-offset NAME=K``: entry NAME trains with SEED = seed + K, so that two arms of
    one config differ by chance alone (an A/A comparison: training is deterministic, and the
    same config at the same seeds differs by exactly 0)."""
    by_name = {e.name: e for e in entries}
    for spec in specs:
        name, sep, value = spec.rpartition("=")
        try:
            offset = int(value)
        except ValueError:
            offset = None
        if not sep or offset is None or offset < 0:
            raise ComparisonError(f"--seed-offset {spec!r}: write NAME=K with K an integer >= 0, "
                                  "e.g. --seed-offset B=1000")
        if name.strip() not in by_name:
            raise ComparisonError(f"--seed-offset {spec!r}: no entry named {name.strip()!r}; the "
                                  f"entries are {sorted(by_name)}")
        by_name[name.strip()].seed_offset = offset


def entry_config(entry: Entry, common_opts: Sequence[str], extra: Sequence[str] = ()):
    """The detectron2 config of ``entry`` (config errors raised as from train_net)."""
    import argparse

    from ..engine import build_config

    return build_config(argparse.Namespace(
        config_file=entry.config_file, opts=list(common_opts) + list(entry.opts) + list(extra)))


def test_dataset_of(cfg) -> str:
    if len(cfg.DATASETS.TEST) != 1:
        raise ComparisonError(f"a comparison evaluates on one dataset; DATASETS.TEST is "
                              f"{tuple(cfg.DATASETS.TEST)} (set it with --dataset-test NAME)")
    return cfg.DATASETS.TEST[0]


def fixed_schedule(cfg, iters: Optional[int]) -> dict:
    """The baseline's schedule: its own, or its shape at ``iters`` iterations."""
    if iters is None:
        return {"max_iter": int(cfg.SOLVER.MAX_ITER), "steps": tuple(cfg.SOLVER.STEPS),
                "warmup_iters": int(cfg.SOLVER.WARMUP_ITERS)}
    sched = scaled_schedule(cfg, iters)
    sched["steps"] = tuple(s for s in sched["steps"] if 0 < s < iters)
    sched["warmup_iters"] = min(sched["warmup_iters"], iters)
    return sched


@dataclasses.dataclass
class Run:
    entry: Entry
    seed: int
    output_dir: str
    options: List[str]         # every config option given to train_net
    returncode: Optional[int] = None
    wall_seconds: Optional[float] = None
    peak_rss_mb: Optional[float] = None
    reused: bool = False
    config_sha256: Optional[str] = None  # config_digest() when training started

    def command(self, dataset_specs: Sequence[str], num_gpus: int) -> List[str]:
        cmd = [sys.executable, TRAIN_NET, "--config-file", self.entry.config_file,
               "--num-gpus", str(num_gpus)]
        for spec in dataset_specs:
            cmd += ["--dataset", spec]
        return cmd + self.options + ["OUTPUT_DIR", self.output_dir]

    def config_digest(self) -> str:
        """sha256 of the fully resolved config this run trains: its file, the ``_BASE_`` files
        that file names, detectron2's defaults and the options. An edited config file gives a
        new digest, so an earlier run of the old file is never taken for this one."""
        cfg = entry_config(Entry(self.entry.name, self.entry.config_file, []), self.options)
        return hashlib.sha256(cfg.dump().encode()).hexdigest()

    def record(self) -> dict:
        return {"config_file": self.entry.config_file, "options": self.options,
                "config_sha256": self.config_sha256 or self.config_digest(),
                "returncode": self.returncode, "wall_seconds": self.wall_seconds,
                "peak_rss_mb": self.peak_rss_mb}

    def finished_record(self) -> Optional[dict]:
        """The record of an earlier identical run of this folder that succeeded (same config
        file, options and resolved config), else None."""
        try:
            with open(os.path.join(self.output_dir, RUN_RECORD)) as f:
                rec = json.load(f)
        except (OSError, ValueError):
            return None
        same = rec.get("config_file") == self.entry.config_file and rec.get("options") == self.options
        if not same or rec.get("returncode") != 0:
            return None
        try:
            unchanged = rec.get("config_sha256") == self.config_digest()
        except ValueError:  # the file no longer reads as a config: nothing to reuse
            return None
        return rec if unchanged else None


def train(run: Run, dataset_specs: Sequence[str], num_gpus: int, log=print) -> Run:
    """Train + evaluate ``run`` in a subprocess (its log in train_net.stdout.txt); fill in its
    return code, wall time and peak resident memory (of that process, from wait4)."""
    cmd = run.command(dataset_specs, num_gpus)
    run.config_sha256 = run.config_digest()  # what this run trains, before the file can change
    log("    " + " ".join(shlex.quote(c) for c in cmd))
    os.makedirs(run.output_dir, exist_ok=True)
    start = time.time()
    with open(os.path.join(run.output_dir, "train_net.stdout.txt"), "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
    run.returncode = os.waitstatus_to_exitcode(status)
    run.wall_seconds = time.time() - start
    run.peak_rss_mb = usage.ru_maxrss / 1024  # KiB on Linux
    with open(os.path.join(run.output_dir, RUN_RECORD), "w") as f:
        json.dump(run.record(), f, indent=2)
    return run


def read_json(path) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def budget_schedule(cfg, run_dir: str) -> Dict[str, object]:
    """The schedule a time-budgeted run ended with (its run_stats.json), at the shape of ``cfg``."""
    stats = read_json(os.path.join(run_dir, "run_stats.json")) or {}
    max_iter = stats.get("max_iter") or stats.get("iterations")
    if not max_iter:
        raise ComparisonError(f"the time-budgeted baseline run in {run_dir} left no run_stats.json "
                              "with its length: see its train_net.stdout.txt")
    return scaled_schedule(cfg, int(max_iter))


__all__ = [
    "ComparisonError", "Entry", "Run", "apply_seed_offsets", "build_entries", "budget_schedule", "entry_config",
    "fixed_schedule", "parse_options", "parse_seeds", "parse_variant", "read_json",
    "schedule_options", "test_dataset_of", "train",
]
