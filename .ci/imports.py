#!/usr/bin/env python3
"""The crate's module import graph, drawn from `crate::` and `super::` paths in
src/ (comments and unit-test modules left out): fails if any modules import
each other in a circle (issue 26: every import points down)."""
import re,os,sys,itertools
root=os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'src')
def modname(path):
    rel=os.path.relpath(path,root)[:-3]
    parts=rel.split('/')
    if parts[-1]=='mod': parts=parts[:-1]
    if parts==['lib']: return 'crate'
    return '::'.join(parts)
mods={}
for d,_,fs in os.walk(root):
    if 'bin' in d.split('/'): continue
    for f in fs:
        if f.endswith('.rs'):
            p=os.path.join(d,f); mods[modname(p)]=open(p).read()
names=set(mods)
def resolve(path):
    parts=path.split('::')
    best=None
    for i in range(len(parts),0,-1):
        c='::'.join(parts[:i])
        if c in names: return c
    return None
edges=set()
for m,src in mods.items():
    src=re.sub(r'//[^\n]*', '', src)
    src=re.sub(r'#\[cfg\(test\)\]\s*mod tests\s*\{.*', '', src, flags=re.S)  # drop unit tests
    for mm in re.finditer(r'crate::([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*)', src):
        t=resolve(mm.group(1))
        if t and t!=m and not m.startswith(t+'::') : edges.add((m,t))
    for mm in re.finditer(r'\bsuper::([a-z_][a-z0-9_]*)', src):
        parent='::'.join(m.split('::')[:-1])
        cand=(parent+'::' if parent else '')+mm.group(1)
        if cand in names and cand!=m: edges.add((m,cand))
# cycles at module level via SCC
import collections
g=collections.defaultdict(set)
for a,b in edges: g[a].add(b)
idx={};low={};st=[];on=set();sccs=[];c=[0]
sys.setrecursionlimit(10000)
def sc(v):
    idx[v]=low[v]=c[0];c[0]+=1;st.append(v);on.add(v)
    for w in g[v]:
        if w not in idx: sc(w);low[v]=min(low[v],low[w])
        elif w in on: low[v]=min(low[v],idx[w])
    if low[v]==idx[v]:
        comp=[]
        while True:
            w=st.pop();on.discard(w);comp.append(w)
            if w==v:break
        if len(comp)>1: sccs.append(comp)
for v in list(names):
    if v not in idx: sc(v)
print('import graph:',len(names),'modules,',len(edges),'edges,',len(sccs),'circles')
for s in sccs: print('CYCLE:',sorted(s))
# child->parent-module imports ("upward" into an ancestor's items other than via super is fine?) list edges to ancestors
sys.exit(1 if sccs else 0)
