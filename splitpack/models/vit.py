"""Small Vision Transformer with attention written as plain matmul/softmax.

``nn.MultiheadAttention`` exports to a tangle of ops whose intermediate tensors carry
misleading names; spelling attention out keeps the ONNX graph readable and its block outputs
(N, T, D) tensors that the cut finder and the token codec can address. Every reshape keeps
the batch axis as -1 so that a graph exported at batch 1 runs at any batch.
"""

from __future__ import annotations

import torch
from torch import nn

from splitpack.errors import InvalidConfigError

__all__ = ["Attention", "TransformerBlock", "ViTSmall", "vit_small"]


class Attention(nn.Module):
    """Multi-head self-attention over (N, T, D) tokens."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, dim = x.shape[1], x.shape[2]
        # (N, T, 3D) -> (3, N, heads, T, head_dim)
        qkv = self.qkv(x).reshape(-1, tokens, 3, self.num_heads, self.head_dim)
        qkv = qkv.permute(2, 0, 3, 1, 4)
        query, key, value = qkv[0], qkv[1], qkv[2]
        scores = torch.matmul(query, key.transpose(-2, -1)) * self.scale
        weights = torch.softmax(scores, dim=-1)
        out = torch.matmul(weights, value).transpose(1, 2).reshape(-1, tokens, dim)
        return self.proj(out)


class MLP(nn.Module):
    """Two linear layers with a GELU between them."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm transformer encoder block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbedding(nn.Module):
    """Non-overlapping patches, linearly projected by a strided conv, as (N, T, D) tokens."""

    def __init__(self, in_channels: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ViTSmall(nn.Module):
    """Patch embedding, cls token, learned position embedding, blocks, cls-token classifier."""

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        image_size: int,
        patch_size: int,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
    ) -> None:
        super().__init__()
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = PatchEmbedding(in_channels, dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        # Truncated-normal init as in ViT; zeros would make all tokens start identical.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.Sequential(
            *(TransformerBlock(dim, num_heads, mlp_ratio) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x)
        cls_tokens = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls_tokens, tokens], dim=1) + self.pos_embed
        tokens = self.norm(self.blocks(tokens))
        return self.head(tokens[:, 0])


def vit_small(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    patch_size: int = 4,
    dim: int = 64,
    depth: int = 2,
    num_heads: int = 4,
    mlp_ratio: float = 2.0,
) -> ViTSmall:
    """Build a small Vision Transformer in eval mode.

    Args:
        num_classes: size of the output logits.
        in_channels: channels of the input image.
        image_size: height and width of the (square) input; fixes the number of tokens.
        patch_size: side of the square patches; must divide ``image_size``.
        dim: token width D; must be divisible by ``num_heads``.
        depth: number of transformer blocks (module paths ``blocks.0`` ...).
        num_heads: attention heads per block.
        mlp_ratio: hidden width of each MLP relative to ``dim``.

    Returns:
        A ``ViTSmall`` taking (N, in_channels, image_size, image_size) and returning
        (N, num_classes) logits; its tokens are (N, (image_size / patch_size) ** 2 + 1, dim).
    """
    if image_size % patch_size:
        raise InvalidConfigError(
            f"patch_size {patch_size} must divide image_size {image_size}"
        )
    if dim % num_heads:
        raise InvalidConfigError(f"dim {dim} must be divisible by num_heads {num_heads}")
    if depth < 1:
        raise InvalidConfigError(f"depth must be >= 1, got {depth}")
    return ViTSmall(
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        patch_size=patch_size,
        dim=dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
    ).eval()
