"""The options of an edit, declared once for every method that sends one (sync and async, unary and
streamed). Names and meanings are the wire contract's inputs (``_contract.PARAMETERS``); an option
left out, or None, takes the server's default (``server_info()`` lists them)."""

from __future__ import annotations

from typing import TypedDict

from smartedit_client import _contract as wire


# Every parameter but the prompt (an argument of its own), as the contract declares it, and the images an edit
# may carry besides the photo and its mask (a ControlNet's control_image: bytes, a path or a PIL image): a parameter
# declared there is an option here with no edit of this module. (Made at run time, so a type checker sees no keys;
# ``help(EditOptions)`` lists them.)
_OPTIONS = [spec for spec in wire.PARAMETERS if spec is not wire.PROMPT] + list(wire.IMAGE_OPTIONS)
EditOptions = TypedDict("EditOptions", {spec.name: object if spec in wire.IMAGE_OPTIONS else spec.python_type
                                        for spec in _OPTIONS}, total=False)
EditOptions.__doc__ = "Attributes (each optional; left out or None: the server's default):\n" + "\n".join(
    f"    {spec.name} ({'image' if spec in wire.IMAGE_OPTIONS else spec.python_type.__name__}): {spec.meaning}"
    for spec in _OPTIONS)


def checked_options(method: str, options: dict) -> dict:
    """``options`` as given, or TypeError naming an option the contract does not have (as Python would
    for a misspelt keyword argument)."""
    known = {spec.name for spec in wire.PARAMETERS + wire.IMAGE_OPTIONS}
    for name in options:
        if name not in known:
            raise TypeError(f"{method}() got an unexpected keyword argument {name!r}")
    return options
