"""Write tests/data/sam2_meta_tiny.safetensors: a tiny SAM2 in Meta's checkpoint layout and its outputs, computed by
Meta's own code, so tests/test_sam2.py checks the rename table numerically without Meta's package installed.

Needs Meta's SAM2 code (github.com/facebookresearch/sam2, or PyPI ``sam2``) on the path; run it only to regenerate:
``PYTHONPATH=/path/to/sam2 python scripts/sam2_fixture.py``. The trunk is sim4seg.model.sam2's TINY at width 8, the
decoder width 16 (Meta's builder fixes the decoder's 8 heads, MLP 2048, IoU head 256 and 16 mask channels). Weights
are random multiples of 1/32 (stored as int8 numerators, exact in float32); the video-only tensors under 1,000
values are kept, for the loader to drop. Outputs are float32, from Meta's frame of the stored uint8 image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from sam2.build_sam import build_sam2
from sam2.utils.transforms import SAM2Transforms

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "sam2_meta_tiny.safetensors"
SIZE, DIM, STEP = 128, 16, 32
OVERRIDES = [f"++model.image_size={SIZE}", "++model.image_encoder.trunk.embed_dim=8",
             "++model.image_encoder.trunk.stages=[1,1,2,1]", "++model.image_encoder.trunk.global_att_blocks=[3]",
             "++model.image_encoder.trunk.window_spec=[4,4,4,2]",
             "++model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[4,4]",
             f"++model.image_encoder.neck.d_model={DIM}", "++model.image_encoder.neck.backbone_channel_list=[64,32,16,8]",
             f"++model.image_encoder.neck.position_encoding.num_pos_feats={DIM}"]


def main() -> None:
    torch.manual_seed(0)
    meta = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu", hydra_overrides_extra=OVERRIDES)
    meta.sam_mask_decoder.dynamic_multimask_via_stability = False  # Sim4Seg decodes mask token 0 (sam2.py)
    state = meta.state_dict()
    with torch.no_grad():
        for v in state.values():
            if v.is_floating_point():
                norm = v.ndim == 1 and v.numel() > 1 and v.abs().max() == 1  # LayerNorm weights start at 1
                v.copy_((torch.randint(-8, 9, v.shape) + (STEP if norm else 0)).float() / STEP)
    image = (np.random.RandomState(0).rand(40, 56, 3) * 255).astype(np.uint8)
    frame = SAM2Transforms(SIZE, mask_threshold=0.0)(image)[None]
    mask = (torch.rand(1, 1, SIZE // 4, SIZE // 4) > 0.5).float()
    seg = torch.randn(1, 1, DIM)
    ref = {"image": torch.from_numpy(image), "mask_prompt": mask[0], "seg": seg[0]}
    with torch.no_grad():
        _, feats, _, sizes = meta._prepare_backbone_features(meta.forward_image(frame))
        feats[-1] = feats[-1] + meta.no_mem_embed
        feats = [f.permute(1, 2, 0).view(1, -1, *s) for f, s in zip(feats[::-1], sizes[::-1])][::-1]
        sparse, dense = meta.sam_prompt_encoder(points=None, boxes=None, masks=mask)
        for multi in (False, True):
            low, iou, _, _ = meta.sam_mask_decoder(
                image_embeddings=feats[-1], image_pe=meta.sam_prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=torch.cat([sparse, seg], 1), dense_prompt_embeddings=dense,
                multimask_output=multi, repeat_image=False, high_res_features=feats[:-1])
            ref[f"low_res_{int(multi)}"], ref[f"iou_{int(multi)}"] = low[0], iou[0]
        ref["masks"] = SAM2Transforms(SIZE, 0.0).postprocess_masks(ref["low_res_0"][None], (40, 56))[0]
    video = ("memory_", "mask_downsample", "obj_ptr", "maskmem", "no_mem_pos", "no_obj")
    keep = {k: (v * STEP).round().to(torch.int8) for k, v in state.items()
            if not k.startswith(video) or (v.numel() < 1000 and v.is_floating_point())}
    save_file({**{f"meta.{k}": v.contiguous() for k, v in keep.items()},
               **{f"ref.{k}": v.contiguous() for k, v in ref.items()}}, str(OUT))
    print(f"{OUT}: {len(keep)} tensors, {OUT.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
