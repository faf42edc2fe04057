"""Every option of the commands an operator runs says what it does and what it is when not given."""

from __future__ import annotations

import argparse

import pytest


def _subcommand(name: str) -> argparse.ArgumentParser:
    from smartedit.cli.main import parser

    (subparsers,) = [a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return subparsers.choices[name]


def _gateway() -> argparse.ArgumentParser:
    from smartedit_gateway.__main__ import parser

    return parser()


@pytest.mark.parametrize("command", ["smartedit serve", "smartedit drain", "smartedit-gateway"])
def test_every_option_has_a_sentence_and_its_default(command):
    parser = _gateway() if command == "smartedit-gateway" else _subcommand(command.split()[1])
    options = [action for action in parser._actions if action.option_strings and action.dest != "help"]
    assert options
    for action in options:
        text, name = action.help or "", action.option_strings[0]
        assert len(text.split()) >= 4, f"{command} {name}: no sentence"
        assert "default" in text, f"{command} {name}: says no default ({text!r})"
        default = action.default
        if isinstance(default, (int, float, str)) and not isinstance(default, bool) and default != "":
            said = {str(default)} | ({str(int(default))} if isinstance(default, float) and default.is_integer() else set())
            assert any(f"default {value}" in text or f"default: {value}" in text for value in said), \
                f"{command} {name}: the help does not say its default {default!r} ({text!r})"
