"""iron_cage: an agent's view of the Iron Cage it runs in.

ironcaged loads this package into every Python agent it starts (``[[agent]]
python = ..., script = ...``), before the agent's own code runs. Nothing needs
importing for metering and budgets to work (the gateway sees every LLM call);
import it to ask the cage things::

    import iron_cage

    b = iron_cage.budget()                 # or: await iron_cage.abudget()
    print(f"{b.remaining} of {b.limit} USD left this {b.period}")

    with iron_cage.tag("research"):        # LLM calls inside are billed to "research"
        llm.invoke("...")

    iron_cage.report_cost(0.002, "web-search")   # a paid tool, booked in the ledger
    iron_cage.redact("mail jane@example.com")    # 'mail [EMAIL]' (the daemon's PII engine)

    db_password = iron_cage.secret("DB_PASSWORD")   # a secret granted in the config
    if "DB_PASSWORD" in iron_cage.secrets_rotated():  # the operator rotated it since
        reconnect(iron_cage.secret("DB_PASSWORD"))

Every function has an ``a``-prefixed awaitable twin for asyncio where it talks
to the daemon (``abudget``, ``areport_cost``, ``asecret``, ``asecrets_rotated``).

Outside ironcaged, ``import iron_cage`` works and every call raises
:class:`NotUnderCage` ("not running under ironcaged"); use
:func:`running_under_cage` to check first.
"""

# Only what the interpreter has loaded anyway, plus contextvars: this import
# runs before every Python agent's first line (functools and threading are
# imported where needed).
import contextvars
import os
import sys

from . import _native
from ._native import (  # noqa: F401  (re-exported)
    Budget,
    Finding,
    IronCageError,
    NotUnderCage,
    SecretsUnavailable,
    agent_name,
    abudget,
    asecrets_rotated,
    budget,
    heartbeat,
    redact,
    running_under_cage,
    scan,
    secrets_rotated,
)

__all__ = [
    "Budget", "Finding", "IronCageError", "NotUnderCage", "SecretsUnavailable",
    "agent_name", "budget", "abudget", "report_cost", "areport_cost", "secret", "asecret",
    "secrets_rotated", "asecrets_rotated",
    "heartbeat", "scan", "redact", "tag", "current_tag", "running_under_cage",
]

TAG_HEADER = "X-Iron-Cage-Tag"
_MAX_TAG = 128
_tag = contextvars.ContextVar("iron_cage_tag", default=None)


def current_tag():
    """The tag in effect in this thread or asyncio task (``None`` outside any ``tag()``)."""
    return _tag.get()


class tag:
    """Labels the LLM calls made inside it for cost attribution
    (``ironctl costs --by tag``)::

        with iron_cage.tag("summarize"):
            client.chat.completions.create(...)

    Sets the ``X-Iron-Cage-Tag`` header on every request sent with httpx (the
    openai and anthropic SDKs, LangChain's OpenAI/Anthropic models) and labels
    ``report_cost()`` calls. It is a ``contextvars`` value: each thread and
    each asyncio task sees its own (tasks inherit the tag in effect where they
    were created), so concurrent tasks can be tagged differently. Nested tags:
    the innermost wins. A header the caller sets explicitly is left alone.
    Also works as ``async with`` and as a decorator.
    """

    __slots__ = ("name", "_tokens")

    def __init__(self, name):
        _native._require("tag()")
        if not isinstance(name, str):
            raise TypeError(f"tag name must be a str, not {type(name).__name__}")
        name = name.strip()
        if not (1 <= len(name) <= _MAX_TAG) or not all(0x20 <= ord(c) < 0x7F for c in name):
            raise ValueError(f"tag name must be 1-{_MAX_TAG} visible ASCII characters, not {name!r}")
        self.name = name
        self._tokens = []

    def __enter__(self):
        self._tokens.append(_tag.set(self.name))
        return self

    def __exit__(self, *exc):
        _tag.reset(self._tokens.pop())
        return False

    async def __aenter__(self):
        return self.__enter__()

    async def __aexit__(self, *exc):
        return self.__exit__(*exc)

    def __call__(self, fn):
        import functools
        import inspect

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def awrapper(*a, **kw):
                with tag(self.name):
                    return await fn(*a, **kw)
            return awrapper

        @functools.wraps(fn)
        def wrapper(*a, **kw):
            with tag(self.name):
                return fn(*a, **kw)
        return wrapper

    def __repr__(self):
        return f"iron_cage.tag({self.name!r})"


def report_cost(usd, label):
    """Books ``usd`` spent outside the gateway (a paid search API, a tool) in this
    agent's ledger, labelled ``label`` (``tool/<label>`` in ``ironctl costs
    --by model``) and tagged with the current ``tag()``. Returns the budget
    afterwards. The cost is booked even if it exceeds the budget: it was spent."""
    return _native.report_cost(usd, label, _tag.get())


def areport_cost(usd, label):
    """Awaitable form of :func:`report_cost`."""
    return _native.areport_cost(usd, label, _tag.get())


def secret(name):
    """The current value of secret ``name``, granted to this agent in the config
    (``secrets = [...]`` or ``secret_env``; the grant fixes the environment).
    Always asks the daemon, so it returns the new value right after a rotation;
    every read is on the audit trail. Raises :class:`SecretsUnavailable` (the
    message says which) when the daemon runs without a master key, the secret
    is not granted to this agent (the refusal is audited), or it is not in the
    store."""
    return _native.secret(name)


def asecret(name):
    """Awaitable form of :func:`secret`."""
    return _native.asecret(name)


# --- the X-Iron-Cage-Tag header on httpx requests --------------------------------

# HTTP client modules whose Client/AsyncClient.send get the header: httpx, and
# httpx2 (its successor, which current openai and anthropic SDKs use).
_HTTP_MODULES = ("httpx", "httpx2")


def _with_tag(request):
    t = _tag.get()
    if t is not None and TAG_HEADER not in request.headers:
        request.headers[TAG_HEADER] = t


def _patch_httpx(httpx):
    if getattr(httpx, "_iron_cage_patched", False) or not hasattr(httpx, "AsyncClient"):
        return
    import functools

    sync_send = httpx.Client.send
    async_send = httpx.AsyncClient.send

    @functools.wraps(sync_send)
    def send(self, request, *args, **kwargs):
        _with_tag(request)
        return sync_send(self, request, *args, **kwargs)

    @functools.wraps(async_send)
    async def asend(self, request, *args, **kwargs):
        _with_tag(request)
        return await async_send(self, request, *args, **kwargs)

    httpx.Client.send = send
    httpx.AsyncClient.send = asend
    httpx._iron_cage_patched = True


class _HttpxFinder:
    """Patches httpx (and httpx2) when the agent imports it (importing it here
    would slow every agent's start-up)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _HTTP_MODULES:
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch_httpx(module)

        loader.exec_module = exec_and_patch
        return spec


if running_under_cage():
    for _m in _HTTP_MODULES:
        if _m in sys.modules:
            _patch_httpx(sys.modules[_m])
    sys.meta_path.insert(0, _HttpxFinder())

    # The descriptor is ours now (and close-on-exec); programs this agent runs
    # are not under the cage's channel.
    os.environ.pop("IRONCAGE_FD", None)

    _beat_ms = os.environ.pop("IRONCAGE_HEARTBEAT_MS", None)
    if _beat_ms:
        import threading

        _interval = max(int(_beat_ms), 10) / 1000.0

        def _beat():
            # A Python thread: it beats only while the interpreter runs Python
            # code, so an agent wedged with the GIL held stops beating.
            stop = threading.Event()
            while not stop.wait(_interval):
                try:
                    heartbeat()
                except IronCageError:
                    return

        threading.Thread(target=_beat, name="iron_cage-heartbeat", daemon=True).start()
