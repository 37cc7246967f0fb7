"""The OVSAM mask decoder against segment_anything's own MaskDecoder on the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

from ovsam_ros.model.ovsam_decoder import DecoderInputError, OVSAMMaskDecoder

LAYOUT = Path(__file__).parent / "data" / "ovsam-checkpoint-layout.json"


def _sam_decoder(num_multimask_outputs: int) -> MaskDecoder:
    transformer = TwoWayTransformer(depth=2, embedding_dim=256, num_heads=8, mlp_dim=2048)
    return MaskDecoder(transformer_dim=256, transformer=transformer,
                       num_multimask_outputs=num_multimask_outputs).eval()


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial values everywhere (SAM initialises LayerNorms to 1/0 and embeddings tiny)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (p.shape[-1] ** -0.5 if p.dim() >= 2 else 0.5))


@pytest.fixture(scope="module")
def prompts():
    torch.manual_seed(1)
    pe = PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                       mask_in_chans=16).eval()
    with torch.no_grad():
        points = torch.tensor([[[100.0, 200.0], [400.0, 380.0]], [[900.0, 30.0], [512.0, 512.0]]])
        labels = torch.tensor([[1, 0], [1, 1]])
        sparse_pts, dense_pts = pe((points, labels), None, None)
        boxes = torch.tensor([[50.0, 60.0, 700.0, 800.0], [0.0, 0.0, 1023.0, 1023.0]])
        sparse_box, dense_box = pe(None, boxes, None)
    image = torch.randn(1, 256, 64, 64)
    return {"pe": pe.get_dense_pe().detach(), "image": image,
            "cases": [(sparse_pts, dense_pts), (sparse_box, dense_box)]}


def test_parameter_names_and_shapes_match_the_released_checkpoint():
    layout = json.loads(LAYOUT.read_text())["clip2sam_lvis_rn50x16.pth"]
    group = next(g for g in layout["groups"] if g["prefix"] == "mask_decoder")
    expected = {e["key"][len("mask_decoder."):]: tuple(e["shape"]) for e in group["keys"]
                if not e["key"].startswith("mask_decoder.roi_conv.")}
    ours = {k: tuple(v.shape) for k, v in OVSAMMaskDecoder().state_dict().items()}
    assert ours == expected


def test_mask_equals_sam_with_token_zero_and_label_token_first(prompts):
    sam4 = _sam_decoder(3)
    _randomise(sam4, seed=3)
    ours = OVSAMMaskDecoder().eval()
    _randomise(ours.label_token, seed=4)
    _randomise(ours.label_mlp, seed=5)
    core = ours.mask_decoder
    core.transformer.load_state_dict(sam4.transformer.state_dict())
    core.output_upscaling.load_state_dict(sam4.output_upscaling.state_dict())
    core.output_hypernetworks_mlps[0].load_state_dict(sam4.output_hypernetworks_mlps[0].state_dict())
    with torch.no_grad():
        core.mask_tokens.weight.copy_(sam4.mask_tokens.weight[:1])

    # Reference: SAM's own MaskDecoder with one mask token, whose leading IoU token stands where our
    # label token stands, so its token order is exactly [label, mask, sparse...].
    ref = _sam_decoder(0)
    ref.transformer.load_state_dict(sam4.transformer.state_dict())
    ref.output_upscaling.load_state_dict(sam4.output_upscaling.state_dict())
    ref.output_hypernetworks_mlps[0].load_state_dict(sam4.output_hypernetworks_mlps[0].state_dict())
    with torch.no_grad():
        ref.mask_tokens.weight.copy_(sam4.mask_tokens.weight[:1])
        ref.iou_token.weight.copy_(ours.label_token.weight)

    for sparse, dense in prompts["cases"]:
        with torch.no_grad():
            want, _ = ref(prompts["image"], prompts["pe"], sparse, dense, multimask_output=False)
            got, label = ours(prompts["image"], prompts["pe"], sparse, dense)
        assert got.shape == (2, 1, 256, 256)
        assert label.shape == (2, 768)
        assert (got - want).abs().max().item() <= 1e-5

    # The check has teeth: SAM's token 1 in place of token 0 gives a clearly different mask.
    with torch.no_grad():
        core.mask_tokens.weight.copy_(sam4.mask_tokens.weight[1:2])
        other, _ = ours(prompts["image"], prompts["pe"], *prompts["cases"][0])
        want, _ = ref(prompts["image"], prompts["pe"], *prompts["cases"][0], multimask_output=False)
    assert (other - want).abs().max().item() > 1e-3


def test_label_token_changes_the_mask_because_it_attends(prompts):
    """The label token takes part in self-attention, so it must sit in the sequence (not be dropped)."""
    dec = OVSAMMaskDecoder().eval()
    sparse, dense = prompts["cases"][0]
    with torch.no_grad():
        a, _ = dec(prompts["image"], prompts["pe"], sparse, dense)
        dec.label_token.weight.add_(1.0)
        b, _ = dec(prompts["image"], prompts["pe"], sparse, dense)
    assert not torch.allclose(a, b)


def test_one_image_embedding_serves_many_prompts(prompts):
    dec = OVSAMMaskDecoder().eval()
    sparse, dense = prompts["cases"][1]
    with torch.no_grad():
        shared, _ = dec(prompts["image"], prompts["pe"], sparse, dense)
        repeated, _ = dec(prompts["image"].expand(2, -1, -1, -1), prompts["pe"], sparse, dense)
    assert torch.equal(shared, repeated)


def test_bad_shapes_raise_a_clear_error(prompts):
    dec = OVSAMMaskDecoder().eval()
    sparse, dense = prompts["cases"][0]
    with pytest.raises(DecoderInputError, match="sparse"):
        dec(prompts["image"], prompts["pe"], sparse[..., :128], dense)
    with pytest.raises(DecoderInputError, match="dense"):
        dec(prompts["image"], prompts["pe"], sparse, dense[:1])
    with pytest.raises(DecoderInputError, match="batch"):
        dec(prompts["image"].expand(3, -1, -1, -1), prompts["pe"], sparse, dense)
