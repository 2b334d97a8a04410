"""The vitrine model: the numerical specification the C engine reproduces.

Shapes: B requests, N events per request including the context token at position 0, C = d_model,
NH heads of HS = C / NH, Q Query-Former tokens, T decoder positions, V vocabulary, K codebook size,
L code levels, R = d_retrieval.

    event embedding   e = LN_emb(item(codes) + action + query + W_time [t2v(x); cal(ts)] + b_time
                             [+ region, on the context token])      x = log1p(max(now - ts, 0))
    encoder (pre-norm) h += Attn(LN1 h) with bias[head, bucket(|ts_i - ts_j|)]; h += FFN(LN2 h)
                       enc = LN_enc(h)
    Query-Former      q = queries; q += CrossAttn(RMS1 q, enc); q += FFN(RMS2 q); mem = LN_mem(q)
    decoder (pre-norm) y = tok_emb[t] + pos_emb[pos]; y += SelfAttn(LN1 y) causal;
                       y += CrossAttn(LN2 y, mem); y += FFN(LN3 y); logits = LN_dec(y) tok_emb^T
    retrieval         u = W_user mean(mem) + b_user;  e_p = W_prod item(codes_p) + b_prod;
                      score(p) = u . e_p

FFN(x) = W2 gelu(W1 x + b1) + b2 with the exact (erf) GELU. LayerNorm eps 1e-5, RMSNorm eps 1e-6.
bucket(dt) = clamp(floor(ln(max(dt, 1)) / 0.301), 0, 128), computed in float64.
"""
import math
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import calendar
from .vocab import PAD

ACTION_CONTEXT = 4  # view, search, cart, purchase, then the context token's own action
N_ACTIONS = 5
N_CAL = 6


@dataclass
class Config:
    vocab_size: int
    n_regions: int
    d_model: int = 64
    n_heads: int = 4
    n_enc_layers: int = 2
    n_dec_layers: int = 1
    d_ff: int = 256
    n_queries: int = 4
    d_retrieval: int = 64
    max_events: int = 64
    max_dec_len: int = 16
    code_levels: int = 4  # residual k-means levels, then one de-duplicating level
    codebook: int = 64
    t2v_dim: int = 8
    n_time_buckets: int = 129
    max_query_tokens: int = 8

    @property
    def code_unknown(self):  # row for an item id the catalogue does not know
        return self.codebook

    @property
    def code_none(self):  # row for an event without an item (search, context)
        return self.codebook + 1

    def to_dict(self):
        return asdict(self)


def time_bucket(dt):
    """HSTU log bucket of |dt| seconds (int64 tensor) -> int64 tensor in [0, 128]."""
    d = dt.abs().clamp(min=1).to(torch.float64)
    return torch.clamp(torch.floor(torch.log(d) / 0.301), 0, 128).to(torch.int64)


def gelu(x):
    return F.gelu(x)


class Attention(nn.Module):
    """Multi-head attention; self-attention uses a fused qkv projection, cross-attention q + kv."""

    def __init__(self, c, nh, cross=False):
        super().__init__()
        self.nh, self.cross = nh, cross
        if cross:
            self.q = nn.Linear(c, c)
            self.kv = nn.Linear(c, 2 * c)
        else:
            self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)

    def heads(self, x):  # (B, T, C) -> (B, NH, T, HS)
        b, t, c = x.shape
        return x.view(b, t, self.nh, c // self.nh).transpose(1, 2)

    def kv_heads(self, mem):
        k, v = self.kv(mem).chunk(2, dim=-1)
        return self.heads(k), self.heads(v)

    def attend(self, q, k, v, bias=None, mask=None):
        """q (B,NH,Tq,HS), k/v (B,NH,Tk,HS); bias (B,NH,Tq,Tk) added; mask (B,1|NH,Tq,Tk) True=keep."""
        att = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
        if bias is not None:
            att = att + bias
        if mask is not None:
            att = att.masked_fill(~mask, -torch.finfo(att.dtype).max)
        att = torch.softmax(att, dim=-1)
        y = att @ v
        b, nh, t, hs = y.shape
        return self.proj(y.transpose(1, 2).reshape(b, t, nh * hs))


class FFN(nn.Module):
    def __init__(self, c, f):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(c, f), nn.Linear(f, c)

    def forward(self, x):
        return self.fc2(gelu(self.fc1(x)))


class RMSNorm(nn.Module):
    def __init__(self, c, eps=1e-6):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(c)), eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class EncoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        c = cfg.d_model
        self.ln1, self.ln2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.attn = Attention(c, cfg.n_heads)
        self.time_bias = nn.Parameter(torch.zeros(cfg.n_heads, cfg.n_time_buckets))
        self.ffn = FFN(c, cfg.d_ff)

    def forward(self, x, buckets, mask):
        h = self.ln1(x)
        q, k, v = self.attn.qkv(h).chunk(3, dim=-1)
        bias = self.time_bias[:, buckets].permute(1, 0, 2, 3)  # (B, NH, N, N)
        x = x + self.attn.attend(self.attn.heads(q), self.attn.heads(k), self.attn.heads(v),
                                 bias, mask)
        return x + self.ffn(self.ln2(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        c = cfg.d_model
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(c), nn.LayerNorm(c), nn.LayerNorm(c)
        self.self_attn = Attention(c, cfg.n_heads)
        self.cross_attn = Attention(c, cfg.n_heads, cross=True)
        self.ffn = FFN(c, cfg.d_ff)


class Model(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        c = cfg.d_model
        self.code_emb = nn.ModuleList(nn.Embedding(cfg.codebook + 2, c)
                                      for _ in range(cfg.code_levels))
        self.action_emb = nn.Embedding(N_ACTIONS, c)
        self.region_emb = nn.Embedding(cfg.n_regions, c)
        self.t2v_w = nn.Parameter(torch.randn(cfg.t2v_dim) * 0.5)
        self.t2v_b = nn.Parameter(torch.randn(cfg.t2v_dim) * 0.5)
        self.time_proj = nn.Linear(cfg.t2v_dim + N_CAL, c)
        self.ln_emb = nn.LayerNorm(c)
        self.enc = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_enc_layers))
        self.ln_enc = nn.LayerNorm(c)
        self.queries = nn.Parameter(torch.randn(cfg.n_queries, c) * 0.02)
        self.qf_rms1, self.qf_rms2 = RMSNorm(c), RMSNorm(c)
        self.qf_attn = Attention(c, cfg.n_heads, cross=True)
        self.qf_ffn = FFN(c, cfg.d_ff)
        self.ln_mem = nn.LayerNorm(c)
        self.tok_emb = nn.Embedding(cfg.vocab_size, c)
        self.pos_emb = nn.Embedding(cfg.max_dec_len, c)
        self.dec = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_dec_layers))
        self.ln_dec = nn.LayerNorm(c)
        self.user_proj = nn.Linear(c, cfg.d_retrieval)
        self.prod_proj = nn.Linear(c, cfg.d_retrieval)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.05)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.1)

    # ---- embeddings -----------------------------------------------------------------------
    def item_emb(self, codes):
        """codes (..., L) -> (..., C): the sum of the item's semantic-code embeddings."""
        return sum(self.code_emb[l](codes[..., l]) for l in range(self.cfg.code_levels))

    def query_emb(self, query):
        """query (B, N, Lq) token ids, PAD-padded -> mean token embedding (B, N, C), 0 if empty."""
        m = (query != PAD).to(torch.float32)
        s = (self.tok_emb(query) * m.unsqueeze(-1)).sum(-2)
        return s / m.sum(-1, keepdim=True).clamp(min=1.0)

    def time_features(self, x, cal):
        """x (B, N) log-seconds-ago, cal (B, N, 6) -> (B, N, t2v_dim + 6)."""
        lin = self.t2v_w[0] * x + self.t2v_b[0]
        per = torch.sin(x.unsqueeze(-1) * self.t2v_w[1:] + self.t2v_b[1:])
        return torch.cat([lin.unsqueeze(-1), per, cal], dim=-1)

    def embed_events(self, b):
        e = (self.item_emb(b["codes"]) + self.action_emb(b["action"]) + self.query_emb(b["query"])
             + self.time_proj(self.time_features(b["x"], b["cal"])))
        ctx = torch.zeros_like(e)
        ctx[:, 0] = self.region_emb(b["region"])
        return self.ln_emb(e + ctx)

    # ---- encoder and Query-Former ---------------------------------------------------------
    def encode(self, b, trace=None):
        """Batch dict (see data.featurize) -> memory (B, Q, C). trace: list to append tensors to."""
        x = self.embed_events(b)
        if trace is not None:
            trace.append(("event_emb", x))
        n = x.shape[1]
        valid = torch.arange(n, device=x.device).unsqueeze(0) < b["length"].unsqueeze(1)  # (B, N)
        mask = valid[:, None, None, :]
        buckets = time_bucket(b["ts"].unsqueeze(2) - b["ts"].unsqueeze(1))  # (B, N, N)
        for i, layer in enumerate(self.enc):
            x = layer(x, buckets, mask)
            if trace is not None:
                trace.append(("enc%d" % i, x))
        enc = self.ln_enc(x)
        q = self.queries.unsqueeze(0).expand(x.shape[0], -1, -1)
        k, v = self.qf_attn.kv_heads(enc)
        q = q + self.qf_attn.attend(self.qf_attn.heads(self.qf_attn.q(self.qf_rms1(q))), k, v,
                                    None, mask)
        q = q + self.qf_ffn(self.qf_rms2(q))
        mem = self.ln_mem(q)
        if trace is not None:
            trace.append(("memory", mem))
        return mem

    def user_vector(self, mem):
        return self.user_proj(mem.mean(1))

    def product_vectors(self, codes):
        return self.prod_proj(self.item_emb(codes))

    # ---- decoder --------------------------------------------------------------------------
    def decode_train(self, mem, tokens):
        """Teacher forcing: tokens (B, T) -> logits (B, T, V)."""
        bsz, t = tokens.shape
        dev = tokens.device
        y = self.tok_emb(tokens) + self.pos_emb(torch.arange(t, device=dev)).unsqueeze(0)
        causal = torch.tril(torch.ones(t, t, dtype=torch.bool, device=dev))[None, None]
        for layer in self.dec:
            h = layer.ln1(y)
            q, k, v = layer.self_attn.qkv(h).chunk(3, dim=-1)
            a = layer.self_attn
            y = y + a.attend(a.heads(q), a.heads(k), a.heads(v), None, causal)
            ca = layer.cross_attn
            mk, mv = ca.kv_heads(mem)
            y = y + ca.attend(ca.heads(ca.q(layer.ln2(y))), mk, mv)
            y = y + layer.ffn(layer.ln3(y))
        return self.ln_dec(y) @ self.tok_emb.weight.t()

    def cross_kv(self, mem):
        """Per decoder layer (K, V) of the memory, each (B, NH, Q, HS): computed once per request."""
        return [layer.cross_attn.kv_heads(mem) for layer in self.dec]

    def decode_step(self, tokens, pos, cache, xkv):
        """One incremental step for a batch of beams.

        tokens (W,) the last token of each beam; pos the position of that token;
        cache: per layer [K (W, NH, pos, HS), V] of earlier positions (already reordered to the
        beams' parents); xkv: per layer (K, V) of the memory, (W, NH, Q, HS).
        Returns the final hidden state (W, C) and the new cache with position pos appended.
        """
        y = (self.tok_emb(tokens) + self.pos_emb.weight[pos]).unsqueeze(1)  # (W, 1, C)
        new_cache = []
        for li, layer in enumerate(self.dec):
            a = layer.self_attn
            q, k, v = a.qkv(layer.ln1(y)).chunk(3, dim=-1)
            k, v = a.heads(k), a.heads(v)
            if cache is not None:
                k = torch.cat([cache[li][0], k], dim=2)
                v = torch.cat([cache[li][1], v], dim=2)
            new_cache.append((k, v))
            y = y + a.attend(a.heads(q), k, v)
            ca = layer.cross_attn
            y = y + ca.attend(ca.heads(ca.q(layer.ln2(y))), xkv[li][0], xkv[li][1])
            y = y + layer.ffn(layer.ln3(y))
        return self.ln_dec(y)[:, 0], new_cache


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def time_inputs(ts, now):
    """float64 inputs of the time encoding for event times ts (list of int) at `now`:
    x = log1p(max(now - ts, 0)) and the six calendar features of ts."""
    x = [math.log1p(max(now - t, 0)) for t in ts]
    cal = [calendar.calendar_features(t) for t in ts]
    return x, cal
