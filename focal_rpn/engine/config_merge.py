"""Config errors that name the file and key (``merge_config_file``, ``merge_config_opts``).

A missing config file, an unknown key (with the closest known keys), a value of the wrong
type, a key written twice in one YAML mapping or a YAML syntax error become ``ConfigError``
naming the file or option.
"""
import ast
import difflib
import os
import re
from collections.abc import Mapping
from typing import List, Optional


class ConfigError(ValueError):
    """A config file or option is invalid; the message names the file / option and the key."""


# yacs: "Non-existent config key: K" (merge_from_file), "Non-existent key: K" (merge_from_list)
_UNKNOWN_KEY = re.compile(r"Non-existent (?:config )?key: (\S+)")


def _config_keys(cfg, prefix="") -> List[str]:
    keys = []
    for k, v in cfg.items():
        full = f"{prefix}{k}"
        if isinstance(v, Mapping):
            keys += _config_keys(v, full + ".")
        else:
            keys.append(full)
    return keys


def _unknown_key_message(cfg, err: KeyError) -> Optional[str]:
    match = _UNKNOWN_KEY.search(str(err))
    if not match:
        return None
    key = match.group(1).strip("'\"")
    close = difflib.get_close_matches(key, _config_keys(cfg), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return (f"unknown config key {key!r}{hint} (keys are detectron2's and focal_rpn's "
            "MODEL.FOCAL_RPN.* / MODEL.FOCAL_RETINANET.*)")


def merge_config_file(cfg, config_file: str) -> None:
    """``cfg.merge_from_file(config_file)``; problems become a ``ConfigError`` naming the file
    (missing file, a missing ``_BASE_``, unknown key, wrong value type, bad YAML)."""
    import yaml

    if not os.path.isfile(config_file):
        where = os.path.abspath(config_file)
        raise ConfigError(f"config file {config_file!r} does not exist (looked for {where})")
    check_no_repeated_yaml_keys(config_file)
    try:
        cfg.merge_from_file(config_file)
    except KeyError as e:
        message = _unknown_key_message(cfg, e)
        if message is None:
            raise
        raise ConfigError(f"config file {config_file!r} (or a _BASE_ it inherits): "
                          f"{message}") from None
    except (ValueError, AssertionError, yaml.YAMLError) as e:  # type mismatch, _BASE_, syntax
        raise ConfigError(f"config file {config_file!r}: {e}") from None


def check_no_repeated_yaml_keys(config_file: str, _seen=None) -> None:
    """Raise ``ConfigError`` when a mapping of ``config_file`` (or of a ``_BASE_`` it names)
    has a key twice: YAML keeps the last value and drops the other without a word. A file that
    does not parse is left to detectron2's reader (its error names the line)."""
    import yaml

    seen = set() if _seen is None else _seen
    path = os.path.abspath(config_file)
    if path in seen or not os.path.isfile(path):
        return
    seen.add(path)

    class _Loader(yaml.SafeLoader):
        pass

    def construct_mapping(loader, node, deep=False):
        first = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in first:
                raise ConfigError(
                    f"config file {config_file!r}: key {key!r} appears twice in one mapping (line "
                    f"{first[key] + 1}, then line {key_node.start_mark.line + 1}); YAML keeps only "
                    "the last value, without a word. Keep one")
            first[key] = key_node.start_mark.line
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    _Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_Loader)
    except (yaml.YAMLError, UnicodeDecodeError):
        return
    base = data.get("_BASE_") if isinstance(data, dict) else None
    if isinstance(base, str) and not base.startswith(("detectron2://", "http")):
        check_no_repeated_yaml_keys(os.path.join(os.path.dirname(path), os.path.expanduser(base)),
                                    seen)


def _int_as_float(cfg, key, value):
    """``value`` written as a float where ``key`` holds a float and ``value`` is an int literal
    ("SOLVER.TIME_BUDGET_MINUTES 5" over 12.5): yacs would refuse it as a type mismatch."""
    node = cfg
    for part in str(key).split("."):
        if not isinstance(node, dict) or part not in node:
            return value
        node = node[part]
    if not isinstance(node, float) or not isinstance(value, str):
        return value
    try:
        literal = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value
    return repr(float(literal)) if type(literal) is int else value


def merge_config_opts(cfg, opts: List[str]) -> None:
    """``cfg.merge_from_list(opts)`` (command-line ``KEY VALUE`` pairs); problems become a
    ``ConfigError`` naming the option. An int given for a float key is taken as that float."""
    opts = list(opts)
    check_no_flags_among_options(opts)
    if len(opts) % 2:
        raise ConfigError(f"config options must be KEY VALUE pairs; got an odd number "
                          f"({len(opts)}): {opts}")
    opts = [v if i % 2 == 0 else _int_as_float(cfg, opts[i - 1], v) for i, v in enumerate(opts)]
    try:
        cfg.merge_from_list(opts)
    except (KeyError, AssertionError) as e:
        message = _unknown_key_message(cfg, e)
        if message is not None:
            raise ConfigError(f"command-line option: {message}") from None
        if isinstance(e, KeyError):
            raise
        raise ConfigError(f"command-line {_option_of(opts, e)}: {e}") from None
    except ValueError as e:
        raise ConfigError(f"command-line {_option_of(opts, e)}: {e}") from None


def flag_among_options(opts: List[str]) -> Optional[tuple]:
    """(the flag, the options before it) for the first ``--flag`` among trailing ``KEY VALUE``
    options, else None. detectron2's parsers read everything after the first KEY as config
    options, so ``... SOLVER.MAX_ITER 10 --resume`` would end in "an odd number" or "unknown
    config key '--resume'". Config keys and values never start with ``--`` (``-1`` is a
    value)."""
    for i, token in enumerate(opts):
        if token.startswith("--") and len(token) > 2 and token[2].isalpha():
            return token.split("=", 1)[0], " ".join(opts[max(0, i - 2):i])
    return None


def check_no_flags_among_options(opts: List[str]) -> None:
    """Raise ``ConfigError`` naming a ``--flag`` that stands among the KEY VALUE options."""
    found = flag_among_options(opts)
    if found:
        flag, before = found
        raise ConfigError(
            f"the flag {flag} stands among the KEY VALUE config options (after "
            f"'{before or 'the options'}'): everything after the first KEY is read as a config "
            f"option. Put {flag} (with its value, if it takes one) before the options, e.g. "
            f"--config-file CFG {flag} ... KEY VALUE")


def _option_of(opts: List[str], err: Exception) -> str:
    """"option KEY VALUE" of the pair that ``err`` (a yacs message naming the key) is about,
    else "options [all of them]"."""
    match = re.search(r"config key: (\S+)", str(err))
    if match:
        keys = opts[0::2]
        if match.group(1) in keys:
            i = keys.index(match.group(1))
            return f"option {opts[2 * i]} {opts[2 * i + 1]}"
    return f"options {opts}"
