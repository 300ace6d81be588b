"""Finds import cycles between cliprt's modules, and files in src/ over the size limit (ARCHITECTURE.md, "Layers").

    python3 tools/module_cycles.py [--max-lines 700]

Two levels are checked:
  - top-level modules of the library (crate::X, every file under src/X/ counted as X);
  - sibling modules inside each folder module (src/X/a.rs and src/X/b.rs; the folder's mod.rs is their parent and
    may use them, and they it, without that counting as a cycle).
A reference is any `crate::a::…` path (in `use` lines or inline), or `super::b` / `self::b` resolved to a sibling.
Comments and doc comments are ignored. Files over the limit are listed unless their first 30 lines say why
("over ~700 lines:"). Exits 1 on any cycle or unexplained long file.
"""

import argparse
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def code_lines(path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            stripped = line.lstrip()
            if stripped.startswith("//"):
                continue
            yield line.split("//", 1)[0] if "\"" not in line else line


def module_of(rel):
    """src-relative path -> module path list, e.g. cpu/amx/gemm.rs -> ['cpu', 'amx', 'gemm']."""
    parts = rel[:-3].split(os.sep)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return parts


def cycles(graph):
    """The strongly connected components of a {node: set(nodes)} graph with more than one node (Tarjan)."""
    index, low, on, stack, out = {}, {}, set(), [], []

    def visit(n):
        index[n] = low[n] = len(index)
        stack.append(n)
        on.add(n)
        for m in sorted(graph.get(n, ())):
            if m not in index:
                visit(m)
                low[n] = min(low[n], low[m])
            elif m in on:
                low[n] = min(low[n], index[m])
        if low[n] == index[n]:
            comp = []
            while True:
                m = stack.pop()
                on.discard(m)
                comp.append(m)
                if m == n:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for n in sorted(set(graph) | {m for v in graph.values() for m in v}):
        if n not in index:
            visit(n)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-lines", type=int, default=700)
    args = ap.parse_args()
    files = []
    for root, _, names in os.walk(SRC):
        for n in names:
            if n.endswith(".rs"):
                files.append(os.path.relpath(os.path.join(root, n), SRC))
    top_modules = {module_of(f)[0] for f in files if module_of(f)}
    top = {}
    siblings = {}
    crate_ref = re.compile(r"crate::([a-z_][a-z0-9_]*)")
    local_ref = re.compile(r"\b(?:super|self)::([a-z_][a-z0-9_]*)")
    failures = []
    for rel in sorted(files):
        mod = module_of(rel)
        path = os.path.join(SRC, rel)
        text = "".join(code_lines(path))
        if not mod or rel in ("main.rs",) or rel.startswith("bin" + os.sep):
            continue
        here = mod[0]
        for m in crate_ref.findall(text):
            if m in top_modules and m != here:
                top.setdefault(here, set()).add(m)
        # Sibling references inside a folder module: the parent is mod[:-1] for a leaf file.
        is_folder_root = rel.endswith("mod.rs")
        if len(mod) >= 2 and not is_folder_root:
            parent = tuple(mod[:-1])
            for m in local_ref.findall(text) if "super::" in text else []:
                sib = os.path.join(*parent, m + ".rs")
                sib_dir = os.path.join(*parent, m, "mod.rs")
                if m != mod[-1] and (sib in files or sib_dir in files):
                    siblings.setdefault(parent, {}).setdefault(mod[-1], set()).add(m)
            prefix = "crate::" + "::".join(parent) + "::"
            for m in re.findall(re.escape(prefix) + r"([a-z_][a-z0-9_]*)", text):
                sib = os.path.join(*parent, m + ".rs")
                sib_dir = os.path.join(*parent, m, "mod.rs")
                if m != mod[-1] and (sib in files or sib_dir in files):
                    siblings.setdefault(parent, {}).setdefault(mod[-1], set()).add(m)
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
        if len(lines) > args.max_lines:
            head = "".join(lines[:30])
            if "over ~700 lines:" not in head:
                failures.append(f"src/{rel}: {len(lines)} lines, over {args.max_lines} with no note saying why")
            else:
                print(f"note: src/{rel}: {len(lines)} lines (its note says why)")
    for comp in cycles(top):
        failures.append("top-level modules that use each other: " + ", ".join(comp))
    for parent, graph in sorted(siblings.items()):
        for comp in cycles(graph):
            failures.append(f"modules inside {'::'.join(parent)} that use each other: " + ", ".join(comp))
    edges = sum(len(v) for v in top.values())
    print(f"{len(files)} files, {len(top_modules)} top-level modules, {edges} dependencies between them")
    for f in failures:
        print("FAIL:", f)
    if not failures:
        print("ok: no module import cycle, no unexplained file over", args.max_lines, "lines")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
