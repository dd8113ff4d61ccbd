"""Feature base class (IQ answers, hooks) and the module manager (dependencies)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from twisted.internet import defer
from twisted.words.xish import domish

from chatbx_server import features as registry
from chatbx_server.events import FILTER
from chatbx_server.modules import Feature, ModuleManager
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.stanzas import StanzaError
from tests.unit.fakes import bind, make_server, stanza

NS = "urn:example:test"


@pytest.fixture
def server():
    return make_server(modules=[], domains=("localhost",))


def ask(server, session, xml: str = f"<iq type='get' id='q' to='localhost'><q xmlns='{NS}'/></iq>"):
    s = stanza(xml)
    s["from"] = session.jid.full
    return server.router.route(s, session)


def condition(reply) -> str:
    assert reply["type"] == "error", reply.toXml()
    return [c.name for c in reply.error.elements() if c.uri == ns.STANZA_ERRORS and c.name != "text"][0]


def feature_answering(server, handler, target="host"):
    class Answering(Feature):
        name = "answering"

        def setup(self):
            self.iq("get", target, NS, "q", handler)

    feature = Answering(server)
    feature.setup()
    return feature


def test_iq_result_with_child(server):
    """A returned element becomes the child of the result, addressed back to the asker."""
    alice = bind(server, "alice@localhost/r")

    def handler(ev):
        el = domish.Element((NS, "answer"))
        el["asker"] = ev.sender.full
        return el

    feature_answering(server, handler)
    assert ask(server, alice) is True
    (reply,) = alice.take()
    assert reply["type"] == "result" and reply["id"] == "q" and reply["to"] == "alice@localhost/r"
    assert reply["from"] == "localhost"
    assert reply.firstChildElement()["asker"] == "alice@localhost/r"


def test_iq_empty_result_and_whole_iq(server):
    """None gives an empty result; a returned <iq/> is sent as is."""
    alice = bind(server, "alice@localhost/r")
    feature = feature_answering(server, lambda ev: None)
    ask(server, alice)
    (reply,) = alice.take()
    assert reply["type"] == "result" and list(reply.elements()) == []
    feature.teardown()
    whole = stanza("<iq type='result' id='custom'/>")
    feature_answering(server, lambda ev: whole)
    ask(server, alice)
    assert [e.toXml() for e in alice.take()] == [whole.toXml()]


@pytest.mark.parametrize("exc,expected", [
    (StanzaError("forbidden", text="no"), "forbidden"),
    (NotImplementedError(), "feature-not-implemented"),
    (RuntimeError("bug"), "internal-server-error"),
    (KeyError("k"), "internal-server-error"),
])
def test_iq_error_mapping(server, exc, expected):
    """StanzaError -> its condition, NotImplementedError -> feature-not-implemented,
    anything else -> internal-server-error (and the server keeps going)."""
    alice = bind(server, "alice@localhost/r")

    def handler(ev):
        raise exc

    feature_answering(server, handler)
    ask(server, alice)
    (reply,) = alice.take()
    assert condition(reply) == expected and reply["id"] == "q"
    if expected == "forbidden":
        assert str(reply.error.text) == "no"


def test_async_handler(server):
    """An async def handler's result is sent when it completes."""
    alice = bind(server, "alice@localhost/r")
    gate: defer.Deferred = defer.Deferred()

    async def handler(ev):
        value = await gate
        return domish.Element((NS, value))

    feature_answering(server, handler)
    result = ask(server, alice)
    assert isinstance(result, defer.Deferred)
    assert alice.take() == []
    gate.callback("later")
    (reply,) = alice.take()
    assert reply["type"] == "result" and reply.firstChildElement().name == "later"


@pytest.mark.parametrize("failure,expected", [
    (StanzaError("item-not-found"), "item-not-found"),
    (NotImplementedError(), "feature-not-implemented"),
    (ValueError("x"), "internal-server-error"),
])
def test_deferred_and_async_failures(server, failure, expected):
    """Failures from a Deferred or an async handler map like synchronous ones."""
    alice = bind(server, "alice@localhost/r")
    feature = feature_answering(server, lambda ev: defer.fail(failure))
    ask(server, alice)
    assert condition(alice.take()[0]) == expected
    feature.teardown()

    async def handler(ev):
        raise failure

    feature_answering(server, handler)
    ask(server, alice)
    assert condition(alice.take()[0]) == expected


def test_teardown_unwires_hooks(server):
    """After teardown the feature's hooks and IQ handlers are gone."""
    alice = bind(server, "alice@localhost/r")
    seen = []

    class Hooked(Feature):
        name = "hooked"

        def setup(self):
            self.hook("pre-message/bare", lambda ev: seen.append(ev) or True, FILTER)
            self.iq("get", "host", NS, "q", lambda ev: None)

    feature = Hooked(server)
    feature.setup()
    assert server.events.has("pre-message/bare") and server.events.has(f"iq-get/host/{NS}:q")
    feature.teardown()
    assert not server.events.has("pre-message/bare")
    ask(server, alice)
    assert condition(alice.take()[0]) == "service-unavailable"
    assert seen == []


def make_feature(name, depends=(), log=None):
    def setup(self):
        if log is not None:
            log.append(self.name)

    return type(f"F_{name}", (Feature,), {"name": name, "depends": tuple(depends), "setup": setup})


def fake_registry(monkeypatch, classes):
    def load_class(name):
        try:
            return classes[name]
        except KeyError:
            raise ValueError(f"unknown module {name!r}") from None

    monkeypatch.setattr(registry, "load_class", load_class)


def test_dependencies_load_first(server, monkeypatch):
    """A feature's depends are set up before it, each feature once."""
    log: list[str] = []
    fake_registry(monkeypatch, {
        "a": make_feature("a", ["b", "c"], log),
        "b": make_feature("b", ["c"], log),
        "c": make_feature("c", [], log),
    })
    manager = ModuleManager(server)
    manager.load_all(["a", "c"])
    assert log == ["c", "b", "a"]
    assert [f.name for f in manager.features()] == ["c", "b", "a"]
    assert "b" in manager and manager.get("a").name == "a" and manager.get("zzz") is None


def test_dependency_cycle_detected(server, monkeypatch):
    """A -> B -> A is refused with a message naming the cycle."""
    fake_registry(monkeypatch, {"a": make_feature("a", ["b"]), "b": make_feature("b", ["a"])})
    with pytest.raises(ValueError, match="a -> b -> a"):
        ModuleManager(server).load_all(["a"])


def test_self_dependency_detected(server, monkeypatch):
    """A feature depending on itself is a cycle too."""
    fake_registry(monkeypatch, {"a": make_feature("a", ["a"])})
    with pytest.raises(ValueError, match="cycle"):
        ModuleManager(server).load_all(["a"])


def test_unknown_module(server):
    """An unknown name fails with the list of known ones."""
    with pytest.raises(ValueError, match="unknown module 'nope'"):
        ModuleManager(server).load_all(["nope"])


def test_unload_all_in_reverse(server, monkeypatch):
    """unload_all tears features down in reverse load order."""
    order: list[str] = []
    classes = {n: make_feature(n, deps) for n, deps in (("a", ["b"]), ("b", []))}
    for cls in classes.values():
        cls.teardown = lambda self: order.append(self.name)
    fake_registry(monkeypatch, classes)
    manager = ModuleManager(server)
    manager.load_all(["a"])
    manager.unload_all()
    assert order == ["a", "b"] and manager.features() == []


def test_stream_features_collected(server, monkeypatch):
    """The manager gathers stream features from every loaded feature."""
    def features_of(self, session):
        return [domish.Element((f"urn:{self.name}", "feature"))]

    classes = {n: make_feature(n) for n in ("a", "b")}
    for cls in classes.values():
        cls.stream_features = features_of
    fake_registry(monkeypatch, classes)
    manager = ModuleManager(server)
    manager.load_all(["a", "b"])
    assert [e.uri for e in manager.stream_features(None)] == ["urn:a", "urn:b"]


def test_options_built_from_config(monkeypatch):
    """A feature with Options gets them from [modules.<name>]."""
    @dataclass(frozen=True)
    class Options:
        limit: int = 5

    cls = make_feature("opt")
    cls.Options = Options
    monkeypatch.setitem(registry.REGISTRY, "opt", "x.y.Z")
    fake_registry(monkeypatch, {"opt": cls})
    server = make_server(config_text="[modules]\nenabled = []\n[modules.opt]\nlimit = 9\n")
    manager = ModuleManager(server)
    manager.load_all(["opt"])
    assert manager.get("opt").options == Options(limit=9)


def test_soft_dependency_loaded_first_only_when_enabled(server, monkeypatch):
    """A soft dependency that is enabled loads before its dependant; one that is not stays out."""
    order = []
    a = make_feature("a", [])
    a.soft_depends = ("b", "c")
    b = make_feature("b", [])
    c = make_feature("c", [])
    for cls in (a, b, c):
        cls.setup = (lambda name: lambda self: order.append(name))(cls.name)
    fake_registry(monkeypatch, {"a": a, "b": b, "c": c})
    manager = ModuleManager(server)
    manager.load_all(["a", "b"])
    assert order == ["b", "a"]
    assert "c" not in manager
