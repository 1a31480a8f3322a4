import pytest
import torch
import torch.nn.functional as F
from models_helpers import tiny_config

from kit.errors import KitError
from kit.models import build_model
from kit.models.prompts import Prompts, sample_points, training_prompts, whole_tile_box

torch.set_num_threads(1)


def _reference_one_image(model, embedding, prompts, i):
    """Meta's own per-image path: prompt_encoder + MaskDecoder.forward on one image."""
    points = boxes = None
    if prompts.coords is not None:
        points = (prompts.coords[i : i + 1], prompts.labels[i : i + 1])
    if prompts.boxes is not None:
        boxes = prompts.boxes[i : i + 1]
    sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=None)
    low_res, iou = model.mask_decoder(
        image_embeddings=embedding[None],
        image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
    )
    logits = F.interpolate(low_res, size=(model.tile, model.tile), mode="bilinear")
    return logits, iou


@pytest.mark.parametrize("kind", ["points", "box", "points+box", "none"])
def test_batched_prompts_equal_a_per_image_loop_through_metas_decoder(kind):
    torch.manual_seed(0)
    model = build_model(tiny_config(prompt="points")).eval()
    b = 4
    x = torch.rand(b, 4, 32, 32)
    target = (torch.rand(b, 1, 32, 32) > 0.8).float()
    target[1] = 0  # no ink: its positive points become padding
    prompts = Prompts()
    if "points" in kind:
        prompts = sample_points(target, 6, generator=torch.Generator().manual_seed(1))
        assert (prompts.labels[1] == -1).any()
    if "box" in kind:
        prompts = prompts._replace(boxes=torch.rand(b, 4) * 31)
    with torch.no_grad():
        embeddings = model.encode(x)
        batched = model(x, prompts=prompts)
        for i in range(b):
            logits, iou = _reference_one_image(model, embeddings[i], prompts, i)
            assert torch.allclose(batched.logits[i : i + 1], logits, atol=1e-5)
            assert torch.allclose(batched.iou[i : i + 1], iou, atol=1e-5)
    # each image really gets its own prompts: swapping two images' prompts changes their output
    if kind != "none":
        swapped = Prompts(*(t[[1, 0, 2, 3]] if t is not None else None for t in prompts))
        with torch.no_grad():
            assert not torch.allclose(model(x, prompts=swapped).logits[0], batched.logits[0])


def test_box_mode_adds_the_whole_tile_box_itself():
    model = build_model(tiny_config(prompt="box")).eval()
    x = torch.rand(2, 4, 32, 32)
    with torch.no_grad():
        implicit = model(x).logits
        explicit = model(x, prompts=Prompts(boxes=whole_tile_box(2, 32))).logits
        free = build_model(tiny_config(prompt="none"))
        free.load_state_dict(model.state_dict())
        assert torch.allclose(implicit, explicit)
        assert not torch.allclose(free.eval()(x).logits, implicit)


def test_sampled_points_are_float_pixels_with_correct_labels():
    target = torch.zeros(3, 1, 16, 16)
    target[0, 0, 4:8, 10:12] = 1  # ink at rows 4..7, cols 10..11
    target[2] = 1
    prompts = sample_points(target, 8, generator=torch.Generator().manual_seed(0))
    assert prompts.coords.shape == (3, 8, 2) and prompts.coords.dtype == torch.float32
    assert prompts.labels.shape == (3, 8) and prompts.labels.dtype == torch.int64
    xs, ys = prompts.coords[..., 0].long(), prompts.coords[..., 1].long()
    for i in range(3):
        for j in range(8):
            label = int(prompts.labels[i, j])
            if label >= 0:
                assert target[i, 0, ys[i, j], xs[i, j]] == label
    assert (prompts.labels[0, :4] == 1).all() and (prompts.labels[0, 4:] == 0).all()
    assert (prompts.labels[1, :4] == -1).all()  # no ink: positives are padding
    assert (prompts.labels[2, 4:] == -1).all()  # all ink: negatives are padding


def test_error_and_grid_sampling():
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, :8] = 1
    pred = torch.full((2, 1, 16, 16), -5.0)
    pred[1, :, :8] = 5.0  # image 1 is perfect: no error points
    prompts = sample_points(target, 4, mode="error", pred_logits=pred)
    assert (prompts.labels[0] == 1).all() and (prompts.coords[0, :, 1] < 8).all()
    assert (prompts.labels[1] == -1).all()
    grid = sample_points(target, 4, mode="grid")
    assert grid.coords[0].tolist() == [[4, 4], [12, 4], [4, 12], [12, 12]]
    assert grid.labels[0].tolist() == [1, 1, 0, 0]
    with pytest.raises(KitError, match="needs the previous prediction"):
        sample_points(target, 4, mode="error")


def test_training_prompts_follow_the_config():
    target = torch.ones(2, 1, 16, 16)
    assert training_prompts(tiny_config(prompt="none").model, target) is None
    assert training_prompts(tiny_config(prompt="box").model, target) is None
    prompts = training_prompts(tiny_config(prompt="points", num_points=3).model, target)
    assert prompts.coords.shape == (2, 3, 2)
