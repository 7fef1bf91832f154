"""The agent's tool: a calculator over arithmetic expressions, evaluated with ``ast`` (never ``eval``).

- ``evaluate(expr)``: numbers, ``+ - * / // % **``, unary signs, parentheses. Anything else (names, calls,
  attributes, strings) raises ``CalculatorError``, and so do division by zero, exponents beyond ``MAX_EXPONENT``
  and inputs longer than ``MAX_LENGTH``. Integral results come back as ints.
- Tool-call syntax in text: ``<calc>EXPR</calc>``, answered by ``<result>VALUE</result>`` (or
  ``<result>error: MESSAGE</result>``). ``find_calls(text)`` returns the expressions of complete calls;
  ``open_call(text)`` the expression of a call cut at its closing tag (a generation stopped at ``</calc>``).
- ``find_arithmetic(text)``: arithmetic written in plain text ("12 * 7 + 3", "(4+5)/3"): runs of at least two
  numbers joined by operators, with words like "times"/"plus" accepted too. The agent uses it on the user's
  question (see ``programs.agent`` for the policy).
"""

from __future__ import annotations

import ast
import operator
import re

CALL_OPEN = "<calc>"
CALL_CLOSE = "</calc>"
RESULT_OPEN = "<result>"
RESULT_CLOSE = "</result>"
MAX_LENGTH = 200
MAX_EXPONENT = 64


class CalculatorError(ValueError):
    pass


_BINARY = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _eval(node):
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise CalculatorError(f"exponent {right} is too large (at most {MAX_EXPONENT})")
        try:
            return _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
    raise CalculatorError(f"not arithmetic: {ast.unparse(node) if isinstance(node, ast.AST) else node!r}")


def evaluate(expr: str) -> int | float:
    if not isinstance(expr, str) or not expr.strip():
        raise CalculatorError("empty expression")
    if len(expr) > MAX_LENGTH:
        raise CalculatorError(f"expression longer than {MAX_LENGTH} characters")
    text = expr.strip().replace("×", "*").replace("÷", "/").replace("^", "**").replace(",", "")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise CalculatorError(f"cannot parse {expr.strip()!r}") from None
    value = _eval(tree)
    if isinstance(value, complex):
        raise CalculatorError("complex result")
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return round(value, 10) if isinstance(value, float) else value


def format_call(expr: str, value: str) -> str:
    return f"{CALL_OPEN}{expr}{CALL_CLOSE}{RESULT_OPEN}{value}{RESULT_CLOSE}"


def answer(expr: str) -> tuple[str, bool]:
    """The calculator's answer as result text, and whether it succeeded."""
    try:
        return str(evaluate(expr)), True
    except CalculatorError as e:
        return f"error: {e}", False


_CALL = re.compile(re.escape(CALL_OPEN) + r"(.*?)" + re.escape(CALL_CLOSE), re.DOTALL)


def find_calls(text: str) -> list[str]:
    return [m.strip() for m in _CALL.findall(text or "")]


def open_call(text: str) -> str | None:
    """The expression after the last unclosed ``<calc>`` (the generation stopped at ``</calc>``), else None."""
    if not text or CALL_OPEN not in text:
        return None
    tail = text.rsplit(CALL_OPEN, 1)[1]
    return None if CALL_CLOSE in tail else tail.strip()


_WORDS = {r"\btimes\b": "*", r"\bmultiplied by\b": "*", r"\bplus\b": "+", r"\bminus\b": "-",
          r"\bdivided by\b": "/", r"\bover\b": "/"}
_NUMBER = r"\d+(?:\.\d+)?"
_ARITH = re.compile(
    r"\(*\s*-?" + _NUMBER + r"\s*\)*(?:\s*(?:\*\*|[-+*/×÷^%])\s*\(*\s*-?" + _NUMBER + r"\s*\)*)+"
)


def find_arithmetic(text: str) -> list[str]:
    """Arithmetic expressions written in ``text`` that the calculator can evaluate, in order of appearance."""
    if not text:
        return []
    for pattern, op in _WORDS.items():
        text = re.sub(pattern, op, text, flags=re.IGNORECASE)
    found = []
    for m in _ARITH.finditer(text):
        expr = m.group(0).strip()
        # keep parentheses balanced: trim unmatched ones at the edges
        while expr.count("(") > expr.count(")") and expr.startswith("("):
            expr = expr[1:].strip()
        while expr.count(")") > expr.count("(") and expr.endswith(")"):
            expr = expr[:-1].strip()
        try:
            evaluate(expr)
        except CalculatorError:
            continue
        found.append(expr)
    return found
