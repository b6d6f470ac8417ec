"""Derived modalities: a modality computed at build time from other modalities' bands, e.g. NDVI from Sentinel-2.

The expression language is a small, safe subset of Python's arithmetic, parsed with :mod:`ast` and checked against
a whitelist before anything is evaluated (nothing is ever passed to ``eval``):

- band references: ``s2l2a.B08`` (modality ``s2l2a``, band ``B08``), or an alias declared in the recipe's
  ``derived.inputs`` (``nir: s2l2a.B08``);
- numbers; ``+ - * / ** %``, unary ``-``; comparisons ``< <= > >= == !=`` and ``&``, ``|``, ``~`` on them (for
  ``where``);
- the functions ``abs sqrt log log10 exp`` (one argument), ``minimum maximum`` (two), ``clip(x, low, high)`` and
  ``where(condition, a, b)``.

Expressions are evaluated on physical values (``stored * scale + offset`` of each input) in float64. A result pixel
is valid only where every input band it reads is valid, every divisor is non-zero (a division in the branch that
``where`` does not take does not count) and the result is finite.

In a recipe::

    modalities:
      ndvi:
        collection: ndvi            # bands, dtype, scale, nodata, units, licence, display: like any collection
        resolution_m: 10            # the inputs' resolution
        derived:
          expression: (s2l2a.B08 - s2l2a.B04) / (s2l2a.B08 + s2l2a.B04)
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

#: The functions an expression may call, with their number of arguments.
FUNCTIONS: dict[str, int] = {"abs": 1, "sqrt": 1, "log": 1, "log10": 1, "exp": 1, "minimum": 2, "maximum": 2,
                             "clip": 3, "where": 3}
_BINARY: dict[type[ast.operator], Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide, ast.Pow: np.power,
    ast.Mod: np.mod, ast.BitAnd: np.logical_and, ast.BitOr: np.logical_or}
_COMPARE: dict[type[ast.cmpop], Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    ast.Lt: np.less, ast.LtE: np.less_equal, ast.Gt: np.greater, ast.GtE: np.greater_equal, ast.Eq: np.equal,
    ast.NotEq: np.not_equal}
_UNARY: dict[type[ast.unaryop], Callable[[np.ndarray], np.ndarray]] = {
    ast.USub: np.negative, ast.UAdd: np.positive, ast.Invert: np.logical_not}
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_REF = re.compile(r"^([a-z][a-z0-9_]*)\.(\S+)$")
_SYNTAX = ("numbers, band references such as s2l2a.B08 or declared aliases, + - * / ** %, comparisons, & | ~, "
           f"and the functions {', '.join(FUNCTIONS)}")


class DerivedError(ValueError):
    """An expression that is not in the derived-modality language, or derived modalities that read each other in a
    cycle (``cycle``: their names, the first repeated at the end)."""

    def __init__(self, message: str, cycle: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.cycle = cycle


@dataclass(frozen=True)
class BandRef:
    """One band of one modality, as an expression reads it."""

    modality: str
    band: str

    def __str__(self) -> str:
        return f"{self.modality}.{self.band}"


class DerivedSpec(BaseModel):
    """How a derived modality is computed: one expression (one band) over other modalities' bands."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # inputs first: the expression's validator reads them
    inputs: dict[str, str] = Field(default_factory=dict, description="aliases: name -> 'modality.band' "
                                                                      "(e.g. nir: s2l2a.B08)")
    expression: str = Field(description="arithmetic over band references, e.g. "
                                        "(s2l2a.B08 - s2l2a.B04) / (s2l2a.B08 + s2l2a.B04)")

    @field_validator("inputs")
    @classmethod
    def _aliases(cls, v: dict[str, str]) -> dict[str, str]:
        for alias, ref in v.items():
            if not _IDENT.match(alias) or alias in FUNCTIONS:
                raise ValueError(f"alias {alias!r}: expected a name of letters, digits and _ that is not one of the "
                                 f"functions ({', '.join(FUNCTIONS)})")
            if not isinstance(ref, str) or not _REF.match(ref):
                raise ValueError(f"alias {alias!r}: found {ref!r}, expected 'modality.band' such as 's2l2a.B08'")
        return v

    @field_validator("expression")
    @classmethod
    def _syntax(cls, v: str, info: ValidationInfo) -> str:
        parse_expression(v, aliases=info.data.get("inputs", {}))
        return v

    def references(self) -> tuple[BandRef, ...]:
        """Every band the expression reads, once each, in order of first use."""
        return parse_expression(self.expression, self.inputs).refs


@dataclass(frozen=True)
class Expression:
    """A checked expression: its syntax tree and the bands it reads."""

    text: str
    tree: ast.Expression
    aliases: Mapping[str, BandRef]
    refs: tuple[BandRef, ...]
    direct: tuple[BandRef, ...]  # the references written as modality.band (not through an alias)

    def evaluate(self, values: Mapping[BandRef, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Evaluate on arrays of physical values (one per band reference, all the same shape).

        Returns:
            (result as float64, where it is defined: every divisor non-zero, result finite). Input validity is the
            caller's to combine.
        """
        shape = np.shape(next(iter(values.values()))) if values else ()
        with np.errstate(all="ignore"):
            out, ok = _eval(self.tree.body, self.aliases, values, shape)
            out = np.broadcast_to(np.asarray(out, dtype=np.float64), shape)
            ok = np.broadcast_to(ok, shape) & np.isfinite(out)
        return out, ok


def parse_expression(text: str, aliases: Mapping[str, str] | None = None) -> Expression:
    """Parse and check an expression (no evaluation).

    Args:
        text: The expression.
        aliases: Alias -> ``"modality.band"``.

    Raises:
        DerivedError: the text is not an expression of the language (the message says what is not allowed).
    """
    refs_by_alias = {a: BandRef(*_REF.match(r).groups()) for a, r in (aliases or {}).items() if _REF.match(r)}
    if not isinstance(text, str) or not text.strip():
        raise DerivedError(f"found {text!r}, expected an expression such as (s2l2a.B08 - s2l2a.B04) / "
                           "(s2l2a.B08 + s2l2a.B04)")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise DerivedError(f"not an expression ({exc.msg} at column {exc.offset}); expected {_SYNTAX}") from None
    refs: dict[BandRef, bool] = {}
    _check(tree.body, refs_by_alias, refs)
    if not refs:
        raise DerivedError(f"found {text!r}, which reads no band; expected an expression over band references such "
                           "as s2l2a.B08 (a constant is not a modality)")
    return Expression(text, tree, refs_by_alias, tuple(refs), tuple(r for r, direct in refs.items() if direct))


def _check(node: ast.AST, aliases: Mapping[str, BandRef], refs: dict[BandRef, bool]) -> None:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise DerivedError(f"found the constant {node.value!r}, expected numbers only")
    elif isinstance(node, ast.Attribute):
        if not isinstance(node.value, ast.Name):
            raise DerivedError(f"found {ast.unparse(node)!r}, expected a band reference modality.band such as "
                               "s2l2a.B08 (no other attributes)")
        refs[BandRef(node.value.id, node.attr)] = True
    elif isinstance(node, ast.Name):
        if node.id not in aliases:
            declared = f"the declared aliases are {sorted(aliases)}" if aliases else "no aliases are declared"
            raise DerivedError(f"unknown name {node.id!r}: {declared}; refer to bands as modality.band (s2l2a.B08) "
                               "or declare an alias in derived.inputs")
        refs.setdefault(aliases[node.id], False)
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY:
            raise DerivedError(f"operator {type(node.op).__name__} is not allowed; expected {_SYNTAX}")
        _check(node.left, aliases, refs)
        _check(node.right, aliases, refs)
    elif isinstance(node, ast.UnaryOp):
        if type(node.op) not in _UNARY:
            raise DerivedError(f"operator {type(node.op).__name__} is not allowed; expected {_SYNTAX}")
        _check(node.operand, aliases, refs)
    elif isinstance(node, ast.Compare):
        for op in node.ops:
            if type(op) not in _COMPARE:
                raise DerivedError(f"comparison {type(op).__name__} is not allowed; expected < <= > >= == !=")
        for sub in (node.left, *node.comparators):
            _check(sub, aliases, refs)
    elif isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
        if name not in FUNCTIONS or not isinstance(node.func, ast.Name):
            raise DerivedError(f"unknown function {name!r}; expected one of {', '.join(FUNCTIONS)}")
        if node.keywords or len(node.args) != FUNCTIONS[name] or any(isinstance(a, ast.Starred) for a in node.args):
            raise DerivedError(f"{name}() takes {FUNCTIONS[name]} positional argument(s), found "
                               f"{ast.unparse(node)!r}")
        for arg in node.args:
            _check(arg, aliases, refs)
    else:
        raise DerivedError(f"{type(node).__name__} ({ast.unparse(node)!r}) is not allowed; expected {_SYNTAX}")


def _eval(node: ast.AST, aliases: Mapping[str, BandRef], values: Mapping[BandRef, np.ndarray],
          shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(value, defined) of a checked node; ``defined`` is False where a divisor is 0 on the path taken."""
    if isinstance(node, ast.Constant):
        return np.float64(node.value), np.ones(shape, bool)
    if isinstance(node, ast.Attribute | ast.Name):
        ref = BandRef(node.value.id, node.attr) if isinstance(node, ast.Attribute) else aliases[node.id]
        return np.asarray(values[ref], np.float64), np.ones(shape, bool)
    if isinstance(node, ast.BinOp):
        (a, oka), (b, okb) = _eval(node.left, aliases, values, shape), _eval(node.right, aliases, values, shape)
        ok = oka & okb
        if isinstance(node.op, ast.Div | ast.Mod):
            ok = ok & (b != 0)
        return _BINARY[type(node.op)](a, b), ok
    if isinstance(node, ast.UnaryOp):
        a, ok = _eval(node.operand, aliases, values, shape)
        return _UNARY[type(node.op)](a), ok
    if isinstance(node, ast.Compare):
        left, ok = _eval(node.left, aliases, values, shape)
        out = np.ones(shape, bool)
        for op, comp in zip(node.ops, node.comparators, strict=True):
            right, okr = _eval(comp, aliases, values, shape)
            out, ok, left = out & _COMPARE[type(op)](left, right), ok & okr, right
        return out, ok
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)  # _check allowed nothing else
    args = [_eval(a, aliases, values, shape) for a in node.args]
    name = node.func.id
    if name == "where":
        (cond, okc), (a, oka), (b, okb) = args
        cond = np.asarray(cond, bool)
        return np.where(cond, a, b), okc & np.where(cond, oka, okb)
    ok = np.logical_and.reduce([k for _, k in args])
    fn = {"abs": np.abs, "sqrt": np.sqrt, "log": np.log, "log10": np.log10, "exp": np.exp, "minimum": np.minimum,
          "maximum": np.maximum, "clip": np.clip}[name]
    return fn(*[v for v, _ in args]), ok


def check_references(refs: tuple[BandRef, ...], bands: Mapping[str, tuple[str, ...]]) -> list[str]:
    """Problems with band references, given each modality's band names (one line each, without the key path).

    Args:
        refs: The references (:attr:`Expression.direct`, or an alias's).
        bands: Modality name -> its band names, for every modality of the recipe.
    """
    problems = []
    for ref in refs:
        if ref.modality not in bands:
            problems.append(f"unknown modality {ref.modality!r} in {str(ref)!r}; the recipe's modalities are "
                            f"{sorted(bands)}")
        elif ref.band not in bands[ref.modality]:
            have = bands[ref.modality]
            span = f"{have[0]}..{have[-1]}" if len(have) > 3 else ", ".join(have)
            problems.append(f"unknown band {ref.band!r} of {ref.modality}; its bands are {span}")
    return problems


def derivation_order(graph: Mapping[str, tuple[str, ...]]) -> list[str]:
    """Derived modalities in an order where each comes after the derived modalities it reads.

    Args:
        graph: Derived modality -> the modalities it reads.

    Raises:
        DerivedError: the derived modalities read each other in a cycle (the message names it).
    """
    order: list[str] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name):] + [name]
            raise DerivedError(f"derived modalities read each other in a cycle: {' -> '.join(cycle)}; a derived "
                               "modality may read only read modalities or derived ones that do not read it",
                               tuple(cycle))
        state[name] = 1
        for dep in graph[name]:
            if dep in graph:
                visit(dep, [*path, name])
        state[name] = 2
        order.append(name)

    for name in graph:
        visit(name, [])
    return order
