"""Train the teacher, then distil the student.

Losses, per example (next session's theme, keyword and purchased product as targets):
- decoder: cross-entropy over the trie's valid children at each position (the distribution the
  constrained decoder uses, so inference needs logits only for valid children), plus 0.3 x the
  full-vocabulary cross-entropy (so unconstrained decoding is a fair contrast, not noise);
- retrieval head: sampled softmax of the purchased product against `negatives` products drawn
  uniformly per batch (a negative equal to the positive is masked out), a full softmax over every
  product (negatives >= the catalogue), or with --in-batch the batch's other purchased products
  (logQ-corrected: each candidate's logit less the log of its share of the training targets, the
  rate at which in-batch sampling draws it);
- student only: alpha x the hard losses + (1 - alpha) x T^2 x KL(teacher || student) of the
  temperature-softened valid-children distributions and of the sampled retrieval distributions.

Validation: the latest 5% of the training examples by time (--holdout time; --holdout random
for a random 5%), never trained on. With --eval-every N the retrieval head's recall@10 over the
whole catalogue on that hold-out is measured every N steps, the best state kept, and training
stops after --patience measurements without a gain (early stopping); --max-minutes bounds each
model's training time.

    /usr/bin/python3 -m train.train --shop build/demo/shop.json --out build/demo/models
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import shop as shop_mod
from .data import Catalog, Tables, collate, collate_train, training_examples
from .model import Config, Model, n_params

TEACHER = dict(d_model=128, n_heads=4, n_enc_layers=2, n_dec_layers=2, d_ff=512, n_queries=8,
               d_retrieval=64)
STUDENT = dict(d_model=64, n_heads=4, n_enc_layers=2, n_dec_layers=1, d_ff=256, n_queries=4,
               d_retrieval=64)
NEG_INF = -1e9


def masked_logits(logits, valid):
    return logits.masked_fill(~valid, NEG_INF)


def forward_losses(model, b, neg, prod_codes, logq=None):
    """-> (hard loss, dict of parts, decoder masked logits, retrieval logits). neg: the negative
    product indices, or None for in-batch negatives (the batch's positives, less logq)."""
    mem = model.encode(b)
    inp, tgt = b["seq"][:, :-1], b["seq"][:, 1:]
    logits = model.decode_train(mem, inp)
    keep = tgt != 0
    ml = masked_logits(logits, b["valid"])
    ce_masked = F.cross_entropy(ml[keep], tgt[keep])
    ce_full = F.cross_entropy(logits[keep], tgt[keep])
    u = model.user_vector(mem)  # (B, R)
    e_pos = model.product_vectors(prod_codes[b["product"]])  # (B, R)
    if neg is None:
        # in-batch: row i against every example's positive; the same product elsewhere in the
        # batch is not a negative of row i (masked), its own column is the target
        rl = u @ e_pos.t()
        if logq is not None:
            rl = rl - logq[b["product"]].unsqueeze(0)
        same = b["product"].unsqueeze(0) == b["product"].unsqueeze(1)
        rl = rl.masked_fill(same & ~torch.eye(len(u), dtype=torch.bool), NEG_INF)
        ce_ret = F.cross_entropy(rl, torch.arange(len(u)))
    else:
        e_neg = model.product_vectors(prod_codes[neg])  # (NEG, R)
        rl = torch.cat([(u * e_pos).sum(-1, keepdim=True), u @ e_neg.t()], dim=1)
        clash = torch.cat([torch.zeros(len(u), 1, dtype=torch.bool),
                           neg.unsqueeze(0) == b["product"].unsqueeze(1)], dim=1)
        rl = rl.masked_fill(clash, NEG_INF)
        ce_ret = F.cross_entropy(rl, torch.zeros(len(u), dtype=torch.int64))
    hard = ce_masked + 0.3 * ce_full + ce_ret
    parts = {"dec": ce_masked.item(), "dec_full": ce_full.item(), "ret": ce_ret.item()}
    return hard, parts, (ml, keep), rl


def kd_loss(student_logits, teacher_logits, keep, temp):
    """T^2 KL(teacher || student) of temperature-softened distributions at kept rows."""
    s = F.log_softmax(student_logits[keep] / temp, dim=-1)
    t = F.softmax(teacher_logits[keep] / temp, dim=-1)
    return F.kl_div(s, t, reduction="batchmean") * temp * temp


def sample_negatives(n_prod, negatives, g):
    """Retrieval negatives: `negatives` uniform product indices, or every product (a full softmax;
    the positive's own column is masked in forward_losses) when negatives >= n_prod; None (0):
    in-batch negatives."""
    if negatives == 0:
        return None
    if negatives >= n_prod:
        return torch.arange(n_prod)
    return torch.randint(0, n_prod, (negatives,), generator=g)


def length_batches(examples, batch, rng, pool=16):
    """Shuffled batches of similar history length (less padding): sort pools of pool x batch
    shuffled examples by length, cut them into batches, shuffle the batches."""
    order = rng.permutation(len(examples))
    out = []
    for p0 in range(0, len(order), pool * batch):
        chunk = sorted(order[p0:p0 + pool * batch], key=lambda i: examples[i]["length"])
        out.extend(chunk[i:i + batch] for i in range(0, len(chunk), batch))
    return [out[i] for i in rng.permutation(len(out))]


def lr_factor(i, total, max_seconds=None, elapsed=0.0):
    """The learning rate's factor at step i of total: linear warm-up over the first 10%, then
    cosine decay to 5%. With a time budget (max_seconds, `elapsed` of it spent) the schedule runs
    over whichever ends first, the steps or the seconds."""
    if max_seconds is None:
        warm = max(1, total // 10)
        if i < warm:
            return (i + 1) / warm
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, (i - warm) /
                                                              max(1, total - warm))))
    p = min(1.0, max((i + 1) / total, elapsed / max_seconds))
    if p < 0.1:
        return p / 0.1
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (p - 0.1) / 0.9))


def in_batch_logq(examples, n_prod):
    """log of each product's share of the training targets (floored at one count): the logQ
    correction of in-batch negatives."""
    counts = np.bincount([e["product"] for e in examples], minlength=n_prod).astype(np.float64)
    return torch.from_numpy(np.log(np.maximum(counts, 1.0) / len(examples))).to(torch.float32)


def time_holdout(examples, share=0.05):
    """-> (train, hold-out): the latest `share` of the examples by their request time (ts[0])."""
    order = sorted(range(len(examples)), key=lambda i: (int(examples[i]["ts"][0]), i))
    n = max(1, int(len(examples) * share))
    return [examples[i] for i in order[:-n]], [examples[i] for i in order[-n:]]


@torch.no_grad()
def head_recall(model, examples, prod_codes, k=10, chunk=256):
    """The retrieval head alone on held-out examples: every product scored, the purchased one's
    rank (ties counted as half) -> {"recall@10", "ndcg@10", "n"}."""
    was = model.training
    model.eval()
    e_all = model.product_vectors(prod_codes)  # (P, R)
    hits, ndcg = 0.0, 0.0
    for s0 in range(0, len(examples), chunk):
        part = examples[s0:s0 + chunk]
        b = collate(part)
        s = model.user_vector(model.encode(b)) @ e_all.t()  # (B, P)
        tgt = torch.tensor([e["product"] for e in part], dtype=torch.int64)
        ts = s.gather(1, tgt.unsqueeze(1))
        rank = (s > ts).sum(1).to(torch.float64) + 0.5 * ((s == ts).sum(1) - 1).to(torch.float64)
        hit = rank < k
        hits += hit.sum().item()
        ndcg += (hit.to(torch.float64) / torch.log2(rank + 2)).sum().item()
    model.train(was)
    n = max(1, len(examples))
    return {"recall@10": hits / n, "ndcg@10": ndcg / n, "n": len(examples)}


def train_model(model, examples, tables, prod_codes, epochs, batch=128, lr=3e-3, negatives=128,
                seed=0, teacher=None, alpha=0.5, temp=2.0, log=None, max_steps=None,
                holdout=None, eval_every=0, patience=3, max_seconds=None):
    """Trains in place; returns the list of per-step total losses. negatives=0: in-batch
    negatives (logQ-corrected). With holdout examples and eval_every > 0, the retrieval head's
    recall@10 on them is measured every eval_every steps and at the end, the best state is kept
    and training stops after `patience` measurements without a gain; model.early_stop then
    holds the curve. max_seconds: stop once training has taken that long (the learning-rate
    schedule then runs over the time budget where it ends before the steps)."""
    cfg = model.cfg
    t_start = time.time()
    logq = in_batch_logq(examples, len(prod_codes)) if negatives == 0 else None
    best, curve, since = None, [], 0
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps_per_epoch = (len(examples) + batch - 1) // batch
    total = steps_per_epoch * epochs if max_steps is None else max_steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: lr_factor(i, total, max_seconds, time.time() - t_start))
    losses, step = [], 0
    n_prod = len(prod_codes)
    model.train()

    def measure():
        """-> True to stop (patience spent)."""
        nonlocal best, since
        r = head_recall(model, holdout, prod_codes)
        curve.append({"step": step, "seconds": round(time.time() - t_start, 1), **r})
        if best is None or r["recall@10"] > best[0]:
            best = (r["recall@10"], step, {k: v.detach().clone()
                                          for k, v in model.state_dict().items()})
            since = 0
        else:
            since += 1
        if log:
            log("  step %d hold-out head recall@10 %.4f ndcg@10 %.4f (best %.4f at step %d)" % (
                step, r["recall@10"], r["ndcg@10"], best[0], best[1]))
        return since >= patience

    early = holdout is not None and eval_every > 0
    stop = False
    for ep in range(epochs):
        if stop:
            break
        for idx in length_batches(examples, batch, rng):
            if max_steps is not None and step >= max_steps:
                stop = True
                break
            if max_seconds is not None and time.time() - t_start > max_seconds:
                if log:
                    log("  stopping at step %d: the %.0f s budget is spent" % (step, max_seconds))
                stop = True
                break
            b = collate_train([examples[i] for i in idx], tables, cfg)
            neg = sample_negatives(n_prod, negatives, g)
            hard, parts, (ml, keep), rl = forward_losses(model, b, neg, prod_codes, logq)
            loss = hard
            if teacher is not None:
                with torch.no_grad():
                    _, _, (tml, _), trl = forward_losses(teacher, b, neg, prod_codes, logq)
                kd = kd_loss(ml, tml, keep, temp) + kd_loss(
                    rl, trl, torch.ones(len(rl), dtype=torch.bool), temp)
                loss = alpha * hard + (1 - alpha) * kd
                parts["kd"] = kd.item()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            step += 1
            if log and step % 50 == 0:
                log("  epoch %d step %d loss %.4f %s" % (
                    ep, step, loss.item(), " ".join("%s=%.3f" % kv for kv in parts.items())))
            if early and step % eval_every == 0 and measure():
                if log:
                    log("  early stop at step %d: no gain in %d measurements" % (step, patience))
                stop = True
                break
    if early:
        if not curve or curve[-1]["step"] != step:
            measure()
        model.load_state_dict(best[2])
        model.early_stop = {"best_step": best[1], "best_recall@10": best[0], "steps": step,
                            "curve": curve}
    model.eval()
    return losses


@torch.no_grad()
def evaluate_loss(model, examples, tables, prod_codes, seed=1, negatives=128):
    g = torch.Generator().manual_seed(seed)
    model.eval()
    tot, n = {"dec": 0.0, "dec_full": 0.0, "ret": 0.0}, 0
    for s0 in range(0, len(examples), 256):
        chunk = examples[s0:s0 + 256]
        b = collate_train(chunk, tables, model.cfg)
        neg = sample_negatives(len(prod_codes), negatives, g)
        _, parts, _, _ = forward_losses(model, b, neg, prod_codes)
        for k in tot:
            tot[k] += parts[k] * len(chunk)
        n += len(chunk)
    return {k: v / max(n, 1) for k, v in tot.items()}


def without_time(model):
    """Ablation: zero and freeze the time encoding's projection (Time2Vec and calendar features
    then add nothing but a constant) and every encoder layer's time-bucket bias."""
    with torch.no_grad():
        model.time_proj.weight.zero_()
        for layer in model.enc:
            layer.time_bias.zero_()
            layer.time_bias.requires_grad_(False)
    model.time_proj.weight.requires_grad_(False)


def save_checkpoint(path, model, extra):
    torch.save({"config": model.cfg.to_dict(), "state": model.state_dict(), "extra": extra}, path)


def load_checkpoint(path):
    # A checkpoint is this project's own file: plain Python values (the config and "extra" dicts
    # of ints, floats, bools, strings) beside the tensors. torch >= 2.6 defaults to
    # weights_only=True, and torch 1.13's weights-only unpickler cannot read a Python float, so
    # the one setting that reads these files the same way on both is an explicit
    # weights_only=False (torch's behaviour before 2.6). Load only checkpoints you trust.
    ck = torch.load(path, weights_only=False)
    model = Model(Config(**ck["config"]))
    model.load_state_dict(ck["state"])
    model.eval()
    return model, ck["extra"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shop", required=True)
    ap.add_argument("--out", required=True, help="directory for teacher.pt and student.pt")
    ap.add_argument("--teacher-epochs", type=int, help="default 5")
    ap.add_argument("--student-epochs", type=int, default=5)
    ap.add_argument("--teacher-lr", type=float, help="default 1.5e-3")
    ap.add_argument("--student-lr", type=float, default=3e-3)
    ap.add_argument("--only-teacher", action="store_true", help="stop after the teacher")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-distill", action="store_true",
                    help="train the student on hard labels only (ablation)")
    ap.add_argument("--no-time", action="store_true",
                    help="ablation: the time encoding's projection and every time-bucket bias are "
                    "held at zero (the bundle stays loadable by the C engine)")
    ap.add_argument("--negatives", type=int,
                    help="retrieval negatives per step, uniform over the catalogue; at least the "
                    "number of products means a full softmax over every product (default 128)")
    ap.add_argument("--in-batch", action="store_true",
                    help="retrieval negatives: the batch's other purchased products, "
                    "logQ-corrected (instead of --negatives)")
    ap.add_argument("--holdout", choices=("time", "random"), default="time",
                    help="the validation 5%%: the latest training examples by time (default) or "
                    "a random draw")
    ap.add_argument("--eval-every", type=int, default=0,
                    help="measure the retrieval head's recall@10 on the hold-out every N steps, "
                    "keep the best state, stop after --patience measurements without a gain "
                    "(default 0: off, train every epoch)")
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--max-minutes", type=float,
                    help="stop each model's training after this many minutes; the learning-rate "
                    "warm-up and decay then run over that time where it ends before the epochs")
    ap.add_argument("--teacher-from", help="distil from this teacher checkpoint instead of "
                    "training one")
    ap.add_argument("--student-only", action="store_true", help="train the student alone on "
                    "hard labels: no teacher is trained or loaded, nothing is distilled")
    a = ap.parse_args(argv)
    if a.in_batch and a.negatives is not None:
        ap.error("--in-batch takes the batch's products as negatives: drop --negatives")
    if a.negatives is not None and a.negatives < 1:
        ap.error("--negatives must be at least 1")
    if a.eval_every < 0 or a.patience < 1:
        ap.error("--eval-every must be >= 0 and --patience >= 1")
    negatives = 0 if a.in_batch else (a.negatives or 128)
    if a.student_only:
        clash = [o for o, v in (("--teacher-from", a.teacher_from), ("--only-teacher",
                                a.only_teacher), ("--teacher-epochs", a.teacher_epochs),
                                ("--teacher-lr", a.teacher_lr)) if v is not None and v is not False]
        if clash:
            ap.error("--student-only trains no teacher and distils nothing: it cannot be combined "
                     "with %s" % ", ".join(clash))
        a.no_distill = True
    if a.teacher_epochs is None:
        a.teacher_epochs = 5
    if a.teacher_lr is None:
        a.teacher_lr = 1.5e-3
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    shop = shop_mod.load(a.shop)
    tables = Tables.from_shop(shop)
    os.makedirs(a.out, exist_ok=True)
    common = dict(vocab_size=len(tables.vocab), n_regions=len(tables.regions),
                  codebook=shop["params"].get("codebook", Config.codebook))
    catalog = Catalog.from_shop(shop, Config(**common).code_levels, Config(**common).codebook)
    prod_codes = torch.from_numpy(catalog.codes)
    t0 = time.time()
    examples = training_examples(shop, tables, catalog, Config(**common))
    if a.holdout == "time":
        train, val = time_holdout(examples)
    else:
        rng = np.random.default_rng(a.seed)
        perm = rng.permutation(len(examples))
        n_val = max(1, len(examples) // 20)
        val = [examples[i] for i in perm[:n_val]]
        train = [examples[i] for i in perm[n_val:]]
    log("examples: %d train, %d validation (%s hold-out, %.1fs)" % (
        len(train), len(val), a.holdout, time.time() - t0))
    report = {}
    neg = dict(negatives=negatives)
    # the validation loss with the training's negatives (in-batch has none of its own: 128 uniform)
    val_neg = dict(negatives=negatives or 128)
    early = dict(holdout=val, eval_every=a.eval_every, patience=a.patience,
                 max_seconds=None if a.max_minutes is None else 60 * a.max_minutes)

    def summary(model, seconds):
        out = {"params": n_params(model), "train_seconds": round(seconds, 1),
               "val_loss": evaluate_loss(model, val, tables, prod_codes, **val_neg),
               "val_head": head_recall(model, val, prod_codes)}
        if hasattr(model, "early_stop"):
            out["early_stop"] = model.early_stop
        return out
    teacher = None
    if a.student_only:
        log("teacher: none (--student-only)")
    elif a.teacher_from:
        teacher, report["teacher"] = load_checkpoint(a.teacher_from)
        log("teacher: %s (loaded)" % a.teacher_from)
    else:
        teacher = Model(Config(**common, **TEACHER))
        if a.no_time:
            without_time(teacher)
        log("teacher: %d parameters" % n_params(teacher))
        t0 = time.time()
        train_model(teacher, train, tables, prod_codes, a.teacher_epochs, lr=a.teacher_lr,
                    seed=a.seed, log=log, **neg, **early)
        report["teacher"] = summary(teacher, time.time() - t0)
        log("teacher: %s" % json.dumps(report["teacher"]))
        save_checkpoint(os.path.join(a.out, "teacher.pt"), teacher, report["teacher"])
    if a.only_teacher:
        return
    torch.manual_seed(a.seed + 1)
    student = Model(Config(**common, **STUDENT))
    if a.no_time:
        without_time(student)
    log("student: %d parameters" % n_params(student))
    t0 = time.time()
    train_model(student, train, tables, prod_codes, a.student_epochs, lr=a.student_lr,
                seed=a.seed + 1,
                teacher=None if a.no_distill else teacher, log=log, **neg, **early)
    report["student"] = summary(student, time.time() - t0)
    report["student"].update({"distilled": not a.no_distill, "student_only": a.student_only,
                              "time": not a.no_time,
                              "negatives": "in-batch" if a.in_batch else negatives,
                              "holdout": a.holdout})
    log("student: %s" % json.dumps(report["student"]))
    save_checkpoint(os.path.join(a.out, "student.pt"), student, report["student"])
    with open(os.path.join(a.out, "training.json"), "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
