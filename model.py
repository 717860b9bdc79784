"""GPT-2 with block multipliers.

    h_0    = alpha_in * (wte[x] + wpe[t])
    h      = h + alpha_attn * Attn(LN_1(h));  h = h + alpha_mlp * MLP(LN_2(h))    (each block)
    logits = alpha_out * LN_f(h_L) @ W_out^T

The multipliers are plain numbers handed in by the caller (mup/ computes them); this file does not know
what muP is. q, k and v are separate n x n matrices so that Muon orthogonalizes each on its own. Modules
are arranged so that each site a coordinate check measures (embedding output, every block's output, the
final norm, the logits) is the output of one module and can be read with a forward hook.

Memory. With targets, the loss is torch's chunked linear cross-entropy (F.linear_cross_entropy): the logits
exist one chunk of tokens at a time (their matmul in the autocast dtype, the softmax statistics in fp32), never
as a full (B, T, vocab) tensor nor its fp32 copy (at vocab 50304 those and their gradient were ~0.5 MB per
token); the gradients of the head's input and weight are made in the same pass, so backward adds no matmul.
forward returns (None, loss) then. `model.activation_checkpointing`
keeps only each block's input and recomputes the block in backward (torch.utils.checkpoint, RNG state
preserved, so dropout masks and results are those of the plain forward).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from config import ModelConfig


def norm(cfg: ModelConfig, dim: int) -> nn.Module:
    return nn.LayerNorm(dim, bias=cfg.bias) if cfg.norm == "layernorm" else nn.Identity()


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        n = cfg.n_embd
        self.q, self.k, self.v, self.o = (nn.Linear(n, n, bias=cfg.bias) for _ in range(4))
        self.head_dim = cfg.head_dim
        self.scale = cfg.head_dim**-0.5 if cfg.attn_scale == "sqrt" else 1.0 / cfg.head_dim
        self.dropout = cfg.dropout

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = (lin(x).view(B, T, -1, self.head_dim).transpose(1, 2) for lin in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=self.scale, dropout_p=self.dropout if self.training else 0.0
        )
        return self.o(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, alpha_attn: float, alpha_mlp: float):
        super().__init__()
        self.ln_1, self.attn = norm(cfg, cfg.n_embd), Attention(cfg)
        self.ln_2, self.mlp = norm(cfg, cfg.n_embd), MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.alpha_attn, self.alpha_mlp = alpha_attn, alpha_mlp
        self.checkpointing = cfg.activation_checkpointing

    def forward(self, h):
        if self.checkpointing and self.training and torch.is_grad_enabled():
            # inside forward, not around the module: a hook on the block still fires once per forward
            return checkpoint(self.residual, h, use_reentrant=False)
        return self.residual(h)

    def residual(self, h):
        h = h + self.alpha_attn * self.drop(self.attn(self.ln_1(h)))
        return h + self.alpha_mlp * self.drop(self.mlp(self.ln_2(h)))


class Embedding(nn.Module):
    def __init__(self, cfg: ModelConfig, alpha_in: float):
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.alpha_in = alpha_in

    def forward(self, idx):
        pos = torch.arange(idx.shape[1], device=idx.device)
        return self.drop(self.alpha_in * (self.wte(idx) + self.wpe(pos)))


class Head(nn.Module):
    def __init__(self, cfg: ModelConfig, alpha_out: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.vocab_size, cfg.n_embd))
        self.alpha_out = alpha_out

    def forward(self, x):
        # the same logits as alpha_out * (x @ W^T), scaling the n-wide input instead of the vocab-wide output
        return F.linear(self.alpha_out * x, self.weight)

    def loss(self, x, targets):
        """Mean cross-entropy of the logits of x against targets, `LOSS_CHUNK_LOGITS` logits at a time."""
        x, w = self.alpha_out * x.reshape(-1, x.size(-1)), self.weight
        if torch.is_autocast_enabled(x.device.type):  # the chunked op is not autocast-aware: cast as F.linear is
            dtype = torch.get_autocast_dtype(x.device.type)
            x, w = x.to(dtype), w.to(dtype)
        rows = chunk_rows(x.size(0), w.size(0))
        options = nn.LinearCrossEntropyOptions(batch_chunk_size=rows, chunking_method=None,
                                               allow_retain_graph=torch.compiler.is_compiling())
        return F.linear_cross_entropy(x, w, targets.reshape(-1), options=options)


# Logits per chunk of the loss: 2^27 (512 MiB in fp32, 2,560 tokens at vocab 50304, one chunk for any byte-level
# batch). Big enough that the head's matmuls stay efficient and per-chunk kernel launches do not matter.
LOSS_CHUNK_LOGITS = 2**27


def chunk_rows(tokens: int, vocab: int) -> int:
    """Tokens per chunk of the loss: LOSS_CHUNK_LOGITS / vocab, a multiple of 128 when there is more than one."""
    rows = max(1, LOSS_CHUNK_LOGITS // vocab)
    if rows >= tokens:
        return tokens
    return rows // 128 * 128 if rows >= 128 else rows


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig, alpha_in=1.0, alpha_attn=1.0, alpha_mlp=1.0, alpha_out=1.0):
        super().__init__()
        self.cfg = cfg
        self.embed = Embedding(cfg, alpha_in)
        self.blocks = nn.ModuleList(Block(cfg, alpha_attn, alpha_mlp) for _ in range(cfg.n_layer))
        self.ln_f = norm(cfg, cfg.n_embd)
        self.head = Head(cfg, alpha_out)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.wte.weight

    def features(self, idx):
        """The final norm's output, what the head turns into logits."""
        if idx.shape[1] > self.cfg.block_size:
            raise ValueError(f"sequence length {idx.shape[1]} exceeds model.block_size={self.cfg.block_size}")
        h = self.embed(idx)
        for block in self.blocks:
            h = block(h)
        return self.ln_f(h)

    def forward(self, idx, targets=None):
        """(logits, None) without targets; with them (None, mean cross-entropy), the logits never whole."""
        x = self.features(idx)
        if targets is not None:
            return None, self.head.loss(x, targets)
        return self.head(x), None

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 vocab: int | None = None, generator: torch.Generator | None = None):
        """Continue each row of idx (B, T) by max_new_tokens sampled tokens, the context cut to the last block_size;
        temperature 0 takes the most likely token, top_k keeps only the k most likely, and only the first `vocab`
        ids are drawn (the tokenizer's: the rest of vocab_size is padding)."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.cfg.block_size:])
            logits = logits[:, -1, :vocab].float()
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None and top_k < logits.size(-1):
                    kth = torch.topk(logits, top_k).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)
            idx = torch.cat([idx, nxt], 1)
        return idx
