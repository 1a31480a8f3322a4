import pytest
import timm
import torch
from models_helpers import tiny_config

from kit.errors import KitError
from kit.models import build_model, load_pretrained

torch.set_num_threads(1)


@pytest.mark.parametrize("encoder", ["resnet10t", "mobilenetv3_small_050"])
def test_timm_weights_load_from_a_local_file_with_the_stem_adapted(tmp_path, encoder):
    torch.manual_seed(0)
    source = timm.create_model(encoder, pretrained=False)  # 3-channel, classifier included
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    config = tiny_config("unet", variant=encoder, channels=6, pretrained=str(path))
    model = build_model(config)
    load_pretrained(model, config)
    src, enc = source.state_dict(), model.encoder.state_dict()
    stem = next(k for k, v in enc.items() if v.ndim == 4)
    assert enc[stem].shape[1] == 6
    # timm's adapt_input_conv: the 3-channel kernel repeated, rescaled by 3/C
    assert torch.allclose(enc[stem][:, :3] * 2, src[stem], atol=1e-6)
    last = [k for k in enc if k.endswith("weight") and enc[k].ndim == 4][-1]
    assert torch.equal(enc[last], src[last])
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 6, 32, 32)).logits.shape == (1, 1, 32, 32)


def test_wrong_timm_file_is_a_kit_error(tmp_path):
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), tmp_path / "r18.pth")
    config = tiny_config("unet", pretrained=str(tmp_path / "r18.pth"))
    with pytest.raises(KitError, match="does not fit timm model 'resnet10t'"):
        load_pretrained(build_model(config), config)


def test_decoder_channels_must_cover_the_feature_levels():
    with pytest.raises(KitError, match="give at least 4"):
        build_model(tiny_config("unet", decoder_channels=[16, 8]))
