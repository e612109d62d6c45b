"""The autoencoder family, its losses and the DAE's corruptions (networks, losses, noise)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from MedAutoencoderLib.config import ModelConfig
from MedAutoencoderLib.errors import ConfigurationError
from MedAutoencoderLib.networks.autoencoders import build_network
from MedAutoencoderLib.networks.losses import AutoencoderLoss, reconstruction_from_output, sparsity_penalty
from MedAutoencoderLib.networks.noise import coarse_noise, corrupt, synthetic_anomalies


def tiny(name: str, dims: int = 2, **kw) -> ModelConfig:
    return ModelConfig(name=name, spatial_dims=dims, channels=(8, 16), latent_channels=4, **kw)


def blob_batch(n: int = 4, size: int = 32) -> torch.Tensor:
    """Smooth bright blobs on a dark background, intensities in [0, 1]."""
    generator = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size] / size
    images = []
    for _ in range(n):
        cy, cx, r = generator.uniform(0.35, 0.65), generator.uniform(0.35, 0.65), generator.uniform(0.15, 0.3)
        images.append(np.clip(1.2 - ((yy - cy) ** 2 + (xx - cx) ** 2) / r ** 2, 0, 1) * 0.9)
    return torch.tensor(np.stack(images)[:, None], dtype=torch.float32)


@pytest.mark.parametrize("name", ["ae", "sparse", "vae", "dae"])
def test_2d_forward_shapes(name):
    torch.manual_seed(0)
    network = build_network(tiny(name)).eval()
    x = torch.rand(3, 1, 32, 48)
    with torch.no_grad():
        out = network(x)
    assert out["reconstruction"].shape == x.shape
    if name != "dae":
        assert out["code"].shape == (3, 4, 8, 12)  # latent_channels wide, two halvings
    if name == "vae":
        assert out["mu"].shape == out["logvar"].shape == out["code"].shape
    assert network.encode(x)["code"].shape[0] == 3


@pytest.mark.parametrize("name", ["ae", "dae"])
def test_3d_forward_shapes(name):
    torch.manual_seed(0)
    network = build_network(tiny(name, dims=3)).eval()
    x = torch.rand(2, 1, 16, 16, 32)
    with torch.no_grad():
        out = network(x)
    assert out["reconstruction"].shape == x.shape
    assert network.encode(x)["code"].dim() == 5


@pytest.mark.parametrize("base, groups", [(16, 8), (8, 8), (12, 6), (10, 5), (6, 6), (24, 8)])
def test_dae_builds_for_any_first_level_width(base, groups):
    """Group norm needs widths divisible by its group count: 12 or 10 channels used to fail inside torch."""
    network = build_network(ModelConfig(name="dae", channels=(base, 2 * base)))
    norms = [m for m in network.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and {m.num_groups for m in norms} == {groups}
    with torch.no_grad():
        assert network(torch.rand(1, 1, 32, 32))["reconstruction"].shape == (1, 1, 32, 32)


@pytest.mark.parametrize("size", [32, 40])
def test_dae_pads_its_upsampled_maps_only_where_sizes_need_it(size):
    """MONAI's UpCat copies each upsampled map through a padding even when it has its skip connection's size; the
    DAE turns that off for sizes that are multiples of 16 (same output to the bit) and keeps it for others (40:
    the poolings floor 5 to 2, the padding restores 5)."""
    network = build_network(ModelConfig(name="dae", channels=(8, 16))).eval()
    ups = (network.unet.upcat_4, network.unet.upcat_3, network.unet.upcat_2, network.unet.upcat_1)
    x = torch.rand(3, 1, size, size)
    with torch.no_grad():
        ours = network(x)["reconstruction"]
        assert [up.is_pad for up in ups] == [size % 16 != 0] * 4 and ours.shape == x.shape
        for up in ups:
            up.is_pad = True  # MONAI's own way
        assert torch.equal(ours, network.unet(x))  # without the copies (32) or with them (40, as MONAI)


@pytest.mark.parametrize("dims", [2, 3])
def test_unshuffled_dae_runs_its_unet_at_half_resolution_with_the_same_parameters(dims):
    """--unshuffle 2 folds each 2x2(x2) block into channels: the U-Net sees half the grid, the output has the
    input's; only the first and last layers widen, and grids must divide by 16 x 2."""
    plain, folded = (ModelConfig(name="dae", spatial_dims=dims, channels=(8, 16), unshuffle=u) for u in (1, 2))
    network = build_network(folded).eval()
    size = (1, 1) + (32,) * dims
    seen = []
    network.unet.conv_0.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    with torch.no_grad():
        assert network(torch.rand(size))["reconstruction"].shape == size
        code = network.encode(torch.rand(size))["code"]
    assert seen[0] == (1, 2 ** dims) + (16,) * dims and code.shape[2:] == (1,) * dims
    extra = sum(p.numel() for p in network.parameters()) - sum(p.numel() for p in build_network(plain).parameters())
    first, last = network.unet.conv_0.conv_0.conv, network.unet.final_conv
    assert extra == (2 ** dims - 1) * (first.weight[:, 0].numel() + last.weight[0].numel() + 1)
    assert folded.downsampling_factor == 32 and plain.downsampling_factor == 16
    with pytest.raises(ConfigurationError, match="unshuffle"):
        ModelConfig(unshuffle=0).validate()
    assert any("--unshuffle" in s for s in ModelConfig(name="ae", unshuffle=2).ignored_settings())


def test_vae_decodes_the_mean_in_eval_mode_and_samples_in_training():
    torch.manual_seed(0)
    network = build_network(tiny("vae"))
    x = blob_batch(2)
    network.eval()
    with torch.no_grad():
        first, second = network(x), network(x)
        from_mu = network.decode(first["mu"])
    assert torch.equal(first["reconstruction"], second["reconstruction"])
    assert torch.allclose(first["reconstruction"], from_mu)
    network.train()
    with torch.no_grad():
        a, b = network(x), network(x)
    assert not torch.allclose(a["reconstruction"], b["reconstruction"])


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["mse", "l1", "ssim", "bce"])
@pytest.mark.parametrize("name", ["ae", "sparse", "vae", "dae"])
def test_loss_decreases_on_a_fixed_batch(name, loss):
    torch.manual_seed(0)
    config = tiny(name, reconstruction_loss=loss)
    network = build_network(config)
    objective = AutoencoderLoss(config)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    x = blob_batch(4)
    network.train()
    losses = []
    for _ in range(30):
        parts = objective(network(x), x)
        assert set(parts) >= {"reconstruction", "total"}
        optimizer.zero_grad()
        parts["total"].backward()
        optimizer.step()
        losses.append(float(parts["total"].detach()))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    if loss == "bce":  # BCE networks emit logits; the image is their sigmoid
        network.eval()
        with torch.no_grad():
            image = reconstruction_from_output(network(x)["reconstruction"], config)
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0


def test_regularisers_appear_in_the_loss():
    x = blob_batch(2)
    torch.manual_seed(0)
    vae = tiny("vae")
    parts = AutoencoderLoss(vae)(build_network(vae)(x), x)
    assert float(parts["kl"].detach()) > 0
    assert float(parts["total"].detach()) == pytest.approx(float((parts["reconstruction"] + parts["kl"]).detach()))
    sparse = tiny("sparse")
    parts = AutoencoderLoss(sparse)(build_network(sparse)(x), x)
    assert float(parts["sparsity"].detach()) > 0


def test_sparse_kl_penalty_is_positive_and_finite():
    config = tiny("sparse", sparsity="kl")
    torch.manual_seed(0)
    code = torch.randn(4, 4, 8, 8) * 3
    penalty = sparsity_penalty(code, config)
    assert torch.isfinite(penalty) and float(penalty) > 0
    # a code whose sigmoid activation equals the target rate has (almost) no penalty
    at_target = torch.full((4, 4, 8, 8), float(np.log(0.05 / 0.95)))
    assert float(sparsity_penalty(at_target, config)) == pytest.approx(0.0, abs=1e-4)
    network = build_network(config)
    parts = AutoencoderLoss(config)(network(blob_batch(2)), blob_batch(2))
    assert torch.isfinite(parts["sparsity"]) and float(parts["sparsity"].detach()) > 0


def _neighbour_correlation(noise: torch.Tensor) -> float:
    a = noise[..., :, :-1].flatten().numpy()
    b = noise[..., :, 1:].flatten().numpy()
    return float(np.corrcoef(a, b)[0, 1])


def test_coarse_noise_is_smooth_and_gaussian_noise_is_not():
    generator = torch.Generator().manual_seed(0)
    coarse = coarse_noise(torch.Size((4, 1, 64, 64)), cells=16, std=0.2, generator=generator)
    assert coarse.shape == (4, 1, 64, 64)
    assert _neighbour_correlation(coarse) > 0.9
    assert 0.05 < float(coarse.std()) < 0.3

    clean = torch.zeros(4, 1, 64, 64)
    everywhere = torch.ones_like(clean)
    gaussian = corrupt(clean, everywhere, tiny("dae", noise="gaussian"), torch.Generator().manual_seed(0))
    assert abs(_neighbour_correlation(gaussian)) < 0.1
    assert float(gaussian.std()) == pytest.approx(0.2, rel=0.1)
    coarse3d = coarse_noise(torch.Size((1, 1, 16, 32, 32)), cells=4, std=0.2, generator=generator)
    assert coarse3d.shape == (1, 1, 16, 32, 32) and _neighbour_correlation(coarse3d) > 0.9


@pytest.mark.parametrize("noise", ["coarse", "gaussian"])
def test_corruption_stays_inside_the_foreground(noise):
    clean = blob_batch(3, 64)
    foreground = (clean > 0).float()
    assert 0 < float(foreground.mean()) < 1
    noisy = corrupt(clean, foreground, tiny("dae", noise=noise), torch.Generator().manual_seed(1))
    change = noisy - clean
    assert torch.all(change[foreground == 0] == 0)
    assert float(change[foreground == 1].abs().mean()) > 0.02


def test_unknown_model_settings_are_refused():
    for bad in (dict(name="gan"), dict(spatial_dims=4), dict(reconstruction_loss="huber"), dict(noise="salt")):
        with pytest.raises(ConfigurationError):
            build_network(ModelConfig(**bad))


def test_restoration_corruption_paints_one_anomaly_inside_the_foreground_only():
    clean = torch.full((6, 1, 48, 48), 0.5)
    foreground = torch.zeros_like(clean)
    foreground[:5, :, 8:40, 8:40] = 1  # the last sample has none
    painted = synthetic_anomalies(clean, foreground, torch.Generator().manual_seed(3), share=1.0)
    changed = (painted - clean).abs() > 1e-6
    assert not changed[foreground == 0].any() and not changed[5].any()
    for b in range(5):
        assert changed[b].any()
        ratio = painted[b][changed[b]] / 0.5
        assert (ratio > 1).all() or (ratio < 1).all()  # one blob: all brighter or all darker
        extreme = ratio.max() if ratio.max() > 1 else ratio.min()
        assert 1.4 <= extreme <= 2.2 or 0.3 <= extreme <= 0.7
    again = synthetic_anomalies(clean, foreground, torch.Generator().manual_seed(3), share=1.0)
    assert torch.equal(painted, again)
    assert torch.equal(synthetic_anomalies(clean, foreground, torch.Generator().manual_seed(3), share=0.0), clean)
    noisy = corrupt(clean, foreground, ModelConfig(noise="restore"), torch.Generator().manual_seed(3))
    assert noisy.shape == clean.shape and not torch.equal(noisy, painted)  # coarse noise on top
    with pytest.raises(ConfigurationError, match="'restore'"):
        ModelConfig(noise="blobs").validate()


def _onednn_ran(run) -> bool:
    from torch.profiler import profile

    with profile() as trace:
        run()
    return any(event.key == "aten::mkldnn_convolution" for event in trace.key_averages())


def test_onednn_convolutions_compute_what_pytorchs_do():
    """The extractor's thin 3D convolutions go to oneDNN (PyTorch would unfold them: N x C x D x H <= 20480 here):
    the same function within float rounding, on channels-last and plain inputs, the same state dict; other types,
    unbatched inputs, autocast, oneDNN switched off, and layers that are not zero-padded Conv3d, as before."""
    import platform

    from MedAutoencoderLib.networks.onednn import OneDnnConv3d, convolutions_by_onednn

    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.PReLU(),
                                  torch.nn.Conv3d(8, 16, 3, stride=2, padding=1),
                                  torch.nn.Conv3d(16, 4, 3, padding=1, padding_mode="replicate"),
                                  torch.nn.ConvTranspose3d(4, 2, 3, stride=2, padding=1, output_padding=1)).eval()
    names = list(network.state_dict())
    x = torch.rand(1, 1, 24, 40, 40)
    with torch.no_grad():
        expected = network(x)
        assert not _onednn_ran(lambda: network(x))  # PyTorch's own choice for these sizes
        convolutions_by_onednn(network)
        converted = [type(m) for m in network]
        assert list(network.state_dict()) == names
        if not (torch.backends.mkldnn.is_available() and platform.machine().lower() in ("x86_64", "amd64")):
            assert converted[:3] == [torch.nn.Conv3d, torch.nn.PReLU, torch.nn.Conv3d]
            return
        assert converted == [OneDnnConv3d, torch.nn.PReLU, OneDnnConv3d, torch.nn.Conv3d, torch.nn.ConvTranspose3d]
        assert _onednn_ran(lambda: network(x))
        torch.testing.assert_close(network(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(network(x.contiguous(memory_format=torch.channels_last_3d)), expected,
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(network(x[0]), expected[0], rtol=1e-5, atol=1e-5)  # unbatched: Conv3d's way
        with torch.backends.mkldnn.flags(enabled=False):
            assert not _onednn_ran(lambda: network(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert network[0](x).dtype == torch.bfloat16  # autocast's type, as Conv3d gives
        double = network.double()
        torch.testing.assert_close(double(x.double()), expected.double(), rtol=1e-5, atol=1e-5)
