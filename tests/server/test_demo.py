"""deploy/demo.sh (what `make demo` runs) works end to end; here on the fixture bundle, which
`make test` builds (the demo bundle needs `make bundle`)."""
import os
import subprocess

from conftest import BUILD, FIXTURE, ROOT


def test_demo_script_on_fixture():
    env = dict(os.environ, BUILD=BUILD, DEMO=FIXTURE, REQUEST="train/demo_request.json")
    out = subprocess.run([os.path.join(ROOT, "deploy", "demo.sh")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "health: SERVING" in out.stdout
    assert "same storefront as `vitrine recommend --request train/demo_request.json`: yes" in out.stdout
    assert "32 concurrent requests: all answered" in out.stdout
    assert "invalid request: INVALID_ARGUMENT: sections must be an integer in 1.." in out.stdout
    assert "demo: server drained and exited 0" in out.stdout
