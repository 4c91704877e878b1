"""One tensor-parallel rank's slice of the Llama model, Megatron-style.

Per layer, the rank holds 1/N of the attention heads and of the MLP width:

- column-parallel `wq`, `wk`, `wv`, `w1`, `w3`: the rows of its heads / its MLP slice, so the
  fused `wqkv` and `w13` are the rank's own q, k, v (gate, up) rows side by side;
- row-parallel `wo`, `w2`: the matching input columns; each rank's product is a partial sum,
  all-reduced into the full residual update;
- KV heads: the rank's cache holds only its KV heads, in blocks with the same ids on every
  rank, so one block table serves all of them.

The vocabulary is split too: the embedding looks up only the rows it holds (the others give
zeros, and an all-reduce fills them in), and the output head computes the logits of its rows,
gathered on rank 0, the one rank that samples. A vocabulary that N does not divide is padded
to a multiple of N with zero rows, which rank 0 cuts off again.

Parameter names are Meta's, as in worker/model.py, so a rank's slice loads with the same
`load_state_dict`.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from worker.attention import paged_attention
from worker.model import AttentionFn, Embedding, Linear, Transformer
from worker.model_args import ModelArgs
from worker.parallel import RankGroup


def check_tensor_parallel_size(args: ModelArgs, world_size: int) -> None:
    """ValueError with what would work when the model cannot be split `world_size` ways."""
    if args.n_kv_heads % world_size:
        fits = [n for n in range(1, args.n_kv_heads + 1) if args.n_kv_heads % n == 0]
        raise ValueError(
            f"tensor_parallel_size {world_size} does not divide the model's {args.n_kv_heads} "
            f"KV heads (each rank holds whole KV heads); use one of {fits}"
        )
    if args.hidden_dim % world_size:
        raise ValueError(
            f"tensor_parallel_size {world_size} does not divide the model's MLP width "
            f"{args.hidden_dim}"
        )


def rows_per_rank(vocab_size: int, world_size: int) -> int:
    """Vocabulary rows each rank holds, the vocabulary padded up to a multiple of N."""
    return -(-vocab_size // world_size)


def rank_args(args: ModelArgs, world_size: int) -> ModelArgs:
    """The hyper-parameters of one rank's slice: its heads, MLP width and vocabulary rows."""
    check_tensor_parallel_size(args, world_size)
    return dataclasses.replace(
        args,
        n_heads=args.n_heads // world_size,
        n_kv_heads=args.n_kv_heads // world_size,
        hidden_dim=args.hidden_dim // world_size,
        vocab_size=rows_per_rank(args.vocab_size, world_size),
    )


class RowParallelLinear(Linear):
    """`wo` / `w2`: this rank's input columns; the partial products are summed over ranks."""

    def __init__(self, in_features: int, out_features: int, group: RankGroup) -> None:
        super().__init__(in_features, out_features)
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.all_reduce(F.linear(x, self.weight))


class VocabParallelEmbedding(Embedding):
    """The rows [first_id, first_id + rows) of the embedding; ids outside give zeros here
    and their vectors from the rank that holds them."""

    def __init__(self, rows: int, dim: int, first_id: int, group: RankGroup) -> None:
        super().__init__(rows, dim)
        self.rows = rows
        self.first_id = first_id
        self.group = group

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        local = token_ids - self.first_id
        outside = (local < 0) | (local >= self.rows)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)  # [T, dim]
        out.masked_fill_(outside.unsqueeze(-1), 0.0)
        return self.group.all_reduce(out)


class TensorParallelTransformer(Transformer):
    """Built with `rank_args` (the rank's heads, MLP width and vocabulary rows) and the
    group; `vocab_size` is the whole model's, for cutting the padding off the logits."""

    def __init__(
        self,
        args: ModelArgs,
        attention_fn: AttentionFn = paged_attention,
        fused: bool = True,
        kernels: bool = False,
        *,
        group: RankGroup,
        vocab_size: int,
    ) -> None:
        super().__init__(args, attention_fn, fused, kernels)
        self.group = group
        self.vocab_size = vocab_size
        q_dim = args.n_heads * args.head_dim
        for layer in self.layers:
            layer.attention.wo = RowParallelLinear(q_dim, args.dim, group)
            layer.feed_forward.w2 = RowParallelLinear(args.hidden_dim, args.dim, group)
        first_id = group.rank * args.vocab_size
        self.tok_embeddings = VocabParallelEmbedding(args.vocab_size, args.dim, first_id, group)

    def compute_logits(
        self,
        hidden: torch.Tensor,  # [num_tokens, dim]
        rows: torch.Tensor | None,
    ) -> torch.Tensor | None:  # rank 0: [num_rows, vocab_size] float32; others: None
        local = super().compute_logits(hidden, rows)  # [num_rows, rows per rank]
        parts = self.group.gather_to_first(local.contiguous())
        if parts is None:
            return None
        # [num_rows, N * rows per rank] -> [num_rows, vocab_size]: the padding cut off
        return torch.cat(parts, dim=-1)[:, : self.vocab_size]
