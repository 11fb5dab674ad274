"""One way to build the public API: eager re-exports plus one ``__module__`` fix-up.

Every public package (``foundation.registry``, ``foundation.liveness``,
``foundation.flags``, ``foundation.supervision``) imports its names eagerly
from its private modules, lists them in ``__all__`` and ends with::

    fixup_module_paths(globals(), __name__)

so that ``repr``, tracebacks, pickles and ``help()`` show the public path
(``foundation.registry.MemoryRegistry``), never the private module that
defines it. ``foundation`` itself re-exports from those packages and changes
nothing: each object has exactly one public home, its package.

Doctest finds the examples of a class through ``__module__`` (it collects a
class, and each method, only from the module they claim to come from), so the
fix-up moves the methods a class defines along with the class: every example
is then collected once, from the public package. ``tests/test_public_api.py``
checks that every docstring with an example in ``src`` is collected.

What ``import foundation`` costs is mostly building classes (a frozen
dataclass compiles six methods: about a millisecond per class), so the import
builds dataclasses only for public records; a private record is a plain class
with ``__slots__``, or lives in a deferred module. An implementation module
that only a constructed object needs is deferred ONE way: the defining module
names it under ``if TYPE_CHECKING:`` and binds it in a module-level
``_load_implementation()`` (``global`` plus a plain import), the first
statement of the constructor; methods reach it as ``module.name``.
``RedisRegistry`` loads its Lua scripts, lease and tail so.
No module-level ``__getattr__``: every public name exists after the import.
``tests/test_import_cost.py`` pins both rules.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import MutableMapping
from types import CodeType

__all__ = ["fixup_module_paths"]


def _is_private(module: str) -> bool:
    return module.startswith("foundation.") and any(p.startswith("_") for p in module.split("."))


# Compiled annotation texts: the same few ("int", "str | None", ...) recur in
# every class, and compiling is most of what evaluating one costs at import.
_COMPILED: dict[str, CodeType] = {}


def _compiled(text: str) -> CodeType:
    code = _COMPILED.get(text)
    if code is None:
        code = _COMPILED[text] = compile(text, "<annotation>", "eval")
    return code


def _resolve_annotations(cls: type, origin: str) -> None:
    # Our modules use `from __future__ import annotations`: a class's
    # annotations are strings that typing.get_type_hints evaluates in the
    # module named by __module__. Resolve them in the defining module first,
    # so introspection (get_type_hints, dataclass tools) still works once
    # __module__ is the public package. A name imported only for type
    # checking cannot be resolved: those annotations stay strings.
    own = inspect.get_annotations(cls)
    if not any(isinstance(v, str) for v in own.values()):
        return
    module = sys.modules.get(origin)
    if module is None:
        return
    namespace, local = vars(module), dict(vars(cls))
    resolved = {}
    for name, text in own.items():
        value = text
        if isinstance(text, str):
            # Never break `import foundation` over an annotation: keep the string.
            with contextlib.suppress(Exception):
                value = eval(_compiled(text), namespace, local)  # our own annotation
        resolved[name] = value
    cls.__annotations__ = resolved


def _fix_class_members(cls: type, origin: str, public_name: str) -> None:
    for attribute in vars(cls).values():
        wrapped = isinstance(attribute, staticmethod | classmethod)
        value = attribute.__func__ if wrapped else attribute
        members = [value.fget, value.fset, value.fdel] if isinstance(value, property) else [value]
        for member in members:
            # Only what this class defines itself: a helper assigned as a
            # class attribute keeps the module that defines it.
            if getattr(member, "__module__", None) != origin:
                continue
            if not getattr(member, "__qualname__", "").startswith(cls.__qualname__ + "."):
                continue
            if isinstance(member, type):
                _resolve_annotations(member, origin)
                _fix_class_members(member, origin, public_name)
            member.__module__ = public_name


def fixup_module_paths(namespace: MutableMapping[str, object], public_name: str) -> None:
    """Give each class and function in ``namespace["__all__"]`` the public module path.

    Only objects defined in a private ``foundation`` module (a path with a
    component starting with ``_``) are changed; objects from another public
    module keep their path. Idempotent.

    Example:
        >>> import types
        >>> private = types.ModuleType("foundation.demo._impl")
        >>> exec("class Widget:\\n    def spin(self): pass", private.__dict__)
        >>> Widget = private.Widget
        >>> fixup_module_paths({"__all__": ["Widget"], "Widget": Widget}, "foundation.demo")
        >>> Widget.__module__, Widget.spin.__module__
        ('foundation.demo', 'foundation.demo')
    """
    names = namespace["__all__"]
    assert isinstance(names, list | tuple), "__all__ must be a list"
    for name in names:
        obj = namespace[name]
        if not isinstance(obj, type) and not callable(obj):
            continue
        origin = getattr(obj, "__module__", None)
        if not isinstance(origin, str) or not _is_private(origin):
            continue
        if getattr(obj, "__name__", None) != name:
            continue  # an alias (a typing construct, a renamed export): leave it
        if isinstance(obj, type):
            _resolve_annotations(obj, origin)
            _fix_class_members(obj, origin, public_name)
        obj.__module__ = public_name
