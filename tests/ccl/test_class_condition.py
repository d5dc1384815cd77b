"""The class-conditioned student: FiLM starts as the identity, each class is decoded under its own
modulation, the wrong-class margin against a hand computation, and the deployable graph of one class."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ccl.losses.wrong_class import pixel_distance, wrong_class_loss
from ccl.models import RDCCL
from ccl.models.class_condition import ClassFiLM
from ccl.models.inference_graph import InferenceGraph

CLASSES = ("toy/a", "toy/b", "toy/c")


def model(seed: int = 0, **kw) -> RDCCL:
    torch.manual_seed(seed)
    return RDCCL(teacher="resnet18", pretrained="none", projector="none", lambda_local=0, lambda_global=0, **kw)


def randomize(m: RDCCL) -> None:
    with torch.no_grad():
        for table in (m.condition.scale, m.condition.shift):
            table.weight.normal_(0, 0.5)


@pytest.mark.parametrize("inner", [False, True])
def test_an_untrained_conditioning_is_the_identity_so_training_starts_from_joint_rd(inner: bool) -> None:
    x = torch.randn(3, 3, 64, 64)
    plain, conditioned = model().eval(), model(condition_classes=CLASSES, condition_inner=inner).eval()
    with torch.no_grad():
        want = plain(x)["anomaly_map"]
        got = conditioned(x, labels=torch.tensor([2, 0, 1]))["anomaly_map"]
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_inner_conditioning_modulates_between_the_decoder_layers_and_keeps_their_outputs() -> None:
    m = model(condition_classes=CLASSES, condition_inner=True).eval()
    assert [tuple(t.weight.shape) for pair in m.condition.between for t in pair] == [(3, 256)] * 2 + [(3, 128)] * 2
    with torch.no_grad():
        m.condition.between[0][1].weight[1].fill_(3.0)  # class 1: layer 1's output shifted before layer 2
        code = torch.randn(2, m.neck.out_channels, 1, 1)
        plain = m.decoder(code)
        got = m.decode(code, torch.tensor([0, 1]))
    torch.testing.assert_close(got[2], plain[2], rtol=0, atol=0)  # layer 1's own map is not modulated
    torch.testing.assert_close(got[1][0], plain[1][0], rtol=0, atol=0)  # class 0: nothing changes
    assert not torch.allclose(got[1][1], plain[1][1])  # class 1: layer 2 read the shifted map
    with pytest.raises(ValueError, match="condition_inner needs condition_classes"):
        model(condition_inner=True)


def test_each_image_is_decoded_under_its_own_class() -> None:
    m = model(condition_classes=CLASSES).eval()
    randomize(m)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        together = m(x, labels=torch.tensor([0, 1, 2]))["score"]
        alone = [float(m(x[i:i + 1], labels=torch.tensor([c]))["score"]) for i, c in enumerate((0, 1, 2))]
        other = m(x, labels=torch.tensor([1, 2, 0]))["score"]
    np.testing.assert_allclose(together.numpy(), alone, rtol=1e-5)
    assert not torch.allclose(together, other, rtol=1e-3)  # the class changes what the decoder rebuilds
    with pytest.raises(ValueError, match="conditioned on the class of every image"):
        m(x)


def test_film_modulates_the_code_per_class_by_hand() -> None:
    film = ClassFiLM(["x", "y"], channels=2)
    with torch.no_grad():
        film.scale.weight.copy_(torch.tensor([[0.0, 1.0], [-0.5, 0.0]]))
        film.shift.weight.copy_(torch.tensor([[0.0, 0.0], [2.0, -1.0]]))
    code = torch.ones(2, 2, 1, 1)
    out = film(code, torch.tensor([0, 1]))[:, :, 0, 0]
    torch.testing.assert_close(out, torch.tensor([[1.0, 2.0], [2.5, 0.0]]))
    with pytest.raises(ValueError, match="distinct"):
        ClassFiLM(["x", "x"], 2)


def test_a_wrong_class_is_never_the_own_one_and_covers_every_other() -> None:
    film = ClassFiLM(["a", "b", "c", "d"], 1)
    classes = torch.tensor([0, 1, 2, 3] * 500)
    wrong = film.other_classes(classes)
    assert bool((wrong != classes).all())
    for c in range(4):
        counts = np.bincount(wrong[classes == c].numpy(), minlength=4)
        assert counts[c] == 0 and all(counts[o] > 100 for o in range(4) if o != c)  # ~167 each of 500


def test_pixel_distance_and_the_margin_by_hand() -> None:
    teacher = [torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])]  # (1, 2, 1, 2): pixel vectors (1, 0) and (0, 1)
    student = [torch.tensor([[[[1.0, 1.0]], [[0.0, 1.0]]]])]  # (1, 0) vs (1, 0): cos 1; (0, 1) vs (1, 1): cos 1/sqrt 2
    d = pixel_distance(teacher, student)
    assert float(d) == pytest.approx((0 + (1 - 2 ** -0.5)) / 2)
    right, wrong = torch.tensor([0.1, 0.3]), torch.tensor([0.5, 0.35], requires_grad=True)
    loss = wrong_class_loss(right, wrong, 0.2)  # max(0, 0.2 + 0.1 - 0.5) = 0, max(0, 0.2 + 0.3 - 0.35) = 0.15
    assert float(loss.detach()) == pytest.approx(0.075)
    loss.backward()
    torch.testing.assert_close(wrong.grad, torch.tensor([0.0, -0.5]))


def test_the_wrong_class_term_trains_the_conditioning_and_leaves_running_statistics_alone() -> None:
    x, labels = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 0])
    stats = []
    for weight in (0.0, 1.0):
        m = model(condition_classes=CLASSES, lambda_wrong_class=weight).train()
        out = m(x, x, labels)
        out["loss"].backward()
        stats.append([b.clone() for name, b in m.decoder.named_buffers() if "running" in name])
        if weight:
            assert float(out["wcl"].detach()) == pytest.approx(0.2)  # untrained: wrong == right, the whole margin
            assert float(out["loss"].detach()) == pytest.approx(float(out["kd"].detach()) + 0.2)
            assert float(m.condition.shift.weight.grad.abs().sum()) > 0
    for with_term, without in zip(stats[1], stats[0], strict=True):
        torch.testing.assert_close(with_term, without)  # the wrong decode never enters BatchNorm's statistics


def test_the_wrong_class_term_needs_a_conditioned_student() -> None:
    with pytest.raises(ValueError, match="lambda_wrong_class > 0 needs"):
        model(lambda_wrong_class=1.0)
    with pytest.raises(ValueError, match="lambda_wrong_class > 0 needs"):
        model(condition_classes=("only",), lambda_wrong_class=1.0)


def test_the_graph_of_a_conditioned_model_scores_one_class() -> None:
    m = model(condition_classes=CLASSES).eval()
    randomize(m)
    images = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    graph = InferenceGraph(m, "uint8", class_id=1)
    with torch.no_grad():
        maps, scores = graph(images)
        want = m(graph.normalized(images), labels=torch.tensor([1, 1]))
    torch.testing.assert_close(maps, want["anomaly_map"])
    torch.testing.assert_close(scores, want["score"])
    with pytest.raises(ValueError, match="give class_id"):
        InferenceGraph(m, "uint8")
    with pytest.raises(ValueError, match="not one of the model's 3 classes"):
        InferenceGraph(m, "uint8", class_id=3)
    with pytest.raises(ValueError, match="no class conditioning"):
        InferenceGraph(model().eval(), "uint8", class_id=0)
