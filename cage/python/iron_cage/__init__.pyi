"""Type stubs for iron_cage: an agent's view of the Iron Cage it runs in."""

from types import TracebackType
from typing import Awaitable, Callable, List, Literal, Optional, Type, TypeVar

_F = TypeVar("_F", bound=Callable[..., object])

TAG_HEADER: str

class IronCageError(Exception):
    """An error from ironcaged or the agent channel; the message says what to fix."""

class NotUnderCage(IronCageError):
    """Raised by every call when the process was not started by ironcaged."""

class SecretsUnavailable(IronCageError):
    """secret() cannot return the value: the daemon runs without a master key, the
    secret is not granted to this agent (the refusal is audited), or it is not in the store."""

class Budget:
    """This agent's budget for the current period (USD floats and exact micro-dollar ints)."""
    @property
    def limit(self) -> Optional[float]:
        """USD limit, or None when the agent has no budget (metered, unlimited)."""
    @property
    def spent(self) -> float:
        """Durable spend this period, USD."""
    @property
    def reserved(self) -> float:
        """Held by LLM calls in flight, USD."""
    @property
    def remaining(self) -> Optional[float]:
        """limit - spent - reserved (never below 0), or None when unlimited."""
    @property
    def limit_micros(self) -> Optional[int]: ...
    @property
    def spent_micros(self) -> int: ...
    @property
    def reserved_micros(self) -> int: ...
    @property
    def remaining_micros(self) -> Optional[int]: ...
    @property
    def period(self) -> Literal["day", "week", "month", "total"]: ...
    @property
    def period_start(self) -> int:
        """Unix seconds when the period started (UTC)."""
    @property
    def period_end(self) -> Optional[int]:
        """Unix seconds when the period ends; None for "total"."""

class Finding:
    """One piece of PII or a credential; text[f.start:f.end] is the value."""
    kind: str
    start: int
    end: int
    confidence: Literal["low", "medium", "high"]

def running_under_cage() -> bool:
    """Whether this process runs under ironcaged with a working agent channel."""

def agent_name() -> str:
    """This agent's name in ironcaged.toml."""

def budget() -> Budget:
    """This agent's budget (one round trip to the daemon)."""

def abudget() -> Awaitable[Budget]:
    """Awaitable form of budget()."""

def report_cost(usd: float, label: str) -> Budget:
    """Books a cost spent outside the gateway (tagged with the current tag()); returns the budget after."""

def areport_cost(usd: float, label: str) -> Awaitable[Budget]:
    """Awaitable form of report_cost()."""

def secret(name: str) -> str:
    """The current value of a secret granted to this agent (asks the daemon each
    time, audited); raises SecretsUnavailable when it cannot be read."""

def asecret(name: str) -> Awaitable[str]:
    """Awaitable form of secret()."""

def secrets_rotated() -> List[str]:
    """Names of this agent's secrets the operator rotated (`ironctl secrets reload`,
    SIGUSR1) since the previous call, sorted, each reported once; [] when none.
    Makes one round trip first, so rotations the daemon already announced are
    included. Call secret() again for the new value."""

def asecrets_rotated() -> Awaitable[List[str]]:
    """Awaitable form of secrets_rotated()."""

def heartbeat() -> None:
    """Tells the watchdog this agent is alive (the module also beats on its own)."""

def scan(text: str) -> List[Finding]:
    """PII and credentials in text, found in process by the daemon's own engine."""

def redact(text: str, style: Literal["label", "mask"] = "label") -> str:
    """text with each finding replaced by [KIND] ("label") or a partial mask ("mask")."""

def current_tag() -> Optional[str]:
    """The tag in effect in this thread or asyncio task."""

class tag:
    """Context manager (also async, and a decorator) labelling the LLM calls inside it."""
    name: str
    def __init__(self, name: str) -> None: ...
    def __enter__(self) -> "tag": ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> Literal[False]: ...
    async def __aenter__(self) -> "tag": ...
    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> Literal[False]: ...
    def __call__(self, fn: _F) -> _F: ...
