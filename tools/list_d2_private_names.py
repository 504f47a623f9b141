#!/usr/bin/env python
"""List every private (``_name``) detectron2 / fvcore name that focal_rpn's code reads or writes.

A name counts when focal_rpn uses it as an attribute (``x._name``, or ``getattr(x, "_name")``
and the like), imports it, or defines a method of that name (an override), and detectron2 or fvcore define it (``def _name``,
``self._name =``, ``_name =``, ``class _name``), torch.nn.Module's own names aside. Names that focal_rpn's own classes define for
themselves, and that only happen to be spelled like a detectron2 one, are shown as "own" when
the class that uses them defines them and subclasses nothing of detectron2's that has them.

Prints ``path:line: name`` for each use; exits 1 if one is outside ``focal_rpn/d2_adapter.py``.
Usage: python tools/list_d2_private_names.py
"""
import ast
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADAPTER = os.path.join("focal_rpn", "d2_adapter.py")
PRIVATE = re.compile(r"^_[A-Za-z][A-Za-z0-9_]*$")


def library_private_names():
    """Private names defined in the installed detectron2 and fvcore packages."""
    import detectron2
    import fvcore
    import torch

    names = set()
    pattern = re.compile(r"(?:def|class)\s+(_[A-Za-z]\w*)|self\.(_[A-Za-z]\w*)\s*=|^(_[A-Za-z]\w*)\s*=",
                         re.M)
    for package in (detectron2, fvcore):
        for folder, _, files in os.walk(os.path.dirname(package.__file__)):
            for name in files:
                if name.endswith(".py"):
                    with open(os.path.join(folder, name), encoding="utf-8") as f:
                        for match in pattern.finditer(f.read()):
                            names.add(next(g for g in match.groups() if g))
    return names - set(dir(torch.nn.Module))  # torch's own override points (_load_from_state_dict)


def own_attributes(tree):
    """``self._name`` assigned in focal_rpn's own code: attributes of focal_rpn's classes."""
    own = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) or isinstance(node, ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for sub in ast.walk(t):
                    if (isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name)
                            and sub.value.id == "self"):
                        own.add(sub.attr)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)) and PRIVATE.match(node.name):
            own.add(node.name)
    return own


def uses(path, tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and PRIVATE.match(node.attr):
            yield node.lineno, node.attr, isinstance(node.value, ast.Name) and node.value.id == "self"
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if PRIVATE.match(alias.name) and (node.module or "").startswith(("detectron2", "fvcore")):
                    yield node.lineno, alias.name, False
        elif isinstance(node, ast.FunctionDef) and PRIVATE.match(node.name):
            yield node.lineno, node.name, True
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr", "setattr", "delattr")
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
              and isinstance(node.args[1].value, str) and PRIVATE.match(node.args[1].value)):
            yield node.lineno, node.args[1].value, False


def main():
    library = library_private_names()
    outside = 0
    for folder in ("focal_rpn", "tools"):
        for base, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in sorted(files):
                if not name.endswith(".py"):
                    continue
                path = os.path.join(base, name)
                rel = os.path.relpath(path, ROOT)
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read())
                own = own_attributes(tree)
                for line, attr, on_self in sorted(set(uses(path, tree))):
                    if attr not in library:
                        continue
                    if on_self and attr in own and rel != ADAPTER:
                        print(f"{rel}:{line}: {attr}  (own: defined by focal_rpn's class here)")
                        continue
                    print(f"{rel}:{line}: {attr}")
                    outside += rel != ADAPTER
    if outside:
        print(f"{outside} use(s) of private detectron2 names outside {ADAPTER}")
        return 1
    print(f"every private detectron2 / fvcore name used is in {ADAPTER}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
