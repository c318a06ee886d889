"""The import rules of the tree (README "Layout"), read from the source with ``ast``:

* kernels/ imports only triton (and the standard library's ``os`` for build switches);
* ops/ never imports the public face or the tools (functional, torch_library, nn,
  distributed, bench, tune, explain, cli, selfcheck);
* no import cycle between qknorm's modules (imports inside functions included);
* nothing outside ops/ uses another qknorm module's ``_private`` name (a few listed exceptions);
* every public name (``qknorm.__all__``, ``qknorm.nn``, ``qknorm.distributed``,
  ``qknorm.integrations.transformers``) documents its parameters, return value and errors in
  numpy-style sections (issue 12; the API reference renders them).
"""
import ast
import dataclasses
import importlib
import inspect
import pathlib
import re
import textwrap

import pytest

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "qknorm"


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(mod: str, is_pkg: bool, level: int, target: str | None) -> str:
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    if level > 1:
        base = base[:-(level - 1)]
    return ".".join(base + ([target] if target else []))


def _imports(path: pathlib.Path, tree: ast.AST | None = None):
    """``(imported module, imported names, node)`` of every import in the file (or in ``tree``, parsed
    source standing for that file)."""
    mod = _module_name(path)
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree or ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, (), node
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(mod, is_pkg, node.level, node.module) if node.level else node.module
            yield target, tuple(a.name for a in node.names), node


FILES = sorted(SRC.rglob("*.py"))
MODULES = {_module_name(p) for p in FILES}


def _qknorm_targets(path):
    """qknorm modules this file imports (``from pkg import mod`` counts as importing pkg.mod)."""
    for target, names, _ in _imports(path):
        if not target or not target.startswith("qknorm"):
            continue
        subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
        yield from subs or [target]


def test_kernels_import_only_triton():
    for path in (SRC / "kernels").glob("*.py"):
        for target, _, node in _imports(path):
            top = (target or "").split(".")[0]
            assert top in ("triton", "os", "qknorm", "__future__"), f"{path.name}:{node.lineno} imports {target}"
            if top == "qknorm":
                assert target.startswith("qknorm.kernels"), f"{path.name}:{node.lineno} imports {target}"


FORBIDDEN_FROM_OPS = ("qknorm.functional", "qknorm.torch_library", "qknorm.nn", "qknorm.distributed",
                      "qknorm.bench", "qknorm.tune", "qknorm.explain", "qknorm.cli", "qknorm.selfcheck")


def test_ops_import_no_public_face_or_tools():
    for path in (SRC / "ops").glob("*.py"):
        for target in _qknorm_targets(path):
            assert not target.startswith(FORBIDDEN_FROM_OPS), f"ops/{path.name} imports {target}"


def test_no_import_cycle():
    graph = {_module_name(p): set(_qknorm_targets(p)) - {_module_name(p)} for p in FILES}
    # a module importing its own package's __init__ (from . import x) is not an edge back
    for mod, deps in graph.items():
        graph[mod] = {d for d in deps if not mod.startswith(d + ".") and d in graph}
    state, stack = {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


#: Private modules that modules outside ops/ may import, and why.
PRIVATE_MODULES_ALLOWED = {
    # the version's one source, read by pyproject.toml (``attr = "qknorm._version.__version__"``): only its
    # dunder ``__version__`` is imported, by the package and by tuned_table (imported while the package
    # initialises, before ``qknorm.__version__`` is bound)
    "qknorm._version": ("qknorm", "qknorm.tuned_table"),
    # the interpreter fixes, applied by their own package when kernels/ is imported (kernels import only triton)
    "qknorm.kernels._interp_compat": ("qknorm.kernels",),
}


def _dotted(node) -> list[str] | None:
    """``["a", "b", "c"]`` of an attribute chain ``a.b.c`` on a plain name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id] + parts[::-1]


def _private_uses(path: pathlib.Path, source: str | None = None) -> list[str]:
    """Where the file imports or reads another qknorm module's ``_private`` name: ``from X import _y``,
    ``import X._y`` / ``from X._y import z`` (a private module), and ``X._y`` on a name bound to an
    imported qknorm module (``from . import launch`` then ``launch._y``; ``import qknorm`` then
    ``qknorm.ops._y``). Imports inside functions count. ``source``: text standing for the file's."""
    mod = _module_name(path)
    tree = ast.parse(path.read_text() if source is None else source)
    found, aliases = [], {}
    for target, names, node in _imports(path, tree):
        if not target or not target.startswith("qknorm"):
            continue
        if target != mod and any(_private(p) for p in target.split(".")) \
                and mod not in PRIVATE_MODULES_ALLOWED.get(target, ()):
            found.append(f"{mod}:{node.lineno} imports from the private module {target}")
        for n in names:
            if _private(n) and mod not in PRIVATE_MODULES_ALLOWED.get(f"{target}.{n}", ()):
                found.append(f"{mod}:{node.lineno} imports {target}.{n}")
        for a in node.names:
            if isinstance(node, ast.ImportFrom):
                if f"{target}.{a.name}" in MODULES:
                    aliases[a.asname or a.name] = f"{target}.{a.name}"
            elif a.asname:
                aliases[a.asname] = a.name
            else:
                aliases[a.name.split(".")[0]] = a.name.split(".")[0]
    for node in ast.walk(tree):
        chain = _dotted(node) if isinstance(node, ast.Attribute) else None
        if not chain or chain[0] not in aliases:
            continue
        full = ".".join([aliases[chain[0]]] + chain[1:])
        owner, name = full.rsplit(".", 1)
        if _private(name) and owner != mod and owner in MODULES and mod not in PRIVATE_MODULES_ALLOWED.get(full, ()):
            found.append(f"{mod}:{node.lineno} uses {full}")
    return found


def test_private_use_found():
    """The check itself: each form of a private use outside ops/ is found; public and own names are not."""
    probe = SRC / "probe.py"  # stands for a module outside ops/ (never written)
    for text in ("from .ops._express import QK\n", "from .ops import _plan\n", "from .launch import _helper\n",
                 "from . import launch\ndef f():\n    return launch._helper\n", "import qknorm\nqknorm.ops._plan\n",
                 "import qknorm.launch as L\nL._x\n", "import qknorm.ops._plan\n"):
        assert _private_uses(probe, text), text
    assert not _private_uses(probe, "from . import launch\nlaunch.run\n_own = 1\nx = _own.__class__\n")


def test_no_private_names_outside_ops():
    """Nothing outside ``qknorm/ops/`` uses another qknorm module's ``_private`` name (README "Layout"; ops/
    modules share ``ops._plan`` and ``ops._express``); the exceptions are ``PRIVATE_MODULES_ALLOWED``."""
    bad = [u for path in FILES if not (_module_name(path) + ".").startswith("qknorm.ops.")
           for u in _private_uses(path)]
    assert not bad, "\n".join(bad)


# --------------------------------------------------------------------------- public docstrings

PUBLIC_MODULES = ("qknorm", "qknorm.nn", "qknorm.distributed", "qknorm.integrations.transformers")


def _public_objects():
    """``(qualified name, object)`` of every name in the public modules' ``__all__``, and of each public
    class's own public methods and properties."""
    for modname in PUBLIC_MODULES:
        mod = importlib.import_module(modname)
        for name in mod.__all__:
            obj = getattr(mod, name)
            if not callable(obj):
                continue  # __version__
            yield f"{modname}.{name}", obj
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if attr.startswith("_"):
                        continue
                    if isinstance(member, (staticmethod, classmethod)):
                        member = member.__func__
                    if isinstance(member, property) or inspect.isfunction(member):
                        yield f"{modname}.{name}.{attr}", member


def _section(doc: str, title: str) -> str | None:
    """The body of the numpy-style section ``title`` of a cleaned docstring (None if absent)."""
    m = re.search(rf"^{title}\n-{{3,}}\n(.*?)(?=^\S[^\n]*\n-{{3,}}$|\Z)", doc, re.M | re.S)
    return m.group(1) if m else None


def _raises_itself(fn) -> bool:
    """Whether ``fn``'s own body (not a nested function's) has a ``raise X`` statement."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(fn))))
    body = tree.body[0]

    def walk(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                continue
            if isinstance(child, ast.Raise) and child.exc is not None:
                return True
            if walk(child):
                return True
        return False
    return walk(body)


def _doc_problems(qualname: str, obj) -> list[str]:
    doc = inspect.getdoc(obj) if not isinstance(obj, property) else inspect.cleandoc(obj.__doc__ or "")
    if not doc:
        return [f"{qualname}: no docstring"]
    if isinstance(obj, property):
        return []
    if inspect.isclass(obj):  # the constructor's parameters are documented on the class (merge_init_into_class)
        init = obj.__init__
        fn, params = init, list(inspect.signature(obj).parameters)
        own_init = "__init__" in vars(obj) and not dataclasses.is_dataclass(obj)
        raising = [f for f in ((init,) if own_init else ()) + ((vars(obj)["__post_init__"],)
                                                              if "__post_init__" in vars(obj) else ())]
        returns = False
    else:
        fn = obj
        sig = inspect.signature(obj)
        params = [p for p in sig.parameters if p not in ("self", "cls")]
        raising = [fn]
        ret = sig.return_annotation
        # a module-level function returns something documented; a method only when it takes arguments
        is_method = "." in obj.__qualname__
        returns = ret not in (inspect.Signature.empty, None, "None") and (params or not is_method)
    problems = []
    if params:
        section = _section(doc, "Parameters")
        if section is None:
            problems.append(f"{qualname}: no Parameters section (takes {', '.join(params)})")
        else:
            named = set()
            for line in section.splitlines():
                if line and not line[0].isspace():
                    named.update(n.strip() for n in line.split(":")[0].split(","))
            missing = [p for p in params if p not in named]
            if missing:
                problems.append(f"{qualname}: Parameters section lacks {', '.join(missing)}")
    if returns and _section(doc, "Returns") is None:
        problems.append(f"{qualname}: no Returns section")
    if any(_raises_itself(f) for f in raising) and _section(doc, "Raises") is None:
        problems.append(f"{qualname}: raises, but has no Raises section")
    return problems


def test_public_docstrings_have_sections():
    """Every public callable that takes parameters names each one under "Parameters"; functions that return
    a value have "Returns"; those that raise (their own ``raise`` statements) have "Raises"."""
    objects = list(_public_objects())
    names = {q for q, _ in objects}
    for expected in ("qknorm.rms_norm", "qknorm.KernelConfig", "qknorm.set_backend", "qknorm.explain",
                     "qknorm.nn.RMSNorm.forward", "qknorm.nn.QKNorm.from_norms", "qknorm.distributed.rms_norm_tp",
                     "qknorm.integrations.transformers.apply_qknorm", "qknorm.integrations.transformers.Report"):
        assert expected in names
    problems = [p for q, obj in objects for p in _doc_problems(q, obj)]
    assert not problems, "\n".join(problems)
