"""Every network by name, in one registry: grading backbones and heatmap (localiser) networks.

A module of this package registers factories with `@register_model(name)` (a grading backbone) or
`@register_model(name, kind=HEATMAP)`, so adding a network is adding one file (see CONTRIBUTING.md).

Listing costs no torch: the names, kinds and descriptions (the factory's docstring, first line) are read
from the decorators in the modules' source, without importing them, so `spinegrade info` starts in a
blink. Building a model imports only the module that declares it (and so torch, and MONAI only for the
MONAI families). The decorator's name and kind must therefore be literals (`"name"`, `HEATMAP`).

- A **backbone** factory takes `(in_channels, **kwargs)` and returns a module that maps
  `(B, in_channels, H, W)` to pooled features `(B, num_features)` and has a `num_features` attribute.
  `create_model` puts `GradingHead` on top, which is where an optional condition vector (level, side,
  family one-hot) joins the image features, so conditioning works the same for every backbone.
- A **heatmap** factory takes `(in_channels, num_outputs, **kwargs)` and returns a dense network
  `(B, in_channels, H, W) -> (B, num_outputs, H, W)` logits.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpinegradeError

BACKBONE = "backbone"
HEATMAP = "heatmap"
KINDS = (BACKBONE, HEATMAP)

_FACTORIES: dict[str, Callable] = {}  # filled as modules are imported (and by register_model at run time)
_KINDS: dict[str, str] = {}
_declared: dict[str, Declaration] | None = None


@dataclass(frozen=True)
class Declaration:
    """A model as its source declares it: enough to list it without importing anything."""

    name: str
    kind: str
    module: str  # the module of this package that registers it
    description: str


def register_model(name: str, kind: str = BACKBONE) -> Callable[[Callable], Callable]:
    """Decorator: register a factory under `name` (see the module doc for what each kind's factory takes)."""
    if kind not in KINDS:
        raise ValueError(f"model kind {kind!r}: expected one of {', '.join(KINDS)}")

    def deco(factory: Callable) -> Callable:
        if name in _FACTORIES and _FACTORIES[name] is not factory:
            raise ValueError(f"model name {name!r} is already registered")
        _FACTORIES[name] = factory
        _KINDS[name] = kind
        return factory

    return deco


def _literal_kind(node: ast.expr, where: str) -> str:
    if isinstance(node, ast.Constant) and node.value in KINDS:
        return node.value
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
    if name in ("BACKBONE", "HEATMAP"):
        return {"BACKBONE": BACKBONE, "HEATMAP": HEATMAP}[name]
    raise SpinegradeError(f"{where}: register_model's kind must be BACKBONE, HEATMAP or a literal "
                          f"{' or '.join(map(repr, KINDS))} (the registry reads it without importing the file)")


def _declarations_in(source: str, module: str, filename: str) -> list[Declaration]:
    """The `@register_model(...)` decorators of one module's source."""
    out = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            continue
        for deco in node.decorator_list:
            if not isinstance(deco, ast.Call):
                continue
            f = deco.func
            if (f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None) \
                    != "register_model":
                continue
            where = f"{filename}:{deco.lineno}"
            args = {k.arg: k.value for k in deco.keywords}
            name = deco.args[0] if deco.args else args.get("name")
            if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
                raise SpinegradeError(f"{where}: register_model needs the model's name as a string literal "
                                      f"(the registry reads it without importing the file)")
            kind_node = deco.args[1] if len(deco.args) > 1 else args.get("kind")
            kind = BACKBONE if kind_node is None else _literal_kind(kind_node, where)
            doc = (ast.get_docstring(node) or "").strip()
            out.append(Declaration(name.value, kind, module, " ".join(doc.split("\n\n")[0].split())))
    return out


def _declarations() -> dict[str, Declaration]:
    """Every model the package's modules declare, read from their source once per process."""
    global _declared
    if _declared is not None:
        return _declared
    here = Path(__file__).parent
    found: dict[str, Declaration] = {}
    for m in pkgutil.iter_modules([str(here)]):
        if m.name == "registry" or m.name.startswith("_"):
            continue
        module = f"{__package__}.{m.name}"
        path = here / f"{m.name}.py"
        if path.is_file():
            decls = _declarations_in(path.read_text(encoding="utf-8"), module, str(path))
        else:  # installed without sources: learn the names the slow way
            before = set(_FACTORIES)
            importlib.import_module(module)
            decls = [Declaration(n, _KINDS[n], module, "") for n in sorted(set(_FACTORIES) - before)]
        for d in decls:
            if d.name in found:
                raise SpinegradeError(f"model name {d.name!r} is declared twice ({found[d.name].module}, {module})")
            found[d.name] = d
    _declared = found
    return found


def list_models(kind: str | None = BACKBONE) -> list[str]:
    """Registered names of one kind (default: the grading backbones), or of every kind with `kind=None`; sorted."""
    kinds = {n: d.kind for n, d in _declarations().items()} | _KINDS
    return sorted(n for n, k in kinds.items() if kind is None or k == kind)


def describe_models() -> dict[str, dict]:
    """{name: {"kind", "description"}} for every registered model, without importing any network."""
    decl = _declarations()
    return {n: {"kind": model_kind(n), "description": decl[n].description if n in decl else ""}
            for n in list_models(None)}


def model_kind(name: str) -> str:
    """`backbone` or `heatmap`; SpinegradeError for a name nobody registered."""
    if name in _KINDS:
        return _KINDS[name]
    decl = _declarations()
    if name not in decl:
        raise SpinegradeError(f"unknown model {name!r}; registered: {', '.join(list_models(None))}")
    return decl[name].kind


def _factory(name: str) -> Callable:
    """The factory of `name`, importing the one module that declares it (and nothing else)."""
    model_kind(name)  # an unknown name fails here, with the list
    if name not in _FACTORIES:
        module = _declarations()[name].module
        importlib.import_module(module)
        if name not in _FACTORIES:  # the source said one thing, the module did another: a bug, say where
            raise SpinegradeError(f"{module} declares model {name!r} but registered no factory for it on import")
    return _FACTORIES[name]


def create_model(name: str, in_channels: int, num_outputs: int, **kwargs):
    """Build any registered model: `in_channels` slices in (2.5D = adjacent slices), `num_outputs` out.

    A backbone becomes a `GradingNet` (`num_outputs` logits); its keyword arguments `cond_dim` (> 0: the
    model takes a condition vector of that size as its second input), `head_hidden` and `head_dropout`
    shape the head, the others go to the backbone factory. A heatmap network gets every keyword argument
    and returns `num_outputs` maps. This is what `train.checkpoint.load_model` calls, for every kind.
    """
    kind = model_kind(name)
    factory = _factory(name)
    head = {k: kwargs.pop(k) for k in ("cond_dim", "head_hidden", "head_dropout") if k in kwargs} \
        if kind == BACKBONE else {}
    try:
        net = factory(in_channels, **kwargs) if kind == BACKBONE else factory(in_channels, num_outputs, **kwargs)
    except TypeError as e:  # an option the factory does not take
        raise SpinegradeError(f"model {name!r}: {e}") from None
    if kind == HEATMAP:
        return net
    from ._head import GradingNet

    return GradingNet(net, num_outputs, head.get("cond_dim", 0), head.get("head_hidden", 256),
                      head.get("head_dropout", 0.3))
