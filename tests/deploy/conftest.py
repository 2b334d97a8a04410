"""tests/deploy fixtures; the helpers are in vt_deploy.py."""
import pytest

from vt_deploy import Server, need_fixture, need_vitrine


@pytest.fixture
def server_factory():
    started = []

    def make(*extra, **kw):
        need_vitrine()
        need_fixture()
        s = Server(*extra, **kw)
        started.append(s)
        return s

    yield make
    for s in started:
        s.kill()
