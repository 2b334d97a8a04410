"""The tree's layers, one way: kernels/ (the math) <- engine/ (bundle, catalogue, cascade) <- serve/
(gRPC, scheduler, metrics) <- cli/. A file may include its own layer's headers and those below,
never one above (the link-time half: the engine's fuzz replays link vitrine_engine alone,
cmake/fuzz.cmake)."""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
LAYERS = ["kernels", "engine", "serve", "cli"]
INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


def includes(layer):
    """(file, layer of each quoted include) for every source of a layer; a bare name is its own
    directory's."""
    out = []
    for d, _, names in os.walk(os.path.join(ROOT, layer)):
        for n in names:
            if n.endswith((".c", ".h", ".cu", ".cuh")):
                path = os.path.join(d, n)
                with open(path, encoding="utf-8") as f:
                    for inc in INCLUDE.findall(f.read()):
                        top = inc.split("/")[0] if "/" in inc else layer
                        out.append((os.path.relpath(path, ROOT), inc, top))
    return out


def test_no_layer_includes_one_above_it():
    seen = 0
    for i, layer in enumerate(LAYERS):
        for path, inc, top in includes(layer):
            seen += 1
            if top in LAYERS:
                assert LAYERS.index(top) <= i, f"{path} includes {inc}: {top}/ is above {layer}/"
    assert seen > 100, "no includes found: the layer directories moved?"


def test_the_check_catches_an_upward_include(tmp_path, monkeypatch):
    os.makedirs(tmp_path / "engine")
    (tmp_path / "engine" / "x.c").write_text('#include "serve/server.h"\n#include "bundle.h"\n')
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    got = includes("engine")
    assert ("engine/x.c", "serve/server.h", "serve") in got
    assert ("engine/x.c", "bundle.h", "engine") in got
