"""Argument checks at the DSL's public boundary: errors name the value and the fix."""
import numbers


def integer(name, value, *, min=None, what=""):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what}{name} must be an int, got {type(value).__name__} ({value!r})")
    value = int(value)
    if min is not None and value < min:
        raise ValueError(f"{what}{name} must be >= {min}, got {value}")
    return value


def number(name, value, *, what=""):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what}{name} must be a number, got {type(value).__name__} ({value!r})")
    return float(value)


def int_tuple(name, value, *, length=None, min=None, what=""):
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and length:
        value = (value,) * length
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"{what}{name} must be a tuple of ints, got {type(value).__name__} ({value!r})")
    if length is not None and len(value) != length:
        raise ValueError(f"{what}{name} must have {length} entries, got {len(value)}: {tuple(value)!r}")
    if length is None and len(value) == 0:
        raise ValueError(f"{what}{name} must not be empty")
    return tuple(integer(f"{name}[{k}]", v, min=min, what=what) for k, v in enumerate(value))


def identifier(name, value, *, what=""):
    if not isinstance(value, str):
        raise TypeError(f"{what}{name} must be a str naming a tensor, got {type(value).__name__} ({value!r})")
    if not value.isidentifier() or value.startswith("__"):
        raise ValueError(f"{what}{name} must be a Python identifier not starting with '__' (it becomes "
                         f"a keyword argument of the kernel call), got {value!r}")
    return value


def choice(name, value, options, *, what=""):
    if value not in options:
        raise ValueError(f"{what}{name} must be one of {', '.join(map(repr, options))}, got {value!r}")
    return value
