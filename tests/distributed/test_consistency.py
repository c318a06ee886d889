"""qknorm.distributed.consistency: the group checks and the ``check=True`` protocol, in process.

The real multi-rank runs (every mismatch raising on every rank of gloo groups of 2 and 3)
are cases of ``test_multi_rank.py``; here the other ranks' descriptors are faked by
replacing ``all_gather`` on a one-rank group, to pin the messages.
"""
import pytest
import torch
import torch.distributed as dist

from qknorm.distributed import consistency, qk_rms_norm_tp, rms_norm_tp


def test_no_process_group_raises():
    if dist.is_initialized():
        pytest.skip("a default process group is already initialised in this process")
    x = torch.randn(3, 32)
    with pytest.raises(RuntimeError, match="no process group is initialised.*init_process_group"):
        rms_norm_tp(x, None)
    with pytest.raises(RuntimeError, match="no process group is initialised"):
        qk_rms_norm_tp(x, x[:, :16], None, None, check=True)


def _fake_peers(monkeypatch, *peers):
    """Make ``all_gather`` on the one-rank group return this rank's descriptor followed by
    ``peers`` (dicts of fields that differ from this rank's)."""
    def all_gather(table, mine, group=None):
        rows = [mine.clone()]
        for p in peers:
            row = dict(zip(consistency.FIELDS, mine.tolist()))
            row.update(p)
            rows.append(torch.tensor([float(row[f]) for f in consistency.FIELDS], dtype=torch.float64))
        table[:] = rows
    monkeypatch.setattr(dist, "all_gather", all_gather)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 1 + len(peers))


@pytest.mark.parametrize("peer,exc,match", [
    (dict(a_dtype=3), TypeError, r"q dtypes differ across ranks: \[bfloat16, float32\]"),
    (dict(b_rows=7), ValueError, r"k row counts .* differ across ranks: \[4, 7\]"),
    (dict(eps=1e-5), ValueError, "eps differs across ranks"),
    (dict(weight_offset=1.0), ValueError, "weight_offset differs across ranks"),
    (dict(has_weight=1), ValueError, "weight presence differs across ranks"),
    (dict(op=1), ValueError, "ranks call different ops"),
    (dict(error=1), ValueError, r"rank\(s\) \[1\] of the group rejected their arguments"),
    (dict(a_full=96), ValueError, r"q full widths differ across ranks: \[64, 96\] \(local widths \[32, 32\]\)"),
])
def test_check_messages(one_rank, monkeypatch, peer, exc, match):
    q, k = torch.randn(4, 32, dtype=torch.bfloat16), torch.randn(4, 16, dtype=torch.bfloat16)
    before = q.clone()
    _fake_peers(monkeypatch, peer)
    with pytest.raises(exc, match=match):
        qk_rms_norm_tp(q, k, None, None, check=True, q_full_width=64, k_full_width=32, q_out=q, k_out=k)
    assert torch.equal(q, before), "written before the error"


def test_check_widths_must_sum_to_full(one_rank, monkeypatch):
    x = torch.randn(3, 32)
    _fake_peers(monkeypatch, dict(a_width=40))
    with pytest.raises(ValueError, match=r"x local widths per rank \[32, 40\] sum to 72, but the full width is 64 "
                                         r"\(for uneven shards pass full_width=72\)"):
        rms_norm_tp(x, None, check=True)


def test_check_agreeing_ranks_pass(one_rank):
    q, k = torch.randn(4, 32), torch.randn(4, 16)
    qo, ko = qk_rms_norm_tp(q, k, None, None, check=True)
    assert qo.shape == q.shape and ko.shape == k.shape


def test_cpu_tensors_on_nccl_group_raise(one_rank, monkeypatch):
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    with pytest.raises(ValueError, match="backend is NCCL, which only reduces CUDA tensors"):
        rms_norm_tp(torch.randn(2, 8), None)
