"""Fast KL threshold search (Numba), same contract as :func:`kldiv.entropy.divergence_curve`.

Without smoothing, candidate ``i`` costs O(levels) instead of O(i). Within group ``k`` every
non-empty bin gets the same ``q = g_k / n_k`` (group total over its non-empty bins), so

    sum_{j in k, P_j > 0} h_j log(h_j / q)  =  sum_{j in k} h_j log h_j  -  g_k log(g_k / n_k)

and the three sums come from prefix sums over the histogram: counts (exact int64), number of
non-empty bins, and ``h log h`` (kept as a double-double so that differences of large prefixes
stay accurate). The outlier bins (``P[i-1]``, and ``P[0]`` when signed) are corrected on their
own. With normalizations ``S = sum(P)`` and ``S_Q = sum(H[kept])``::

    KL(P || Q) = (sum over groups of the above) / S + log(S_Q / S)

With ``smoothing='eps'`` the closed form breaks; an O(i) loop computes the reference formula.

Every kernel takes ``min_nonempty`` (``EntropyOptions.min_nonempty_bins``): a candidate whose
window holds at least one but fewer than ``min_nonempty`` non-empty bins is degenerate and gets
``inf``, as in the reference (one comparison per candidate, from the non-empty prefix sum).

The minimum is chosen as the reference chooses it: the kernel curve agrees with the reference
to ~1e-13, so only candidates whose kernel value lies within a small band above the kernel
minimum can be the reference's minimum. If the band holds one candidate it is the answer;
otherwise the tie rule is applied to the band's exact reference values: 0.0 where ``Q``
provably equals ``P`` bin for bin, the reference code itself elsewhere
(:func:`kldiv.entropy.pick_kernel_minimum`; :func:`kldiv.entropy.search_threshold` prepares
these kernels' arguments from its options and calls them through
:func:`kldiv._kernels.resolve`).
"""

from __future__ import annotations

import math

import numpy as np

from ._jit import jit

__all__: list[str] = []  # private kernels, called by kldiv._kernels.wrappers


@jit
def _xlogx(h):  # pragma: no cover - compiled
    if h <= 0:
        return 0.0
    x = float(h)
    return x * math.log(x)


@jit
def _window(i, z, signed):  # pragma: no cover - compiled
    """Bins ``[lo, hi)`` kept by candidate ``i``: ``[0, i)`` for |x|, ``[z-i, z+i]`` signed."""
    if signed:
        return z - i, z + i + 1
    return 0, i


@jit
def _prefix_sums(h):  # pragma: no cover - compiled
    """Prefix sums over the bins.

    Counts (exact), non-empty bins, and ``h log h`` kept as a double-double (hi, lo) so that
    differences of large prefixes stay accurate.
    """
    n_bins = h.size
    c = np.zeros(n_bins + 1, dtype=np.int64)
    nz = np.zeros(n_bins + 1, dtype=np.int64)
    cl_hi = np.zeros(n_bins + 1, dtype=np.float64)
    cl_lo = np.zeros(n_bins + 1, dtype=np.float64)
    for j in range(n_bins):
        c[j + 1] = c[j] + h[j]
        nz[j + 1] = nz[j] + (1 if h[j] != 0 else 0)
        a = cl_hi[j]
        b = _xlogx(h[j])
        s = a + b  # TwoSum: s + err == a + b exactly
        bb = s - a
        err = (a - (s - bb)) + (b - bb)
        cl_hi[j + 1] = s
        cl_lo[j + 1] = cl_lo[j] + err
    return c, nz, cl_hi, cl_lo


@jit
def _group_term(c, nz, cl_hi, cl_lo, lo, hi):  # pragma: no cover - compiled
    """sum_{j in [lo, hi)} h_j log h_j  -  g log(g / n): a group without outliers."""
    g = c[hi] - c[lo]
    if g == 0:
        return 0.0
    n = nz[hi] - nz[lo]
    sum_hlogh = (cl_hi[hi] - cl_hi[lo]) + (cl_lo[hi] - cl_lo[lo])
    return sum_hlogh - float(g) * math.log(float(g) / float(n))


@jit
def _curve_closed_form(
    h, candidates, signed, levels, grouping, empty_p, min_nonempty
):  # pragma: no cover
    n_bins = h.size
    c, nz, cl_hi, cl_lo = _prefix_sums(h)
    total = c[n_bins]
    s_total = float(total)
    z = n_bins // 2
    # Groups without outliers depend only on their bins [start, start + width): their terms
    # are memoized, so most of the 128 groups of a candidate cost a lookup, not a log.
    max_width = (n_bins + levels - 1) // levels + 1
    use_memo = n_bins * max_width <= 4_000_000
    memo = np.full(n_bins * max_width if use_memo else 1, np.nan)
    bounds = np.empty(levels + 1, dtype=np.int64)
    out = np.empty(candidates.size, dtype=np.float64)
    for ci in range(candidates.size):
        i = candidates[ci]
        lo, hi = _window(i, z, signed)
        length = hi - lo
        left_out = c[lo]
        right_out = total - c[hi]
        s_q = c[hi] - c[lo]
        if s_q == 0 or nz[hi] - nz[lo] < min_nonempty:  # empty or degenerate window
            out[ci] = np.inf
            continue
        width = length // levels
        rem = length - width * levels
        # group k covers [bounds[k], bounds[k + 1]) of the kept bins
        if grouping == 0:
            # proportional: bounds[k] = ceil(k * length / levels), kept as quotient and
            # remainder of (k * length + levels - 1) / levels (no division per group)
            quo = 0
            res = levels - 1
            for k in range(levels + 1):
                bounds[k] = quo
                quo += width
                res += rem
                carry = np.int64(res >= levels)
                quo += carry
                res -= carry * levels
        else:  # floor width, remainder into the last group
            for k in range(levels):
                bounds[k] = k * width
            bounds[levels] = length
        # groups without outlier bins: memoized terms (a lookup, not a log, for most)
        k_first = 1 if (signed and left_out > 0) else 0
        k_last = levels - 1 if right_out > 0 else levels
        acc = 0.0
        for k in range(k_first, k_last):
            a = lo + bounds[k]
            b = lo + bounds[k + 1]
            if a >= b:
                continue
            if use_memo and b - a < max_width:  # (floor's wide last group: not memoized)
                key = a * max_width + (b - a)
                t = memo[key]
                if math.isnan(t):  # not computed yet
                    t = _group_term(c, nz, cl_hi, cl_lo, a, b)
                    memo[key] = t
            else:
                t = _group_term(c, nz, cl_hi, cl_lo, a, b)
            acc += t
        # the groups holding outlier bins: P there is H plus the clipped mass
        infinite = False
        for k in range(levels):
            if k_first <= k < k_last:
                continue
            a = bounds[k]
            b = bounds[k + 1]
            if a >= b:
                continue
            first = signed and a == 0 and left_out > 0
            last = b == length and right_out > 0
            g = c[lo + b] - c[lo + a]
            n = nz[lo + b] - nz[lo + a]
            sum_hlogh = (cl_hi[lo + b] - cl_hi[lo + a]) + (cl_lo[lo + b] - cl_lo[lo + a])
            g_p = g
            if first:
                hb = h[lo]
                extra = left_out
                if length == 1:
                    extra += right_out
                if hb == 0:
                    if empty_p:
                        n += 1
                    else:
                        infinite = True
                        break
                sum_hlogh += _xlogx(hb + extra) - _xlogx(hb)
                g_p += extra
            if last and not (first and length == 1):
                hb = h[hi - 1]
                if hb == 0:
                    if empty_p:
                        n += 1
                    else:
                        infinite = True
                        break
                sum_hlogh += _xlogx(hb + right_out) - _xlogx(hb)
                g_p += right_out
            if g_p == 0:
                continue
            if g == 0:
                infinite = True
                break
            acc += sum_hlogh - float(g_p) * math.log(float(g) / float(n))
        if infinite:
            out[ci] = np.inf
        else:
            out[ci] = acc / s_total + math.log(float(s_q) / s_total)
    return out


@jit
def _curve_abs_proportional(
    h, candidates, levels, shift, empty_p, min_nonempty
):  # pragma: no cover - compiled
    """The closed form for ``domain='abs'`` with proportional grouping (TensorRT, ModelOpt).

    The same terms as :func:`_curve_closed_form`, organized for speed on one core:

    * candidate ``i`` has groups of two widths only, ``i // levels`` and one more, starting
      before ``i``; so the term of every group any candidate can use is computed up front,
      branch-free, into ``memo[width, start]`` (~22k terms for 2048 bins, against ~246k group
      visits);
    * the walk over a candidate's groups is then one load per group, the bounds computed by
      a shift when ``levels`` is a power of two (``shift >= 0``, e.g. 128), summed in four
      accumulators so that the floating-point adds do not wait on each other.
    """
    n_bins = h.size
    c, nz, cl_hi, cl_lo = _prefix_sums(h)
    total = c[n_bins]
    s_total = float(total)
    max_width = 1
    for ci in range(candidates.size):
        max_width = max(max_width, candidates[ci] // levels + 1)
    # memo[wd * stride + a]: term of the group [a, a + wd); flat, indexed by hand (cheaper
    # than 2-D indexing in the hot loop)
    stride = n_bins + 9  # rows padded off a multiple of 4 KiB apart
    memo = np.empty((max_width + 1) * stride, dtype=np.float64)
    memo[:stride] = 0.0  # empty groups (candidates below `levels` bins)
    for wd in range(1, max_width + 1):
        # a group of width wd starts before a candidate i < levels * (wd + 1)
        a_end = min(n_bins - wd, levels * (wd + 1))
        for a in range(a_end + 1):
            memo[wd * stride + a] = _group_term(c, nz, cl_hi, cl_lo, a, a + wd)
    out = np.empty(candidates.size, dtype=np.float64)
    for ci in range(candidates.size):
        i = candidates[ci]
        right_out = total - c[i]
        s_q = c[i]
        if s_q == 0 or nz[i] < min_nonempty:  # empty or degenerate window
            out[ci] = np.inf
            continue
        width = i // levels
        rem = i - width * levels
        k_last = levels - 1 if right_out > 0 else levels
        acc0 = 0.0
        acc1 = 0.0
        acc2 = 0.0
        acc3 = 0.0
        a = 0
        k = 0
        if shift >= 0:
            # levels = 2**shift: bound k = ceil(k * i / levels) by a shift, each bound
            # independent of the last (no dependency chain between groups); four accumulators
            # so that the floating-point adds do not wait on each other
            bias = levels - 1
            while k + 3 < k_last:
                b1 = ((k + 1) * i + bias) >> shift
                b2 = ((k + 2) * i + bias) >> shift
                b3 = ((k + 3) * i + bias) >> shift
                b4 = ((k + 4) * i + bias) >> shift
                acc0 += memo[(b1 - a) * stride + a]
                acc1 += memo[(b2 - b1) * stride + b1]
                acc2 += memo[(b3 - b2) * stride + b2]
                acc3 += memo[(b4 - b3) * stride + b3]
                a = b4
                k += 4
            while k < k_last:
                b = ((k + 1) * i + bias) >> shift
                acc0 += memo[(b - a) * stride + a]
                a = b
                k += 1
        else:
            # any other level count: bounds advanced as quotient and remainder, the carry
            # branch-free (its pattern is irregular and would defeat branch prediction)
            quo = 0
            res = levels - 1
            while k < k_last:
                res += rem
                carry = np.int64(res >= levels)
                quo += width + carry
                res -= carry * levels
                if k & 1:
                    acc1 += memo[(quo - a) * stride + a]
                else:
                    acc0 += memo[(quo - a) * stride + a]
                a = quo
                k += 1
        acc = (acc0 + acc1) + (acc2 + acc3)
        if right_out > 0 and a < i:
            # the last group [a, i) holds P[i-1] = H[i-1] + outliers
            g = c[i] - c[a]
            n = nz[i] - nz[a]
            sum_hlogh = (cl_hi[i] - cl_hi[a]) + (cl_lo[i] - cl_lo[a])
            hb = h[i - 1]
            if hb == 0:
                if empty_p:
                    n += 1
                else:
                    out[ci] = np.inf
                    continue
            if g == 0:
                out[ci] = np.inf
                continue
            sum_hlogh += _xlogx(hb + right_out) - _xlogx(hb)
            acc += sum_hlogh - float(g + right_out) * math.log(float(g) / float(n))
        out[ci] = acc / s_total + math.log(float(s_q) / s_total)
    return out


@jit
def _smooth_inplace(vec, eps):  # pragma: no cover - compiled
    """MXNet smoothing; False when it cannot make every entry positive."""
    n_zero = 0
    for j in range(vec.size):
        if vec[j] == 0:
            n_zero += 1
    n_nonzero = vec.size - n_zero
    if n_nonzero == 0:
        return False
    eps1 = eps * n_zero / n_nonzero
    ok = True
    for j in range(vec.size):
        if vec[j] == 0:
            vec[j] = eps
        else:
            vec[j] = vec[j] - eps1
            if vec[j] <= 0:
                ok = False
    return ok


@jit
def _curve_smoothed(
    h, candidates, signed, levels, grouping, eps, min_nonempty
):  # pragma: no cover
    """O(i) per candidate: MXNet / ONNX Runtime eps smoothing, emptiness from P."""
    n_bins = h.size
    z = n_bins // 2
    total = 0
    for j in range(n_bins):
        total += h[j]
    out = np.empty(candidates.size, dtype=np.float64)
    group_sum = np.zeros(levels, dtype=np.float64)
    group_nz = np.zeros(levels, dtype=np.float64)
    for ci in range(candidates.size):
        i = candidates[ci]
        lo, hi = _window(i, z, signed)
        length = hi - lo
        p = np.empty(length, dtype=np.float64)
        s_q = 0
        n_nonempty = 0
        for j in range(length):
            p[j] = float(h[lo + j])
            s_q += h[lo + j]
            if h[lo + j] != 0:
                n_nonempty += 1
        if 0 < n_nonempty < min_nonempty:  # degenerate window
            out[ci] = np.inf
            continue
        left = 0
        for j in range(lo):
            left += h[j]
        p[0] += float(left)
        p[length - 1] += float(total - s_q - left)
        width = length // levels
        group_sum[:] = 0.0
        group_nz[:] = 0.0
        grp = np.empty(length, dtype=np.int64)
        for j in range(length):
            if grouping == 0:
                k = j * levels // length
            else:
                k = min(j // width, levels - 1)
            grp[j] = k
            group_sum[k] += float(h[lo + j])
            if p[j] != 0:
                group_nz[k] += 1.0
        q = np.zeros(length, dtype=np.float64)
        for j in range(length):
            if p[j] != 0:
                q[j] = group_sum[grp[j]] / group_nz[grp[j]]
        # smoothing of both vectors, then KL of the normalized results
        if not (_smooth_inplace(p, eps) and _smooth_inplace(q, eps)):
            out[ci] = np.inf
            continue
        ps = 0.0
        qs = 0.0
        for j in range(length):
            ps += p[j]
            qs += q[j]
        kl = 0.0
        for j in range(length):
            pj = p[j] / ps
            qj = q[j] / qs
            kl += pj * math.log(pj / qj)
        out[ci] = kl
    return out
