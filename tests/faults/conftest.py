"""Fixtures of the fault and abuse suite (make test-faults).

Everything comes from tests/integration/conftest.py (the Router class, the
router_factory fixture with its survivors, sanitizer and worker-death
guards) and tests/integration/mephisto_fakes.py: that conftest is loaded
under its own module name and its names re-exported here, so this file is
the `conftest` that mephisto_fakes imports from when the faults suite runs.
"""

import importlib.util
import sys
from pathlib import Path

INTEGRATION = Path(__file__).resolve().parents[1] / "integration"


def _load_integration_conftest():
    name = "mephisto_integration_conftest"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, INTEGRATION / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


_ic = _load_integration_conftest()
# every public name (helpers, Router, the fixtures and the report hook)
globals().update({k: v for k, v in vars(_ic).items() if not k.startswith("__")})

if str(INTEGRATION) not in sys.path:
    sys.path.insert(0, str(INTEGRATION))  # mephisto_fakes

import contextlib  # noqa: E402

import pytest  # noqa: E402

from mephisto_fakes import Peers, protocol_checked  # noqa: E402

# every router of this suite: short request timeout, info log (debug would
# log every frame of the floods)
FAULT_KEYS = {"log_level": "info", "request_timeout": 3}


class Env(Peers):
    """Routers, fake backends, fake browsers and raw WebSockets of one test;
    the fake backends and browsers check every packet they get from the
    router (mephisto_fakes.protocol_checked)."""

    def __init__(self, factory, tmp_path):
        self.factory = factory
        self.tmp_path = tmp_path
        self.r = None
        self.raws = []
        self.cleanups = []  # callables run at teardown, last first
        super().__init__()

    def router(self, start=True, **keys):
        k = dict(FAULT_KEYS)
        k.update(keys)
        r = self.factory(start=start, **k)
        if self.r is None:
            self.r = r
        return r

    def backend(self, router=None, connect=True, **kw):
        kw.setdefault("poll_interval", None)
        return self.add_backend(router or self.r, connect, **kw)

    def browser(self, router=None, **kw):
        return self.add_browser(router or self.r, **kw)

    def raw(self, slot=None, rcvbuf=None, router=None):
        from faultlib import raw_ws_on
        return raw_ws_on(router or self.r, slot, rcvbuf=rcvbuf, registry=self.raws)

    def teardown(self):
        for fn in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                fn()
        for c in self.raws:
            c.abort()
        return super().teardown()


@pytest.fixture
def env(router_factory, tmp_path):
    with protocol_checked(Env(router_factory, tmp_path)) as e:
        yield e
