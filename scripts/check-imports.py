#!/usr/bin/env python3
"""Checks that the imports between the files of src/ run one way.

Every `crate::`, `super::` and `self::` path of a file (use lines, and paths written out in
code) is resolved to the deepest module file it names. Two kinds of arrow are errors:
  - a circle: files that import each other, directly or through others;
  - an upward arrow: a file importing its own parent module (its mod.rs or lib.rs), which
    declares it (types the two share belong in a sibling below both).
A parent importing its children (declarations, re-exports) is the one direction allowed.
Comments are ignored. rustc itself would accept both kinds; this is the house rule.

  scripts/check-imports.py [SRC]   prints each circle and upward arrow, exit 1; else
                                   `imports: N files, M arrows, no circle`, exit 0.
"""
import os
import re
import sys


def module_of(path, src):
    parts = os.path.relpath(path, src)[:-3].split(os.sep)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def resolve(modules, current, segs):
    """The deepest module a path names, or None (an external crate, or not a module path)."""
    if segs[0] == "crate":
        base, segs = [], segs[1:]
    elif segs[0] == "super":
        base = list(current)
        while segs and segs[0] == "super":
            base, segs = base[:-1], segs[1:]
    elif segs[0] == "self":
        base, segs = list(current), segs[1:]
    else:
        return None
    best = None
    for i in range(len(segs) + 1):
        if tuple(base + segs[:i]) in modules:
            best = tuple(base + segs[:i])
    return best


def arrows(src):
    texts = {}
    for d, _, names in os.walk(src):
        for n in names:
            if n.endswith(".rs"):
                p = os.path.join(d, n)
                with open(p, encoding="utf-8") as f:
                    texts[module_of(p, src)] = re.sub(r"//[^\n]*", "", f.read())
    # main.rs is its own crate (the binary): it reaches the library by name, not `crate::`.
    texts.pop(("main",), None)
    modules = set(texts)
    edges = set()
    for cur, text in texts.items():
        paths = [m.split("::") for m in re.findall(r"\b(?:crate|super|self)(?:::\w+)+", text)]
        # Grouped imports: `use super::{a, b::C}` names `super::a` and `super::b`.
        for root, group in re.findall(r"\b(crate|super|self)::\{([^;]*?)\}\s*;", text, re.S):
            paths += [[root, item] for item in re.findall(r"(?:^|[{,])\s*(\w+)", group)]
        for segs in paths:
            t = resolve(modules, cur, segs)
            if t is not None and t != cur:
                edges.add((cur, t))
    return modules, edges


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src")
    modules, edges = arrows(src)
    name = lambda m: "::".join(m) or "crate"
    errors = []
    graph = {m: set() for m in modules}
    for a, b in sorted(edges):
        if a[: len(b)] == b:
            errors.append(f"upward arrow: {name(a)} imports its parent {name(b)}")
        elif b[: len(a)] != a:
            graph[a].add(b)
    # Tarjan's strongly connected components: each of more than one file is a circle.
    index, low, stack, on, order = {}, {}, [], set(), [0]

    def visit(v):
        index[v] = low[v] = order[0]
        order[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                errors.append("circle: " + " <-> ".join(sorted(map(name, comp))))

    sys.setrecursionlimit(10000)
    for v in sorted(modules):
        if v not in index:
            visit(v)
    for e in errors:
        print(e)
    if errors:
        sys.exit(1)
    print(f"imports: {len(modules)} files, {len(edges)} arrows, no circle")


if __name__ == "__main__":
    main()
