"""Row layouts and the exact overlap test, against brute force."""
import itertools

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qknorm.layout import overlap, row_layout, views_overlap


def test_packed_q_view_merges_to_two_dims():
    lay = row_layout((16, 32, 128), (6144, 128, 1))
    assert lay.n_rows == 512 and lay.sizes == (16, 32, 1) and lay.strides[0] == (6144, 128, 0, 1)


def test_contiguous_merges_to_one_dim():
    lay = row_layout((4, 5, 6, 64), (1920, 384, 64, 1), (1920, 384, 64, 1))
    assert lay.sizes == (120, 1, 1) and lay.strides == ((64, 0, 0, 1), (64, 0, 0, 1))


def test_merge_is_joint_over_tensors():
    # x contiguous, out with a padded row: the two lead dims merge for x but not for out
    lay = row_layout((4, 5, 64), (320, 64, 1), (400, 64, 1))
    assert lay.sizes == (4, 5, 1)


def test_too_many_dims():
    assert row_layout((2, 2, 2, 2, 8), (100, 40, 12, 3, 1)) is None


def _offsets(base, sizes, strides):
    return {base + sum(i * s for i, s in zip(idx, strides))
            for idx in itertools.product(*(range(n) for n in sizes))}


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_views_overlap_matches_brute_force(data):
    def view():
        nd = data.draw(st.integers(1, 3))
        sizes = tuple(data.draw(st.lists(st.integers(1, 4), min_size=nd, max_size=nd)))
        strides = tuple(data.draw(st.lists(st.integers(0, 24), min_size=nd, max_size=nd)))
        return sizes, strides
    sa, ta = view()
    sb, tb = view()
    delta = data.draw(st.integers(-40, 40))
    expect = bool(_offsets(0, sa, ta) & _offsets(delta, sb, tb))
    got = views_overlap(delta, sa, ta, sb, tb)
    assert got is None or got == expect, (delta, sa, ta, sb, tb)


def test_packed_qkv_views_are_disjoint_and_decided():
    qkv = torch.empty(4096, (32 + 16) * 128)
    q = qkv[:, :4096].view(4096, 32, 128)
    k = qkv[:, 4096:5120].view(4096, 8, 128)
    v = qkv[:, 5120:].view(4096, 8, 128)
    assert overlap(q, k) is False and overlap(k, v) is False
    assert overlap(q, q[:, 1:]) is True
    assert overlap(qkv[:, :10], qkv[:, 5:20]) is True
