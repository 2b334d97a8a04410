import copy

import torch

from train.data import collate_train, valid_children_mask
from train.model import time_bucket
from train.train import evaluate_loss, sample_negatives, train_model, without_time
from train.vocab import BOS, EOS, SEP


def test_a_few_steps_lower_the_loss(tiny_world):
    shop, tables, catalog, model, examples = tiny_world
    model = copy.deepcopy(model)
    codes = torch.from_numpy(catalog.codes)
    before = evaluate_loss(model, examples, tables, codes)
    losses = train_model(model, examples, tables, codes, epochs=3, batch=32, lr=3e-3, seed=0)
    after = evaluate_loss(model, examples, tables, codes)
    assert len(losses) >= 10
    assert after["dec"] < 0.9 * before["dec"]
    assert after["ret"] < before["ret"]


def test_distillation_pulls_student_towards_teacher(tiny_world):
    shop, tables, catalog, model, examples = tiny_world
    codes = torch.from_numpy(catalog.codes)
    teacher = copy.deepcopy(model)
    train_model(teacher, examples, tables, codes, epochs=2, batch=32, seed=1)
    student = copy.deepcopy(model)
    losses = train_model(student, examples, tables, codes, epochs=2, batch=32, seed=2,
                         teacher=teacher, alpha=0.0)  # distillation loss only
    assert losses[-1] < losses[0]


def test_no_time_ablation_keeps_time_at_zero_and_full_softmax_negatives(tiny_world):
    """--no-time: training moves every other weight but the time projection and the time-bucket
    biases stay exactly zero, so the model ignores when things happened; --negatives >= products
    ranks the positive against every product (its own column masked)."""
    shop, tables, catalog, model, examples = tiny_world
    model = copy.deepcopy(model)
    without_time(model)
    codes = torch.from_numpy(catalog.codes)
    before = copy.deepcopy(model.state_dict())
    train_model(model, examples, tables, codes, epochs=1, batch=32, seed=0,
                negatives=len(catalog.ids))
    assert torch.count_nonzero(model.time_proj.weight) == 0
    assert all(torch.count_nonzero(layer.time_bias) == 0 for layer in model.enc)
    assert not torch.equal(before["time_proj.bias"], model.time_proj.bias.detach())
    assert torch.equal(sample_negatives(7, 7, torch.Generator()), torch.arange(7))
    assert len(sample_negatives(7, 3, torch.Generator().manual_seed(0))) == 3


def test_valid_children_follow_the_tries(tiny_world):
    shop, tables, catalog, model, examples = tiny_world
    e = examples[0]
    seq = e["seq"]
    mask = valid_children_mask(seq, tables, len(tables.vocab))
    for i in range(len(seq) - 1):
        assert mask[i, seq[i + 1]], "the target token is always a valid child"
    assert mask[0].sum() == len(tables.theme_trie.children(0)[0])
    sep = seq.index(SEP)
    assert mask[sep].sum() == len(tables.keyword_trie.children(0)[0])
    assert seq[0] == BOS and seq[-1] == EOS


def test_time_bucket_matches_hstu_formula():
    dt = torch.tensor([0, 1, 2, 3, -3, 60, 3600, 86400, 10 ** 9, 10 ** 18])
    got = time_bucket(dt).tolist()
    import math
    want = [min(128, max(0, math.floor(math.log(max(abs(x), 1)) / 0.301))) for x in dt.tolist()]
    assert got == want
    assert got[0] == 0 and got[-1] == 128


def test_incremental_decode_equals_teacher_forcing(tiny_world):
    shop, tables, catalog, model, examples = tiny_world
    b = collate_train(examples[:1], tables, model.cfg)
    with torch.no_grad():
        mem = model.encode(b)
        seq = b["seq"][0]
        full = model.decode_train(mem, seq[:-1].unsqueeze(0))[0]
        xkv = model.cross_kv(mem)
        cache = None
        for pos in range(len(seq) - 1):
            h, cache = model.decode_step(seq[pos:pos + 1], pos, cache, xkv)
            step = h @ model.tok_emb.weight.t()
            assert torch.allclose(step[0], full[pos], atol=1e-5, rtol=1e-5)


def test_checkpoint_round_trip(tiny_world, tmp_path):
    """save_checkpoint/load_checkpoint keep the weights, the config and the report (plain Python
    values, as train.main writes them); torch.load must not refuse them (weights_only)."""
    from train.train import load_checkpoint, save_checkpoint
    shop, tables, catalog, model, examples = tiny_world
    extra = {"params": 123, "train_seconds": 1.5, "distilled": True, "time": False,
             "negatives": 128, "val_loss": {"dec": 2.25, "dec_full": 3.5, "ret": 4.0}}
    path = str(tmp_path / "student.pt")
    save_checkpoint(path, model, extra)
    loaded, got = load_checkpoint(path)
    assert got == extra
    assert loaded.cfg == model.cfg and not loaded.training
    s1, s2 = model.state_dict(), loaded.state_dict()
    assert set(s1) == set(s2) and all(torch.equal(s1[k], s2[k]) for k in s1)


def test_student_only_trains_no_teacher_and_refuses_teacher_options(tiny_shop, tmp_path, capsys):
    import json

    import pytest

    from train.train import main
    shop = tmp_path / "shop.json"
    shop.write_text(json.dumps(tiny_shop))
    out = tmp_path / "models"
    main(["--shop", str(shop), "--out", str(out), "--student-only", "--student-epochs", "1",
          "--threads", "1"])
    assert (out / "student.pt").exists() and not (out / "teacher.pt").exists()
    report = json.loads((out / "training.json").read_text())
    assert "teacher" not in report
    assert report["student"]["student_only"] and not report["student"]["distilled"]
    for extra in (["--teacher-from", str(out / "student.pt")], ["--teacher-epochs", "0"],
                  ["--only-teacher"], ["--teacher-lr", "0.001"]):
        with pytest.raises(SystemExit):
            main(["--shop", str(shop), "--out", str(tmp_path / "x"), "--student-only"] + extra)
        err = capsys.readouterr().err
        assert "--student-only" in err and extra[0] in err
    assert not (tmp_path / "x").exists(), "refused before anything was written"


def test_time_holdout_is_the_latest_examples(tiny_world):
    from train.train import time_holdout
    examples = tiny_world[4]
    train, held = time_holdout(examples, share=0.1)
    assert len(train) + len(held) == len(examples) and len(held) == len(examples) // 10
    assert max(int(e["ts"][0]) for e in train) <= min(int(e["ts"][0]) for e in held)


def test_in_batch_negatives_by_hand(tiny_world):
    """In-batch: row i's logits are u_i . e_j - logq[p_j] over the batch's positives, a repeat of
    row i's product elsewhere masked; checked against a loop over rows."""
    from train.data import collate_train
    from train.train import NEG_INF, forward_losses, in_batch_logq
    shop, tables, catalog, model, examples = tiny_world
    codes = torch.from_numpy(catalog.codes)
    batch = examples[:6] + [examples[0]]  # row 6 repeats row 0's product
    b = collate_train(batch, tables, model.cfg)
    logq = in_batch_logq(examples, len(catalog.ids))
    with torch.no_grad():
        _, parts, _, rl = forward_losses(model, b, None, codes, logq)
        u = model.user_vector(model.encode(b))
        e = model.product_vectors(codes[b["product"]])
    prods = [int(p) for p in b["product"]]
    total = 0.0
    for i in range(len(batch)):
        row = []
        for j in range(len(batch)):
            if j != i and prods[j] == prods[i]:
                assert rl[i, j] == NEG_INF
                continue
            want = float(u[i] @ e[j]) - float(logq[prods[j]])
            assert abs(float(rl[i, j]) - want) < 1e-4
            row.append(want)
        total += -(row[[j for j in range(len(batch)) if j == i or prods[j] != prods[i]].index(i)]
                   - torch.logsumexp(torch.tensor(row, dtype=torch.float64), 0).item())
    assert abs(parts["ret"] - total / len(batch)) < 1e-4
    counts = torch.bincount(torch.tensor([e["product"] for e in examples]),
                            minlength=len(catalog.ids)).to(torch.float64)
    p = int(examples[0]["product"])
    assert abs(float(logq[p]) - float(torch.log(counts[p] / len(examples)))) < 1e-5


def test_head_recall_matches_a_brute_force_rank(tiny_world):
    from train.train import head_recall
    shop, tables, catalog, model, examples = tiny_world
    codes = torch.from_numpy(catalog.codes)
    got = head_recall(model, examples[:40], codes, chunk=16)
    from train.data import collate
    with torch.no_grad():
        s = model.user_vector(model.encode(collate(examples[:40]))) @ \
            model.product_vectors(codes).t()
    hits = ndcg = 0.0
    for i, e in enumerate(examples[:40]):
        t = s[i, e["product"]]
        rank = float((s[i] > t).sum()) + 0.5 * (float((s[i] == t).sum()) - 1)
        if rank < 10:
            hits += 1
            ndcg += 1 / torch.log2(torch.tensor(rank + 2, dtype=torch.float64)).item()
    assert got["n"] == 40
    assert abs(got["recall@10"] - hits / 40) < 1e-12 and abs(got["ndcg@10"] - ndcg / 40) < 1e-9


def test_early_stopping_keeps_the_best_state(tiny_world):
    """eval_every=2, patience=2: the curve is measured, training stops once two measurements pass
    without a gain (or the epochs end), and the model left is the best one measured."""
    from train.train import head_recall, time_holdout
    shop, tables, catalog, model, examples = tiny_world
    model = copy.deepcopy(model)
    codes = torch.from_numpy(catalog.codes)
    train, held = time_holdout(examples, share=0.2)
    train_model(model, train, tables, codes, epochs=6, batch=16, lr=1e-2, seed=0, negatives=0,
                holdout=held, eval_every=2, patience=2)
    es = model.early_stop
    assert es["curve"] and es["best_recall@10"] == max(c["recall@10"] for c in es["curve"])
    assert head_recall(model, held, codes)["recall@10"] == es["best_recall@10"]
    after_best = [c for c in es["curve"] if c["step"] > es["best_step"]]
    assert len(after_best) <= 2


def test_lr_schedule_follows_the_time_budget():
    """Without a budget: the step schedule (warm-up to 1 at 10%, 5% at the end). With one, the
    schedule is at whichever is further along, the steps or the seconds."""
    from train.train import lr_factor
    assert abs(lr_factor(99, 1000) - 1.0) < 1e-12 and abs(lr_factor(999, 1000) - 0.05) < 1e-5
    assert abs(lr_factor(550, 1000) - 0.525) < 1e-12  # halfway through the decay
    # 1 step of 1000 but half the seconds spent: halfway (p = 0.5) -> 0.05 + 0.95 * 0.5 * (1 +
    # cos(pi * 0.4 / 0.9))
    import math
    want = 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 0.4 / 0.9))
    assert abs(lr_factor(0, 1000, max_seconds=100, elapsed=50) - want) < 1e-12
    assert abs(lr_factor(0, 1000, max_seconds=100, elapsed=100) - 0.05) < 1e-12
    assert abs(lr_factor(0, 1000, max_seconds=100, elapsed=5) - 0.5) < 1e-12  # warming up
    # the steps further along than the clock: the steps decide
    assert lr_factor(899, 1000, max_seconds=100, elapsed=1) == lr_factor(899, 1000, 100, 0.0)
