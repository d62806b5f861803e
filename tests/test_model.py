import json

import pytest
import torch

from cminet import CMINet, CMINetConfig
from cminet.model import count_flops, count_parameters

from .helpers import non_max_rule_model


@pytest.fixture(scope="module")
def model():
    return non_max_rule_model()


@pytest.mark.parametrize("size", [(16, 16), (64, 64), (200, 312), (256, 256), (17, 45)])
def test_any_size_gives_same_shape_in_unit_range(model, size):
    a, b = torch.rand(2, 1, *size), torch.rand(2, 1, *size)
    with torch.no_grad():
        f = model(a, b)
    assert f.shape == a.shape
    assert torch.isfinite(f).all()
    assert f.min() >= 0 and f.max() <= 1


@pytest.mark.parametrize("field,values", [("recursions", [1, 2, 4]), ("interactions", [1, 3, 5])])
def test_recursion_shares_weights(field, values):
    counts = {count_parameters(CMINet(CMINetConfig(**{field: v}))) for v in values}
    assert len(counts) == 1


def test_recursion_changes_the_computation():
    torch.manual_seed(0)
    m1 = CMINet(CMINetConfig(recursions=1)).eval()
    m3 = CMINet(CMINetConfig(recursions=3)).eval()
    m3.load_state_dict(m1.state_dict())
    for p in m1.parameters():  # make the transformer blocks matter
        p.data.add_(0.05 * torch.randn_like(p))
    m3.load_state_dict(m1.state_dict())
    a = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(m1(a, a), m3(a, a))


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = CMINet().train()
    # Non-zero GADN γ so its α also receives gradient (γ = 0 makes the gate constant), and a
    # non-zero last tail conv (it starts at zero so the untrained model is the max rule).
    for module in model.modules():
        if module.__class__.__name__ == "GADN":
            module.gamma.data.fill_(0.5)
    torch.nn.init.normal_(model.tail[-1].weight, std=0.05)
    a, b = torch.rand(2, 1, 32, 48), torch.rand(2, 1, 32, 48)
    model(a, b).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_eval_is_deterministic(model):
    a, b = torch.rand(1, 1, 64, 80), torch.rand(1, 1, 64, 80)
    with torch.no_grad():
        assert torch.equal(model(a, b), model(a, b))


def test_batch_items_are_independent(model):
    a, b = torch.rand(3, 1, 48, 48), torch.rand(3, 1, 48, 48)
    with torch.no_grad():
        batched = model(a, b)
        single = model(a[1:2], b[1:2])
    torch.testing.assert_close(batched[1:2], single, atol=1e-5, rtol=1e-5)


def test_untrained_max_residual_model_is_the_max_rule():
    a, b = torch.rand(2, 1, 24, 40), torch.rand(2, 1, 24, 40)
    with torch.no_grad():
        assert torch.equal(CMINet()(a, b), torch.maximum(a, b))
        assert not torch.equal(CMINet(CMINetConfig(output="sigmoid"))(a, b), torch.maximum(a, b))


def test_config_json_round_trip():
    cfg = CMINetConfig(channels=12, recursions=3, mlp_ratio=1.5)
    again = CMINetConfig.from_json(cfg.to_json())
    assert again == cfg
    assert json.loads(cfg.to_json())["recursions"] == 3


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="divisible"):
        CMINetConfig(embed_dim=10, num_heads=3)
    with pytest.raises(ValueError, match="unknown"):
        CMINetConfig.from_dict({"channels": 8, "colour": "red"})


def test_budget_at_default_config(model):
    assert count_parameters(model) <= 500_000
    assert count_flops(model, 256, 256) <= 8e9


def test_flops_grow_with_pixels(model):
    small, large = count_flops(model, 128, 128), count_flops(model, 256, 256)
    assert 3.5 < large / small < 4.5  # means, not global attention: ~linear in pixels


def test_fused_attention_gives_the_explicit_attentions_outputs_and_gradients():
    """PyTorch runs attention through scaled_dot_product_attention; the explicit MatMul/Softmax
    form (what export writes) gives the same outputs and gradients on the shipped weights."""
    from cminet.fusion import load_pretrained
    from cminet.model import Attention, explicit_attention

    model = load_pretrained()
    generator = torch.Generator().manual_seed(0)
    for size in (48, 256):
        a, b = (torch.rand(1, 1, size, size, generator=generator) for _ in range(2))
        with torch.no_grad():
            fused = model(a, b)
            with explicit_attention(model):
                explicit = model(a, b)
        assert (fused - explicit).abs().max().item() <= 1e-5
    assert not any(m.explicit for m in model.modules() if isinstance(m, Attention))  # restored
    grads = []
    for explicit_form in (False, True):
        model.zero_grad()
        with explicit_attention(model) if explicit_form else torch.enable_grad():
            model(a[..., :48, :48], b[..., :48, :48]).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
