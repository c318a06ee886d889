"""The comparison helper must catch an unwritten element and a wrong value."""
import pytest
import torch

from helpers import assert_matches, poisoned, ref_norm


def test_unwritten_element_fails():
    x = torch.randn(4, 64)
    out = poisoned(x.shape, torch.float32, "cpu")
    out[:3] = ref_norm(x)[:3].float()
    with pytest.raises(AssertionError):
        assert_matches(out, ref_norm(x), torch.float32)


def test_wrong_value_fails():
    x = torch.randn(4, 64)
    out = ref_norm(x).float() * 1.01
    with pytest.raises(AssertionError):
        assert_matches(out, ref_norm(x), torch.float32)
