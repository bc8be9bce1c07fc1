"""Living beside the other libraries that patch RQ: OpenTelemetry, Sentry, Datadog, another copy
of this very package (vendored, symlinked, or its modules reloaded).

They wrap some of the methods we guard, before us or after us. Three rules keep us out of each
other's way whatever the order:

- **We judge RQ's own code.** The probes and the shape check look beneath every wrapper, down to
  the function RQ defined (``chain_of``), and run on classes with RQ's own methods
  (``rq_own_class``): a neighbour's wrapper that reads Redis, records a span or is one of our own
  guards must not decide what RQ does.
- **Our guard sits directly on RQ's own function, beneath every other wrapper.** The reference the
  innermost wrapper holds (wrapt's ``__wrapped__``, or a closure cell, default or global of a plain
  replacement function) is pointed at our guard: the chain becomes what it would have been had we
  been imported first. Every other wrapper then still sees every call, including those the guard
  answers itself (OpenTelemetry's span and the trace context it puts in ``job.meta``).
- **A guard of ours is known by a marker** on its wrapper function (``MARKER``), not by its class:
  a second copy of the package has classes of its own, but finds the first one's guard.

The walk is bounded (``MAX_STEPS`` steps, side paths included) and runs once, when the guard
goes on or comes off and for the status report, never per call.
"""

from __future__ import annotations

import os
import sys
from types import FunctionType, MethodType
from typing import Any

MARKER = "rq_pipeline_fix_guard"  # an attribute of each guard of ours, true in every copy of us
MAX_STEPS = 64  # objects looked beneath per walk, side paths included: real stacks have one or two


# --- where a reference is held, so that it can be read and pointed elsewhere ---------------------

# How a slot reaches its object (one class for all: each class defined costs at rq's import).
CLASS, ATTRIBUTE, ITEM, DEFAULT = "class", "attribute", "item", "default"


class Slot:
    """One place that holds the next object down a chain of wrappers: a class's attribute (its
    ``__dict__``, never bound), an object's attribute (a proxy's ``__wrapped__``, a closure cell's
    ``cell_contents``), a dict's item (module globals, ``__kwdefaults__``) or a ``__defaults__``
    entry. ``also``: the same object held in more places of one function, set together.

    ``descriptor``: the place holds the raw class attribute (a class, a wrapt proxy) and binds it
    per call; otherwise it holds what ``getattr(owner, name)`` gave its author (a replacement
    function's reference), and calls it with ``self`` as first argument.
    """

    __slots__ = ("also", "descriptor", "holder", "key", "kind", "settable")

    def __init__(self, kind: str, holder: Any, key: Any, descriptor: bool = False, settable: bool = True):
        self.kind, self.holder, self.key = kind, holder, key
        self.descriptor, self.settable = descriptor, settable
        self.also: list[Slot] = []

    def get(self) -> Any:
        if self.kind == CLASS:
            return self.holder.__dict__.get(self.key)
        if self.kind == ATTRIBUTE:
            return getattr(self.holder, self.key)
        if self.kind == ITEM:
            return self.holder[self.key]
        return self.holder.__defaults__[self.key]

    def set(self, value: Any) -> None:
        if self.kind == ITEM:
            self.holder[self.key] = value
        elif self.kind == DEFAULT:
            defaults = list(self.holder.__defaults__)
            defaults[self.key] = value
            self.holder.__defaults__ = tuple(defaults)
        else:
            setattr(self.holder, self.key, value)

    def put(self, raw: Any, owner: type) -> None:
        """Hold ``raw`` (a class attribute's form), as this place's author would have held it."""
        for slot in [self, *self.also]:
            keeps_raw = slot.descriptor or _is_descriptor(slot.get())
            slot.set(raw if keeps_raw else raw.__get__(None, owner))


def _is_descriptor(value: Any) -> bool:
    """A raw class attribute (bound per call), as opposed to what ``getattr(owner, name)`` gives."""
    if type(value) in (classmethod, staticmethod):
        return True
    return _wrapt_wrapper(value) is not None and _wrapt_parent(value) is None


def _proxy_slot(proxy: Any, settable: bool) -> Slot:
    """``__wrapped__`` of a proxy: settable on wrapt's unbound ``FunctionWrapper`` only (a bound
    one re-binds through its parent, and other proxies are not ours to know)."""
    return Slot(ATTRIBUTE, proxy, "__wrapped__", descriptor=True, settable=settable)


# --- what lies beneath a class attribute --------------------------------------------------------


class Layer:
    """One wrapper (or replacement function) in a chain, and where the layer above holds it."""

    __slots__ = ("obj", "slot")

    def __init__(self, obj: Any, slot: Slot) -> None:
        self.obj = obj
        self.slot = slot


class Chain:  # plain classes, not NamedTuples: those compile their annotations at rq's import
    """A class attribute, walked down to RQ's own function: ``layers`` outermost first (every
    object above RQ's own), ``original`` (RQ's own function, classmethod or class-bound method;
    None: not found) and the ``slot`` that holds it."""

    __slots__ = ("layers", "name", "original", "owner", "slot")

    def __init__(self, owner: type, name: str, layers: list[Layer], original: Any, slot: Slot | None) -> None:
        self.owner = owner
        self.name = name
        self.layers = layers
        self.original = original
        self.slot = slot

    @property
    def raw_original(self) -> Any:
        """RQ's own as a class attribute holds it (a class-bound method becomes a classmethod)."""
        if type(self.original) is MethodType:
            return classmethod(self.original.__func__)
        return self.original

    @property
    def judged(self) -> Any:
        """What the probes and the shape check judge: RQ's own, or, where a neighbour replaced it
        without keeping it, the outermost layer that is not a guard of ours."""
        if self.original is not None:
            return self.raw_original
        return next((layer.obj for layer in self.layers if guard_of(layer.obj) is None), None)

    def enabled_guard(self) -> tuple[Any, Any] | None:
        """The outermost guard of ours that is on, as (its wrapt wrapper, the guard), or None."""
        for layer in self.layers:
            guard = guard_of(layer.obj)
            if guard is not None and guard.enabled:
                parent = _wrapt_parent(layer.obj)  # a wrapt binding of the wrapper: the wrapper
                return (layer.obj if parent is None else parent), guard
        return None

    def others(self) -> list[Layer]:
        return [layer for layer in self.layers if guard_of(layer.obj) is None]

    def find(self, wrapper: Any) -> Layer | None:
        """The layer that is ``wrapper``, or a wrapt binding of it (as OpenTelemetry's
        ``unwrap`` leaves on the class when it takes its own wrapper off from above ours), or
        the wrapt wrapper that took the place of ``wrapper`` at its first use (``_successor``)."""
        wanted = [obj for obj in (wrapper, _successor(wrapper)) if obj is not None]
        for layer in self.layers:
            parent = _wrapt_parent(layer.obj)
            if any(layer.obj is obj or parent is obj for obj in wanted):  # `is`: proxies compare as RQ's
                return layer
        return None


def chain_of(owner: type, name: str) -> Chain:
    """``owner.name`` walked down through every wrapper to the function RQ defined."""
    walk = _Walk(name)
    layers: list[Layer] = []
    slot: Slot | None = Slot(CLASS, owner, name, descriptor=True)
    while slot is not None:
        obj = slot.get()
        if _is_rq_code(obj, walk.rq_dir):
            return Chain(owner, name, layers, obj, slot)
        layers.append(Layer(obj, slot))
        slot = _inner(obj, walk)
    return Chain(owner, name, layers, None, None)


def guard_of(layer: Any) -> Any:
    """Our guard (a ``guard.by_state`` function or a ``guard._Wrapper``, of any copy of the
    package) if ``layer`` is a wrapt wrapper around it, else None."""
    wrapper = _wrapt_wrapper(layer)
    return wrapper if getattr(wrapper, MARKER, False) is True else None


def describe(layer: Any) -> str:
    """Who put ``layer`` there, for the status report."""
    wrapper = _wrapt_wrapper(layer)
    if wrapper is not None:
        if guard_of(layer) is not None:
            module = sys.modules.get(wrapper.__module__)
            return f"rq-pipeline-fix's guard from {getattr(module, '__file__', wrapper.__module__)}"
        return f"{_name_of(wrapper if isinstance(wrapper, FunctionType) else type(wrapper))} (wrapt)"
    return _name_of(getattr(layer, "__func__", layer))


def rq_own_class(cls: type) -> type:
    """``cls`` itself, or, where other libraries wrapped some of its methods, a subclass with
    RQ's own methods instead: the probes run RQ's code through and through (a tracer's wrapper on
    ``Queue.create_job`` or ``Job.save`` would record spans for the probes' jobs, and one that
    reads Redis would spoil their verdicts). Queue and Job have ~100 attributes each: the first
    look is in bulk, by type and code file, and only what is not plainly RQ's is walked."""
    rq_dir = _rq_dir()
    attributes = vars(cls)
    kinds = set(map(type, attributes.values()))
    proxies = {kind for kind in kinds - _PLAIN_KINDS if _is_proxy_type(kind)}
    functions = [value for value in attributes.values() if type(value) is FunctionType]
    if kinds & {classmethod, staticmethod}:
        functions += [value.__func__ for value in attributes.values() if type(value) in _METHOD_KINDS]
    files = {_code_file(function) for function in functions if type(function) is FunctionType}
    foreign = {file for file in files if not file.startswith(rq_dir)}
    if not proxies and not foreign:
        return cls
    own = {}
    for name, value in attributes.items():
        function = value.__func__ if type(value) in _METHOD_KINDS else value
        if type(value) in proxies or (type(function) is FunctionType and _code_file(function) in foreign):
            chain = chain_of(cls, name)
            if chain.original is not None:
                own[name] = chain.raw_original
    return type(cls.__name__, (cls,), own) if own else cls


_METHOD_KINDS = (classmethod, staticmethod)
_PLAIN_KINDS = frozenset({FunctionType, *_METHOD_KINDS, property, str, int, dict, type(None), type})


def _code_file(function: Any) -> str:
    return function.__code__.co_filename  # type: ignore[no-any-return]


# --- the walk -----------------------------------------------------------------------------------


def _rq_dir() -> str:
    rq = sys.modules.get("rq")
    path = getattr(rq, "__file__", None)
    return os.path.dirname(path) + os.sep if path else "\0"  # "\0": nothing is RQ's own


def _is_rq_code(obj: Any, rq_dir: str) -> bool:
    """A function of RQ's own source (or a classmethod/staticmethod/class-bound method of one).
    By type and code file, which a wrapper cannot fake: wrapt proxies and ``functools.wraps``
    copy ``__module__`` and ``__qualname__``, and proxies even pass ``isinstance`` checks."""
    if type(obj) in (classmethod, staticmethod, MethodType):
        obj = obj.__func__
    return type(obj) is FunctionType and obj.__code__.co_filename.startswith(rq_dir)


def _is_proxy_type(kind: type) -> bool:
    """wrapt's C proxies have ``__wrapped__`` on their type, its pure-Python ones derive from its
    base class; a proxy of another library with ``__wrapped__`` on its type counts too."""
    wrapt = sys.modules.get("wrapt")  # no wrapt imported: no wrapt proxy anywhere
    base = getattr(wrapt, "BaseObjectProxy", None) or getattr(wrapt, "ObjectProxy", None)
    return hasattr(kind, "__wrapped__") or (base is not None and issubclass(kind, base))


def _wrapt_wrapper(obj: Any) -> Any:
    """The wrapper function of a wrapt ``FunctionWrapper``/``BoundFunctionWrapper``, else None."""
    try:
        return object.__getattribute__(obj, "_self_wrapper")
    except AttributeError:
        return None


def _successor(obj: Any) -> Any:
    """The wrapt wrapper that took the place of a guard of ours put on as a stand-in
    (patcher._WrappedAtFirstUse) at its first use; None before, or for anything else."""
    try:
        return object.__getattribute__(obj, "_self_successor")
    except AttributeError:
        return None


def _wrapt_parent(obj: Any) -> Any:
    try:
        return object.__getattribute__(obj, "_self_parent")
    except AttributeError:
        return None


class _Walk:
    """One walk down from a class attribute: the method's name, what counts as RQ's code, and a
    budget of steps shared by the whole walk, side paths included, so that no chain of references
    (cycles, several candidates per layer) can make it long."""

    __slots__ = ("name", "rq_dir", "steps")

    def __init__(self, name: str) -> None:
        self.name, self.rq_dir, self.steps = name, _rq_dir(), MAX_STEPS


def _inner(obj: Any, walk: _Walk) -> Slot | None:
    """The slot holding the next object down from ``obj``, or None where the chain ends."""
    walk.steps -= 1
    if walk.steps < 0:
        return None
    if _wrapt_wrapper(obj) is not None:  # wrapt: settable on the unbound FunctionWrapper only
        return _proxy_slot(obj, settable=_wrapt_parent(obj) is None)
    if type(obj) in (classmethod, staticmethod):  # a replacement of a classmethod: look in it
        obj = obj.__func__
    if type(obj) is FunctionType:
        return _reference(obj, walk)
    if hasattr(obj, "__wrapped__"):  # some other proxy: follow it, but do not write into it
        return _proxy_slot(obj, settable=False)
    return None


def _reference(function: Any, walk: _Walk) -> Slot | None:
    """Where a plain replacement function keeps the method it replaced: among its closure cells,
    defaults and the globals its code reads, the one object named like the method that leads down
    to RQ's own (several such objects: ambiguous, not followed). Failing that, its ``__wrapped__``
    (``functools.wraps``), followed for judging only."""
    places: dict[int, list[Slot]] = {}
    objects: dict[int, Any] = {}
    for slot in _references(function):
        try:
            value = slot.get()
        except ValueError:  # an empty cell
            continue
        if value is not function and getattr(value, "__name__", None) == walk.name:
            places.setdefault(id(value), []).append(slot)
            objects[id(value)] = value
    leading = [key for key, value in objects.items() if _leads_to_rq(value, walk)]
    if len(leading) == 1:
        first, *more = places[leading[0]]
        first.also = more
        return first
    wrapped = function.__dict__.get("__wrapped__")
    if not leading and wrapped is not None and _leads_to_rq(wrapped, walk):
        return _proxy_slot(function, settable=False)
    return None


def _leads_to_rq(obj: Any, walk: _Walk) -> bool:
    while not _is_rq_code(obj, walk.rq_dir):
        slot = _inner(obj, walk)
        if slot is None:
            return False
        obj = slot.get()
    return True


def _references(function: Any) -> list[Slot]:
    slots = [Slot(ATTRIBUTE, cell, "cell_contents") for cell in function.__closure__ or ()]
    slots += [Slot(DEFAULT, function, index) for index in range(len(function.__defaults__ or ()))]
    slots += [Slot(ITEM, function.__kwdefaults__, key) for key in function.__kwdefaults__ or {}]
    namespace = function.__globals__
    slots += [Slot(ITEM, namespace, key) for key in function.__code__.co_names if key in namespace]
    return slots


def _name_of(obj: Any) -> str:
    """Module and name from the code itself (``functools.wraps`` copies RQ's names onto a
    replacement)."""
    code = getattr(obj, "__code__", None)
    if code is not None:
        module = getattr(obj, "__globals__", {}).get("__name__", "?")
        return f"{module}.{getattr(code, 'co_qualname', code.co_name)}"
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"
