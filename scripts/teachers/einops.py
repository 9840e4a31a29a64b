"""A small stand-in for einops.rearrange / repeat, enough for the CompVis LDM modules
(Debian 12 packages no einops). Patterns: named axes, parenthesised groups, '()' or '1' for
a unit axis; sizes of split groups come from keyword arguments."""
import re
import torch


def _groups(side):
    out, cur = [], None
    for tok in re.findall(r'\(|\)|\w+', side):
        if tok == '(':
            cur = []
        elif tok == ')':
            out.append(cur)
            cur = None
        elif cur is not None:
            cur.append(tok)
        else:
            out.append([] if tok == '1' else [tok])
    return out


def _sizes(t, lhs, known):
    sizes = dict(known)
    for g, n in zip(lhs, t.shape):
        unknown = [a for a in g if a not in sizes]
        prod = 1
        for a in g:
            if a in sizes:
                prod *= sizes[a]
        if len(unknown) == 1:
            sizes[unknown[0]] = n // prod
    return sizes


def rearrange(t, pattern, **known):
    lhs, rhs = (_groups(s) for s in pattern.split('->'))
    sizes = _sizes(t, lhs, known)
    axes = [a for g in lhs for a in g]
    t = t.reshape([sizes[a] for a in axes])
    order = [axes.index(a) for g in rhs for a in g]
    t = t.permute(order)
    return t.reshape([_prod(sizes, g) for g in rhs])


def repeat(t, pattern, **known):
    lhs, rhs = (_groups(s) for s in pattern.split('->'))
    sizes = _sizes(t, lhs, known)
    axes = [a for g in lhs for a in g]
    t = t.reshape([sizes[a] for a in axes])
    out_axes = [a for g in rhs for a in g]
    t = t.permute([axes.index(a) for a in out_axes if a in axes])
    # axes the input lacks enter as size-1 views, then expand to their given size
    view, k = [], 0
    for a in out_axes:
        if a in axes:
            view.append(t.shape[k])
            k += 1
        else:
            view.append(1)
    t = t.reshape(view).expand([sizes[a] for a in out_axes])
    return t.reshape([_prod(sizes, g) for g in rhs])


def _prod(sizes, g):
    p = 1
    for a in g:
        p *= sizes[a]
    return p
