"""Feature base class and the module manager.

A feature declares what it offers (disco features and identities, stream
features, hooks, IQ handlers, options); the manager wires and unwires
those declarations, so a feature never reaches into the router or the
disco handler.
"""

from __future__ import annotations

import inspect
from typing import (TYPE_CHECKING, Any, Awaitable, Callable, ClassVar, Iterable, Optional, Union,
                    cast)

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.xish import domish

from chatbx_server.events import DELIVER, StanzaEvent
from chatbx_server.xmpp.stanzas import StanzaError, error_reply, result_reply
from chatbx_server.logs import log_observer

if TYPE_CHECKING:
    from chatbx_server.server import Server

log = Logger(observer=log_observer)

IQResult = Union[None, domish.Element, Awaitable[Optional[domish.Element]]]
IQHandler = Callable[[StanzaEvent], IQResult]


class Feature:
    """One protocol. Subclasses set the class attributes and ``setup()``."""

    #: registry name, as used in ``modules = [...]``
    name: ClassVar[str] = ""
    #: the specification and version implemented, e.g. "XEP-0199 2.0.1"
    spec: ClassVar[str] = ""
    #: disco#info features of the server (host JID); not a ClassVar: a
    #: feature may shadow it per instance in setup() (version's ``hide``)
    disco_features: tuple[str, ...] = ()
    #: disco#info identities of the server: (category, type, name)
    disco_identities: ClassVar[tuple[tuple[str, str, str], ...]] = ()
    #: disco#info features of every account's bare JID
    account_disco_features: ClassVar[tuple[str, ...]] = ()
    depends: ClassVar[tuple[str, ...]] = ()
    soft_depends: ClassVar[tuple[str, ...]] = ()
    #: dataclass of options read from ``[modules.<name>]``; None = no options
    Options: ClassVar[Optional[type]] = None

    def __init__(self, server: "Server", options: Any = None) -> None:
        self.server = server
        self.options = options
        self._hooks: list[tuple[str, Callable[..., Any]]] = []

    # -- declarations used in setup() ------------------------------------
    def hook(self, event: str, handler: Callable[..., Any], priority: int = DELIVER) -> None:
        """Handle the named event; unwired again on teardown."""
        self.server.events.on(event, handler, priority)
        self._hooks.append((event, handler))

    def iq(self, type: str, target: str, xmlns: str, name: str, handler: IQHandler,
           priority: int = DELIVER) -> None:
        """Answer ``<iq type=type><name xmlns=xmlns/></iq>`` sent to ``target``.

        ``target`` is "host" (the server), "bare" (an account) or "full".
        The handler returns the child of the result (or None for an empty
        result, or the whole reply ``<iq/>``), may be ``async``, and raises
        :class:`StanzaError` for an error reply. Errors are mapped as
        wokkel's IQHandlerMixin does.
        """
        self.hook(f"iq-{type}/{target}/{xmlns}:{name}", lambda ev: self._answer(ev, handler), priority)

    def _answer(self, event: StanzaEvent, handler: IQHandler) -> Any:
        result: Any  # the handler's IQResult, a Failure, or a Deferred
        try:
            result = handler(event)
        except Exception:
            result = Failure()
        if inspect.iscoroutine(result):
            result = defer.ensureDeferred(result)
        if isinstance(result, defer.Deferred):
            result.addCallbacks(lambda r: self._reply(event, r), lambda f: self._reply(event, f))
            result.addErrback(lambda f: log.failure("sending IQ reply failed", f))
            return result
        self._reply(event, result)
        return True

    def _reply(self, event: StanzaEvent, result: Any) -> None:
        iq = event.stanza
        if isinstance(result, Failure):
            if result.check(StanzaError):
                reply = error_reply(iq, cast(StanzaError, result.value))
            elif result.check(NotImplementedError):
                reply = error_reply(iq, "feature-not-implemented")
            else:
                log.failure("IQ handler {feature} failed", result, feature=self.name)
                reply = error_reply(iq, "internal-server-error")
        elif isinstance(result, domish.Element) and result.name == "iq":
            reply = result
        else:
            reply = result_reply(iq)
            if isinstance(result, domish.Element):
                reply.addChild(result)
        self.server.router.reply(event, reply)

    # -- life cycle -------------------------------------------------------
    def setup(self) -> None:
        """Register hooks and IQ handlers. Called once, after dependencies."""

    def teardown(self) -> None:
        """Undo setup(); the default unwires every hook."""
        for event, handler in self._hooks:
            self.server.events.off(event, handler)
        self._hooks.clear()

    # -- optional offers --------------------------------------------------
    def stream_features(self, session: Any) -> Iterable[domish.Element]:
        """Stream features offered to a bound/authenticated ``session``."""
        return ()

    def disco_info(self, target: Any, node: Optional[str]) -> tuple[Iterable[tuple[str, str, str]], Iterable[str]]:
        """Dynamic identities and features for ``target`` (a JID) and node."""
        return (), ()

    def disco_extensions(self, target: Any, node: Optional[str]) -> Iterable[domish.Element]:
        """XEP-0128 data forms to add to disco#info of ``target``."""
        return ()


class ModuleManager:
    """Loads enabled features in dependency order and wires them."""

    def __init__(self, server: "Server") -> None:
        self.server = server
        self._loaded: dict[str, Feature] = {}
        self._enabled: frozenset[str] = frozenset()

    def load_all(self, names: Iterable[str]) -> None:
        from chatbx_server import features as registry

        names = tuple(names)
        self._enabled = frozenset(names)
        for name in names:
            self._load(name, registry, ())

    def _load(self, name: str, registry: Any, chain: tuple[str, ...]) -> Feature:
        if name in self._loaded:
            return self._loaded[name]
        if name in chain:
            raise ValueError(f"module dependency cycle: {' -> '.join(chain + (name,))}")
        cls = registry.load_class(name)
        for dep in cls.depends:
            self._load(dep, registry, chain + (name,))
        for dep in cls.soft_depends:
            # Loaded first when enabled anyway; never pulled in.
            if dep in self._enabled:
                self._load(dep, registry, chain + (name,))
        options = registry.build_module_options(cls, self.server.config)
        feature = cls(self.server, options)
        feature.setup()
        self._loaded[name] = feature
        log.debug("loaded module {module}", module=name)
        return feature

    def unload_all(self) -> None:
        for feature in reversed(list(self._loaded.values())):
            feature.teardown()
        self._loaded.clear()

    def get(self, name: str) -> Optional[Feature]:
        return self._loaded.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self._loaded

    def features(self) -> list[Feature]:
        return list(self._loaded.values())

    def stream_features(self, session: Any) -> list[domish.Element]:
        out: list[domish.Element] = []
        for feature in self._loaded.values():
            out.extend(feature.stream_features(session))
        return out
