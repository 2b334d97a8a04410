"""bench/plot.py turns results.json files into PNG files."""
import os
import subprocess

from conftest import PY, ROOT, run_bench

PNG = b"\x89PNG\r\n\x1a\n"


def test_plot_writes_png_files(servers, requests_file, tmp_path):
    stub = servers("stub", "--delay-ms", "5")
    outs = []
    for label, extra in (("sys-a", ["--concurrency", "1", "--rate", "50"]),
                         ("sys-b", ["--concurrency", "2"])):
        out = str(tmp_path / label)
        run_bench(stub.target, requests_file, *extra, "--label", label, "--warmup", "0.2",
                  "--window", "0.5", "--max-windows", "2", "--quiet", out=out)
        outs.append(os.path.join(out, "results.json"))
    plots = tmp_path / "plots"
    p = subprocess.run([PY, "bench/plot.py", *outs, "--out", str(plots)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    names = sorted(os.listdir(plots))
    assert names == ["hist-sys-a.png", "hist-sys-b.png", "latency-throughput.png"], names
    for n in names:
        data = (plots / n).read_bytes()
        assert data[:8] == PNG and len(data) > 5000, n
    assert sorted(p.stdout.split()) == sorted(str(plots / n) for n in names)
