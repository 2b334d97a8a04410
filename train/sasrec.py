"""SASRec (Kang & McAuley, 2018) on Amazon Beauty, in the harness and split of train/beauty.py.

    /usr/bin/python3 -m train.sasrec --data ../shared/data/amazon-beauty --out build/beauty

Model: item embedding + learned positions, `blocks` pre-norm causal self-attention blocks, the
output tied to the item embedding. Loss: full softmax cross-entropy over all items at every
position (stronger than the paper's one-negative BCE; stated because it matters). Training
sequences are each user's items without the validation and test targets; the last `maxlen` items
are kept. Epochs are chosen on the validation targets (early stopping, patience 3), and so are
dropout and maxlen (every point of --dropout x --maxlen is trained; the best validation NDCG@10
is tested); the test ranking uses the history including the validation item. Full ranking over all items, ties to the
lower index, no filtering of seen items.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import beauty


class SASRec(nn.Module):
    def __init__(self, n_items, d=64, blocks=2, heads=2, maxlen=50, dropout=0.3):
        super().__init__()
        self.item = nn.Embedding(n_items + 1, d, padding_idx=0)  # 0 = padding, item i -> i + 1
        self.pos = nn.Embedding(maxlen, d)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout, batch_first=True,
                                           norm_first=True, activation="gelu")
        # nested tensors need norm_first=False: say so, or torch >= 2.1 warns on every model
        self.enc = nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)
        self.maxlen = maxlen
        # N(0, 1/d) item vectors: the scaled input is ~unit per coordinate and the tied output's
        # first logits are ~unit too (PyTorch's N(0, 1) default starts the loss near 30)
        nn.init.normal_(self.item.weight, std=d ** -0.5)
        with torch.no_grad():
            self.item.weight[0].zero_()

    def forward(self, seq):
        """seq (B, T) item ids + 1, right-padded with 0 -> hidden (B, T, d). Causal attention
        alone keeps real positions from seeing the padding (it is always to their right), and no
        row is ever fully masked (a fully masked row would make NaN)."""
        t = seq.shape[1]
        x = self.item(seq) * math.sqrt(self.item.embedding_dim) + self.pos(torch.arange(t))
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool), 1)
        return self.ln(self.enc(self.drop(x), mask=causal))

    def logits(self, h):
        return h @ self.item.weight[1:].t()  # (…, n_items)


def pad_right(seqs, maxlen):
    """The last maxlen items of each sequence, + 1, right-padded with 0 -> ((B, T), lengths)."""
    seqs = [s[-maxlen:] for s in seqs]
    t = max(1, max(len(s) for s in seqs))
    out = np.zeros((len(seqs), t), dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = np.asarray(s, dtype=np.int64) + 1
    return torch.from_numpy(out), torch.tensor([len(s) for s in seqs])


@torch.no_grad()
def evaluate(model, cases, n_items, batch=512):
    model.eval()
    ranks = []
    for s0 in range(0, len(cases), batch):
        chunk = cases[s0:s0 + batch]
        seq, lens = pad_right([h for h, _ in chunk], model.maxlen)
        last = model(seq)[torch.arange(len(chunk)), (lens - 1).clamp(min=0)]
        scores = model.logits(last).numpy()
        for row, (_, target) in zip(scores, chunk):
            ranks.append(beauty.rank_of(row, target))
    return beauty.metrics(ranks)


def train(model, train_seqs, valid, n_items, epochs, batch=128, lr=1e-3, seed=0, log=None,
          patience=3):
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    seqs = [s for s in train_seqs if len(s) >= 2]
    best, best_state, bad = None, None, 0
    for ep in range(epochs):
        model.train()
        t0 = time.time()
        tot = 0.0
        order = rng.permutation(len(seqs))
        for s0 in range(0, len(seqs), batch):
            chunk = [seqs[i][-(model.maxlen + 1):] for i in order[s0:s0 + batch]]
            inp, _ = pad_right([s[:-1] for s in chunk], model.maxlen)
            tgt, _ = pad_right([s[1:] for s in chunk], model.maxlen)
            h = model(inp)
            keep = tgt > 0
            loss = F.cross_entropy(model.logits(h[keep]), tgt[keep] - 1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += loss.item() * len(chunk)
        m = evaluate(model, valid, n_items)
        if log:
            log("  epoch %d loss %.4f valid %s (%.0fs)" % (ep, tot / len(seqs), json.dumps(
                {k: round(v, 4) for k, v in m.items()}), time.time() - t0))
        if best is None or m["ndcg@10"] > best["ndcg@10"]:
            best, bad = m, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= patience:
                break
    model.load_state_dict(best_state)
    return best, ep + 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--maxlen", default="50", help="comma-separated values to try")
    ap.add_argument("--dropout", default="0.2,0.5", help="comma-separated values to try")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if not os.path.isdir(a.data):
        log("sasrec: %s is absent; skipping (the data is optional)" % a.data)
        return 0
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    items, seqs = beauty.load(a.data)
    train_seqs, valid, test = beauty.split(seqs)
    n = len(items)
    t0 = time.time()
    grid, best = [], None
    for maxlen in [int(x) for x in a.maxlen.split(",")]:
        for dropout in [float(x) for x in a.dropout.split(",")]:
            torch.manual_seed(0)
            model = SASRec(n, maxlen=maxlen, dropout=dropout)
            t1 = time.time()
            vm, epochs = train(model, train_seqs, valid, n, a.epochs, log=log)
            point = {"maxlen": maxlen, "dropout": dropout, "epochs_run": epochs, "valid": vm,
                     "train_seconds": round(time.time() - t1, 1)}
            grid.append(point)
            log("sasrec: %s" % json.dumps(point))
            if best is None or vm["ndcg@10"] > best[0]["valid"]["ndcg@10"]:
                best = (point, model)
    point, model = best
    tm = evaluate(model, test, n)
    res = {"model": "SASRec", "loss": "full softmax cross-entropy over all items (no sampled "
           "negatives)", "params": {"maxlen": point["maxlen"], "dropout": point["dropout"],
                                    "epochs": point["epochs_run"]},
           "grid": grid, "train_seconds": round(time.time() - t0, 1), "valid": point["valid"],
           "test": tm}
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "sasrec.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
