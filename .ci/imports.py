#!/usr/bin/env python3
"""The crate's module import graph, drawn from the `crate::`, `super::` and
`self::` paths in src/ (comments, string literals and `#[cfg(test)]` modules,
inline or in their own file, left out; src/bin is its own crate). Issue 26: every import points down.

It counts three things:

- circles: modules that import each other, directly or through others
  (a strongly connected component of the module graph; an edge from a module
  to one of its own ancestors is not part of this graph, see the next item);
- upward imports: a module naming an item *defined* in the file of one of its
  ancestors: `super::Store` in `store/sessions.rs` when `struct Store` is
  written in `store/mod.rs`, `crate::X` when `X` is written in `lib.rs`.
  Naming a sibling (`super::sibling::X`), or a name the ancestor only
  re-exports from one of its children (`super::X` where the parent's file says
  `pub use child::X`), is not upward: the item lives below the ancestor;
- root re-export imports: a module naming `crate::X` where `X` is one of the
  crate root's re-exports (`pub use store::Store;` in `lib.rs`) instead of the
  module that defines it.

It prints the counts and every upward and root re-export import, and fails
on any of the three (root re-export imports: 0 when this was written; upward
imports: 0 since backend/redis/, the last parent that defined items its
children named, became a thin index like store/, backend/ and axum/: each
`mod.rs` only declares and re-exports its children).

Usage: python3 .ci/imports.py [--quiet]   (--quiet: counts and failures only)
"""
import collections
import os
import re
import sys

# Which counts fail the check: circles, and each other count from the day it
# reached 0 on main (root re-exports: since this check was written; upward
# imports: since backend/redis/mod.rs became a thin index, issue 26).
FAIL_ON = {'circles', 'upward', 'root re-export'}

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'src')
quiet = '--quiet' in sys.argv[1:]


def modname(path):
    rel = os.path.relpath(path, root)[:-3]
    parts = rel.split(os.sep)
    if parts[-1] == 'mod':
        parts = parts[:-1]
    if parts == ['lib']:
        return 'crate'
    return 'crate::' + '::'.join(parts)


def strip(src):
    """Source without comments, string/char literals and #[cfg(test)] modules."""
    src = re.sub(r'r(#*)"(.*?)"\1', '""', src, flags=re.S)  # raw strings
    src = re.sub(r'"(?:\\.|[^"\\])*"', '""', src, flags=re.S)
    src = re.sub(r"'(?:\\.|[^'\\])'", "' '", src)
    src = re.sub(r'/\*.*?\*/', '', src, flags=re.S)
    src = re.sub(r'//[^\n]*', '', src)
    out, i = [], 0
    # `#[cfg(test)]` or `#[cfg(all(test, ...))]`: compiled only into unit tests.
    test_mod = re.compile(r'#\[cfg\((?:test|all\([^\]]*\btest\b[^\]]*\))\)\]\s*'
                          r'(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{')
    while True:
        m = test_mod.search(src, i)
        if not m:
            out.append(src[i:])
            break
        out.append(src[i:m.start()])
        depth, j = 1, m.end()
        while j < len(src) and depth:
            depth += {'{': 1, '}': -1}.get(src[j], 0)
            j += 1
        i = j
    return ''.join(out)


mods = {}
# Out-of-line unit-test modules (`#[cfg(test)] mod tests;` in a parent file):
# left out like inline ones (a test module names its parent's items by design).
test_file_mod = re.compile(r'#\[cfg\((?:test|all\([^\]]*\btest\b[^\]]*\))\)\]\s*'
                           r'(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;')
test_files = set()
for d, _, fs in os.walk(root):
    if 'bin' in os.path.relpath(d, root).split(os.sep):
        continue
    for f in fs:
        if f.endswith('.rs'):
            p = os.path.join(d, f)
            raw = open(p, encoding='utf-8').read()
            mods[modname(p)] = strip(raw)
            parent = modname(p)
            for t in test_file_mod.findall(re.sub(r'//[^\n]*', '', raw)):
                test_files.add(parent + '::' + t)
for m in list(mods):
    if any(m == t or m.startswith(t + '::') for t in test_files):
        del mods[m]
names = set(mods)

IDENT = r'[A-Za-z_][A-Za-z0-9_]*'
# Items a file defines (at any indentation: enough for `mod` files, which
# define their items at top level).
DEFINES = re.compile(
    r'^\s*(?:pub(?:\([^)]*\))?\s+)?(?:unsafe\s+)?(?:async\s+)?(?:const\s+)?'
    r'(?:struct|enum|union|trait|type|fn|const|static|macro_rules!)\s+(' + IDENT + ')',
    re.M)
defined = {m: set(DEFINES.findall(src)) for m, src in mods.items()}
# Uses inside a file (`use` declarations).
USE = re.compile(r'\b(pub(?:\([^)]*\))?\s+)?use\s+([^;]*);', re.S)


def expand(tree):
    """`a::{b, c::{d, e as f}, g::*}` -> ['a::b', 'a::c::d', 'a::c::e', 'a::g::*']."""
    # Aliases first (`e as f`), then the rest of the whitespace: a name that
    # merely contains `as` (`split_id_hash`) stays whole.
    tree = re.sub(r'\s+as\s+', '\0', tree)
    tree = re.sub(r'\s+', '', tree).replace('\0', ' as ')
    out = []

    def go(prefix, s):
        depth, start, parts = 0, 0, []
        for k, ch in enumerate(s):
            if ch == '{':
                depth += 1
            elif ch == '}':
                depth -= 1
            elif ch == ',' and depth == 0:
                parts.append(s[start:k])
                start = k + 1
        parts.append(s[start:])
        for part in parts:
            if not part:
                continue
            b = part.find('{')
            if b >= 0:
                go(prefix + part[:b], part[b + 1:part.rfind('}')])
            else:
                path = (prefix + part).split(' as ')[0]
                if path.endswith('::self'):
                    path = path[:-len('::self')]
                out.append(path)

    go('', tree)
    return out


def absolute(m, path):
    """The path `path`, written in module `m`, from the crate root; None if external."""
    segs = path.split('::')
    if segs[0] == 'crate':
        return segs
    if segs[0] not in ('super', 'self'):
        return None
    base = m.split('::')
    while segs and segs[0] in ('super', 'self'):
        if segs.pop(0) == 'super':
            base = base[:-1]
    return base + segs


def module_of(abs_segs):
    """(deepest module that is a prefix of the path, the rest of the path)."""
    for i in range(len(abs_segs), 0, -1):
        c = '::'.join(abs_segs[:i])
        if c in names:
            return c, abs_segs[i:]
    return None, abs_segs


# The crate root's re-exports: name -> the path it re-exports.
root_reexports = {}
for mm in USE.finditer(mods['crate']):
    if mm.group(1):
        for p in expand(mm.group(2)):
            segs = absolute('crate', 'crate::' + p if not p.startswith(('crate', 'self', 'super')) else p)
            if segs:
                root_reexports[segs[-1]] = segs

paths = collections.defaultdict(set)  # module -> absolute paths it names
for m, src in mods.items():
    for mm in USE.finditer(src):
        if m == 'crate':
            continue  # the root's own `use`s are its re-exports (above)
        for p in expand(mm.group(2)):
            segs = absolute(m, p)
            if segs:
                paths[m].add(tuple(segs))
    rest = USE.sub('', src)
    for mm in re.finditer(r'(?<![A-Za-z0-9_$])((?:crate|super|self)(?:::' + IDENT + r')+)', rest):
        segs = absolute(m, mm.group(1))
        if segs:
            paths[m].add(tuple(segs))

edges, upward, via_root = set(), set(), set()
for m, ps in paths.items():
    ancestors = {'::'.join(m.split('::')[:i]) for i in range(1, len(m.split('::')))}
    for segs in ps:
        segs = list(segs)
        if segs == ['crate'] or not segs:
            continue
        target, rest = module_of(segs)
        if target == 'crate' and rest and rest[0] in root_reexports and m != 'crate':
            via_root.add((m, rest[0]))
            target, rest = module_of(root_reexports[rest[0]])
        if target is None:
            continue
        if target in ancestors and rest and rest[0] != '*' and rest[0] in defined[target]:
            upward.add((m, target, rest[0]))
        elif target in ancestors and rest and rest[0] == '*':
            upward.add((m, target, '*'))
        if target != m and target not in ancestors:
            edges.add((m, target))

# Circles: strongly connected components (Tarjan).
g = collections.defaultdict(set)
for a, b in edges:
    g[a].add(b)
idx, low, st, on, sccs, counter = {}, {}, [], set(), [], [0]
sys.setrecursionlimit(10000)


def sc(v):
    idx[v] = low[v] = counter[0]
    counter[0] += 1
    st.append(v)
    on.add(v)
    for w in sorted(g[v]):
        if w not in idx:
            sc(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], idx[w])
    if low[v] == idx[v]:
        comp = []
        while True:
            w = st.pop()
            on.discard(w)
            comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            sccs.append(comp)


for v in sorted(names):
    if v not in idx:
        sc(v)


def short(m):
    return m[len('crate::'):] if m.startswith('crate::') else m


counts = {'circles': len(sccs), 'upward': len(upward), 'root re-export': len(via_root)}
up_pairs = len({(m, t) for m, t, _ in upward})
print(f"import graph: {len(names)} modules, {len(edges)} edges, {counts['circles']} circles, "
      f"{counts['upward']} upward imports (names; {up_pairs} module -> ancestor pairs), "
      f"{counts['root re-export']} imports through the crate root's re-exports")
for s in sccs:
    print('CYCLE:', sorted(short(x) for x in s))
if not quiet:
    for m, t, name in sorted(upward):
        note = '' if 'upward' in FAIL_ON else ' (reported, not failed)'
        print(f'UPWARD: {short(m)} -> {short(t)}::{name}{note}')
    for m, name in sorted(via_root):
        src = '::'.join(root_reexports[name][1:])
        print(f'ROOT RE-EXPORT: {short(m)} -> crate::{name} (defined at {src})')
failed = [k for k in ('circles', 'upward', 'root re-export') if counts[k] and k in FAIL_ON]
if failed:
    print('FAILED:', ', '.join(failed), file=sys.stderr)
sys.exit(1 if failed else 0)
