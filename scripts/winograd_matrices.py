"""Derives the Winograd F(m, r) transform matrices that crates/zoo-core/src/ops/winograd.rs
hard-codes, checks them exactly, and measures their f32 error.

For a correlation y_i = sum_j g_j d_{i+j} (m outputs, r taps, alpha = m + r - 1 inputs) and
interpolation points p_0..p_{alpha-2} plus infinity: with V_k the alpha x k evaluation matrix
(rows [1, p, p^2, ..] and [0, .., 0, 1] for infinity), y = A^T [(G g) o (B^T d)] with G = V_r,
A = V_m and B^T = V_alpha^{-T}; each row of B^T is then scaled to integers and G's row divided
by the same factor. Prints B^T, G, A^T for each case and the largest error of a 256-channel
f32 sum (relative to the largest output) over random 2-d tiles.

Usage: python scripts/winograd_matrices.py   (needs numpy)
"""
from fractions import Fraction as F
from math import lcm

import numpy as np


def inverse(m):
    n = len(m)
    a = [row[:] + [F(int(i == j)) for j in range(n)] for i, row in enumerate(m)]
    for c in range(n):
        p = next(i for i in range(c, n) if a[i][c] != 0)
        a[c], a[p] = a[p], a[c]
        pivot = a[c][c]
        a[c] = [x / pivot for x in a[c]]
        for i in range(n):
            if i != c and a[i][c] != 0:
                f = a[i][c]
                a[i] = [x - f * y for x, y in zip(a[i], a[c])]
    return [row[n:] for row in a]


def matrices(m, r, points):
    alpha = m + r - 1

    def evaluation(k):
        rows = [[p**i for i in range(k)] for p in points]
        rows.append([F(0)] * (k - 1) + [F(1)])
        return rows

    w_inv = inverse(evaluation(alpha))
    bt = [[w_inv[j][i] for j in range(alpha)] for i in range(alpha)]
    g = evaluation(r)
    at = [[evaluation(m)[j][i] for j in range(alpha)] for i in range(m)]
    for x in range(alpha):
        scale = 1
        for v in bt[x]:
            scale = lcm(scale, v.denominator)
        bt[x] = [v * scale for v in bt[x]]
        g[x] = [v / scale for v in g[x]]
    # Exact check on integers.
    rng = np.random.default_rng(1)
    for _ in range(5):
        gg = [F(int(v)) for v in rng.integers(-9, 9, r)]
        dd = [F(int(v)) for v in rng.integers(-9, 9, alpha)]
        want = [sum(gg[j] * dd[i + j] for j in range(r)) for i in range(m)]
        u = [sum(g[x][k] * gg[k] for k in range(r)) for x in range(alpha)]
        v = [sum(bt[x][k] * dd[k] for k in range(alpha)) for x in range(alpha)]
        got = [sum(at[i][x] * u[x] * v[x] for x in range(alpha)) for i in range(m)]
        assert got == want, (m, r, got, want)
    return bt, g, at


def f32_error(m, r, points, channels=256, trials=20):
    bt, g, at = (np.array([[float(v) for v in row] for row in mat]) for mat in matrices(m, r, points))
    alpha = m + r - 1
    rng = np.random.default_rng(0)
    f32 = np.float32
    worst = 0.0
    for _ in range(trials):
        d = rng.uniform(-1, 1, (channels, alpha, alpha)).astype(f32)
        k = rng.uniform(-1, 1, (channels, r, r)).astype(f32)
        want = np.array([[np.sum(d[:, i:i + r, j:j + r].astype(np.float64) * k.astype(np.float64))
                          for j in range(m)] for i in range(m)])
        u = np.einsum("ab,cbd,ed->cae", g.astype(f32), k, g.astype(f32)).astype(f32)
        v = np.einsum("ab,cbd,ed->cae", bt.astype(f32), d, bt.astype(f32)).astype(f32)
        got = at.astype(f32) @ (u * v).sum(0, dtype=f32) @ at.T.astype(f32)
        worst = max(worst, np.abs(got - want).max() / np.abs(want).max())
    return worst


CASES = [
    (2, 3, [0, 1, -1]),
    (4, 3, [0, 1, -1, 2, -2]),
    (4, 5, [0, 1, -1, 2, -2, F(1, 2), F(-1, 2)]),
]

if __name__ == "__main__":
    for m, r, points in CASES:
        points = [F(p) for p in points]
        bt, g, at = matrices(m, r, points)
        print(f"F({m}, {r}), points {[str(p) for p in points]} and infinity")
        for name, mat in (("B^T", bt), ("G", g), ("A^T", at)):
            print(f"  {name}:")
            for row in mat:
                print("    " + "  ".join(f"{str(v):>6}" for v in row))
        print(f"  largest f32 error, 256 channels: {f32_error(m, r, points):.1e}")
