"""A synthetic shop, deterministic from a seed: catalogue, keyword phrases, themes and shoppers.

What makes it a useful test of the cascade:
- themes are named collections of keyword phrases; products carry one or two keywords of a theme;
- products are sold in some regions and suit some seasons (tropical regions have no winter,
  the southern hemisphere has its seasons flipped); stock is today's, so shoppers (almost) never
  buy what is out of stock; within a theme, a heavy-tailed "appeal" makes a few products popular;
- shoppers move between themes (intent *drift*) along a fixed theme-transition structure, more often
  for "drifters", and prefer themes that suit the season where they live at that moment;
- each shopper's last session (ending in a purchase) is held out as ground truth.

    /usr/bin/python3 -m train.shop --out build/demo/shop.json [--seed 7 --products 1200 ...]
"""
import argparse
import json
import os
import sys

import numpy as np

from .calendar import SEASONS, season_of

ACTIONS = ("view", "search", "cart", "purchase")
REGIONS = (  # name, season offset, fixed season (-1 = follows the calendar)
    ("eu", 0, -1),
    ("us", 0, -1),
    ("au", 2, -1),
    ("sg", 0, 2),
)

_THEME_ADJ = ("mindful cozy sunny urban festive outdoor minimal vintage bold fresh rainy coastal "
              "playful classic alpine tropical calm smart rustic bright quiet wild golden frosty "
              "breezy zesty gentle modern").split()
_THEME_NOUN = ("wardrobe kitchen garden travel fitness beauty home office kids pets picnic "
               "holiday camping baking reading gaming wellness party beach winter").split()
_THEME_TAIL = "essentials picks edit favourites staples finds".split()
_KW_MOD = ("recycled organic wool linen cotton bamboo waterproof insulated lightweight compact "
           "stainless ceramic wooden scented unscented vegan leather knitted quilted portable "
           "reusable glass copper silk denim fleece thermal cooling solar herbal mineral "
           "cast-iron foldable kids mini deluxe natural matte glossy").split()
_KW_NOUN = ("jacket scarf mug kettle planter lantern tent backpack candle blanket pillow sandals "
            "sunscreen serum shampoo notebook lamp blender skillet teapot hammock towel umbrella "
            "boots gloves hat socks sweater shorts dress bottle bowl brush soap journal puzzle "
            "speaker rug mat cushion apron basket cooler grill chair headphones charger").split()
_KW_TYPE = "set kit pack wear gear".split()
_BRANDS = ("Acme Borealis Cobalt Dune Ember Fjord Gala Harbor Iris Juniper Kestrel Lumen Maple "
           "Nimbus Orchard Pebble Quill Rivet Sable Tundra Umber Vale Willow Yarrow Zephyr").split()


def _choice(rng, n, p=None):
    return int(rng.choice(n, p=p))


def generate(seed=7, n_themes=24, kw_per_theme=6, n_products=1200, n_shoppers=3000,
             n_eval=600, min_sessions=3, max_sessions=10, start=1735689600, n_valid=300):
    """Build the shop. `start` is the earliest shopper start (default 2025-01-01 UTC)."""
    rng = np.random.default_rng(seed)
    # --- themes: unique 3-word names, a season mask, 2..3 successor themes (the drift structure)
    names = set()
    themes = []
    while len(themes) < n_themes:
        name = "%s %s %s" % (_THEME_ADJ[rng.integers(len(_THEME_ADJ))],
                             _THEME_NOUN[rng.integers(len(_THEME_NOUN))],
                             _THEME_TAIL[rng.integers(len(_THEME_TAIL))])
        if name in names:
            continue
        names.add(name)
        r = rng.random()
        if r < 0.35:
            seasons = [0, 1, 2, 3]
        elif r < 0.7:
            s = int(rng.integers(4))
            seasons = sorted({s, (s + 1) % 4})
        else:
            seasons = [int(rng.integers(4))]
        themes.append({"id": len(themes), "name": name, "seasons": seasons, "keywords": []})
    for t in themes:
        others = [i for i in range(n_themes) if i != t["id"]]
        t["next"] = sorted(int(x) for x in rng.choice(others, size=int(rng.integers(2, 4)),
                                                       replace=False))
    # --- keywords: unique 2- or 3-word phrases; each theme gets kw_per_theme, a few shared
    kw_text = []
    kw_index = {}

    def new_keyword():
        while True:
            words = [_KW_MOD[rng.integers(len(_KW_MOD))], _KW_NOUN[rng.integers(len(_KW_NOUN))]]
            if rng.random() < 0.4:
                words.append(_KW_TYPE[rng.integers(len(_KW_TYPE))])
            phrase = " ".join(words)
            if phrase not in kw_index:
                kw_index[phrase] = len(kw_text)
                kw_text.append(phrase)
                return kw_index[phrase]

    for t in themes:
        while len(t["keywords"]) < kw_per_theme:
            if kw_text and rng.random() < 0.12:  # share a keyword with an earlier theme
                k = int(rng.integers(len(kw_text)))
                if k in t["keywords"]:
                    continue
            else:
                k = new_keyword()
            t["keywords"].append(k)
    kw_themes = [[] for _ in kw_text]
    for t in themes:
        for k in t["keywords"]:
            kw_themes[k].append(t["id"])
    # --- products
    products = []
    for i in range(n_products):
        t = themes[int(rng.integers(n_themes))]
        kws = [int(x) for x in rng.choice(t["keywords"], size=1 + int(rng.random() < 0.5),
                                           replace=False)]
        seasons = list(t["seasons"])
        if rng.random() < 0.15:  # some products suit more seasons than their theme
            seasons = sorted(set(seasons) | {int(rng.integers(4))})
        regions = sorted(int(x) for x in rng.choice(len(REGIONS), size=int(rng.integers(2, 5)),
                                                     replace=False))
        brand = _BRANDS[int(rng.integers(len(_BRANDS)))]
        stock = 0 if rng.random() < 0.08 else int(rng.integers(1, 100))
        products.append({
            "id": "p%05d" % i, "title": "%s %s" % (brand, kw_text[kws[0]]), "brand": brand,
            "theme": t["id"], "keywords": kws, "seasons": seasons, "regions": regions,
            "stock": stock, "appeal": float(rng.pareto(1.2) + 0.05),
        })
    by_theme = [[p_i for p_i, p in enumerate(products) if p["theme"] == t["id"]] for t in themes]

    def pick_product(theme, region, season):
        cand = by_theme[theme]
        w = np.array([products[c]["appeal"] *
                      (1.0 if region in products[c]["regions"] else 0.02) *
                      (1.0 if season in products[c]["seasons"] else 0.05) *
                      (1.0 if products[c]["stock"] > 0 else 0.001) for c in cand])
        return cand[_choice(rng, len(cand), w / w.sum())]

    def theme_weights(prev, season, stay):
        w = np.full(n_themes, 0.02)
        if prev is not None:
            for n in themes[prev]["next"]:
                w[n] = 1.0
        w /= w.sum()
        w = w * (1.0 - stay)
        if prev is not None:
            w[prev] += stay
        else:
            w[:] = 1.0 / n_themes
        suit = np.array([1.0 if season in t["seasons"] else 0.08 for t in themes])
        w = w * suit
        return w / w.sum()

    # --- shoppers
    shoppers = []
    for s in range(n_shoppers + n_valid + n_eval):
        region = int(rng.integers(len(REGIONS)))
        _, off, fixed = REGIONS[region]
        drifter = bool(rng.random() < 0.4)
        stay = 0.35 if drifter else 0.8
        ts = int(start + rng.integers(0, 365 * 86400))
        n_sessions = int(rng.integers(min_sessions, max_sessions + 1))
        events, sessions = [], []
        theme = None
        for si in range(n_sessions):
            ts += int(rng.exponential(3.5 * 86400)) + 600
            # shoppers shop by day: pull the session into 07:00..23:00 UTC
            hour = (ts % 86400) // 3600
            if hour < 7:
                ts += int((7 - hour) * 3600 + rng.integers(0, 3600))
            season = season_of(ts, off, fixed)
            theme = _choice(rng, n_themes, theme_weights(theme, season, stay))
            last = si == n_sessions - 1
            purchase = last or rng.random() < 0.6
            target = pick_product(theme, region, season)
            first_event = len(events)
            t_ev = ts
            if rng.random() < 0.45:
                kw = products[target]["keywords"][0] if rng.random() < 0.6 else \
                    int(rng.choice(themes[theme]["keywords"]))
                events.append({"ts": t_ev, "action": 1, "item": None, "query": kw_text[kw]})
                t_ev += int(rng.integers(5, 90))
            for _ in range(int(rng.integers(1, 5))):
                events.append({"ts": t_ev, "action": 0,
                               "item": pick_product(theme, region, season), "query": None})
                t_ev += int(rng.integers(5, 240))
            if purchase:
                events.append({"ts": t_ev, "action": 0, "item": target, "query": None})
                t_ev += int(rng.integers(5, 120))
                if rng.random() < 0.7:
                    events.append({"ts": t_ev, "action": 2, "item": target, "query": None})
                    t_ev += int(rng.integers(5, 120))
                events.append({"ts": t_ev, "action": 3, "item": target, "query": None})
            sessions.append({"start": ts, "first_event": first_event, "end_event": len(events),
                             "theme": theme, "season": season,
                             "purchase": target if purchase else None})
            ts = t_ev
        prev_themes = [x["theme"] for x in sessions[:-1]]
        shoppers.append({
            "id": "s%05d" % s, "region": region, "drifter": drifter, "events": events,
            "sessions": sessions,
            # drifted: the held-out theme is not the theme of the shopper's latest session
            "drifted": bool(sessions[-1]["theme"] != prev_themes[-1]),
            # valid shoppers tune the ranker, eval shoppers are only ever evaluated on
            "split": "train" if s < n_shoppers else "valid" if s < n_shoppers + n_valid else "eval",
        })
    return {
        "format": "vitrine-shop", "version": 1,
        "params": {"seed": seed, "n_themes": n_themes, "kw_per_theme": kw_per_theme,
                   "n_products": n_products, "n_shoppers": n_shoppers, "n_eval": n_eval,
                   "n_valid": n_valid,
                   "min_sessions": min_sessions, "max_sessions": max_sessions, "start": start},
        "actions": list(ACTIONS), "seasons": list(SEASONS),
        "regions": [{"name": n, "season_offset": o, "fixed_season": f} for n, o, f in REGIONS],
        "themes": themes, "keywords": [{"id": i, "text": k, "themes": kw_themes[i]}
                                       for i, k in enumerate(kw_text)],
        "products": products, "shoppers": shoppers,
    }


def observed(shopper):
    """The events the shop may learn from: all of a training shopper's, the history of the others."""
    if shopper["split"] == "train":
        return shopper["events"]
    return shopper["events"][:shopper["sessions"][-1]["first_event"]]


def holdout(shopper):
    """(history events, now, target session) for a shopper's held-out last session."""
    last = shopper["sessions"][-1]
    return shopper["events"][:last["first_event"]], last["start"] - 1, last


def load(path):
    with open(path) as f:
        shop = json.load(f)
    if shop.get("format") != "vitrine-shop" or shop.get("version") != 1:
        raise ValueError("%s: not a vitrine-shop version 1 file" % path)
    return shop


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--themes", type=int, default=24)
    ap.add_argument("--keywords-per-theme", type=int, default=6)
    ap.add_argument("--products", type=int, default=1200)
    ap.add_argument("--shoppers", type=int, default=3000, help="training shoppers")
    ap.add_argument("--valid-shoppers", type=int, default=300)
    ap.add_argument("--eval-shoppers", type=int, default=600)
    ap.add_argument("--max-sessions", type=int, default=10)
    a = ap.parse_args(argv)
    shop = generate(a.seed, a.themes, a.keywords_per_theme, a.products, a.shoppers,
                    a.eval_shoppers, max_sessions=a.max_sessions, n_valid=a.valid_shoppers)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(shop, f, separators=(",", ":"))
    n_ev = sum(len(s["events"]) for s in shop["shoppers"])
    print("shop: %d themes, %d keywords, %d products, %d shoppers, %d events -> %s" % (
        len(shop["themes"]), len(shop["keywords"]), len(shop["products"]),
        len(shop["shoppers"]), n_ev, a.out), file=sys.stderr)


if __name__ == "__main__":
    main()
