"""The CLI's binding (issue 19.4): every subcommand is bound to its function by the parser
(`set_defaults(func=)`), and the options the parser stores are exactly that function's keyword
arguments, so an option is spelled once (a renamed flag or parameter fails here, not at run
time)."""

from __future__ import annotations

import argparse
import inspect

from pgolf import cli

GLOBAL = {"func", "cmd", "action", "progress"}  # the parser's own keys, taken by `main`


def _leaves(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()):
    """(subcommand words, its parser) for every subcommand that runs something."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(words), parser
    for action in subs:
        for name, p in action.choices.items():
            yield from _leaves(p, (*words, name))


def test_every_subcommand_is_bound_and_its_options_are_the_functions_arguments():
    leaves = dict(_leaves(cli.build_parser()))
    assert set(leaves) == set(cli.COMMANDS)
    for words, p in leaves.items():
        func = cli.COMMANDS[words]
        assert p.get_default("func") is func, words
        dests = {a.dest for a in p._actions if a.dest != "help"} - GLOBAL
        params = inspect.signature(func).parameters
        named = {n for n, q in params.items() if q.kind is not q.VAR_KEYWORD}
        takes_more = any(q.kind is q.VAR_KEYWORD for q in params.values())
        assert named <= dests, f"{words}: {named - dests} not options of the parser"
        assert takes_more or dests <= named, f"{words}: {dests - named} not arguments"
        required = {
            n for n, q in params.items() if q.default is q.empty and q.kind != q.VAR_KEYWORD
        }
        assert required <= dests, words


def test_options_reach_the_function_as_keywords(monkeypatch):
    got = {}

    def fake(**kw):
        got.update(kw)

    monkeypatch.setitem(cli.COMMANDS, "eval", fake)
    cli.main(["eval", "RUN", "--no-sliding", "--stride", "32"])
    assert got == {
        "artifact": "RUN",
        "weights": None,
        "stride": 32,
        "data": None,
        "sliding": False,
        "ttt": None,
        "allow_over_budget": False,
        "ngram_tilt": False,
    }
    got.clear()
    cli.main(["eval", "RUN"])
    assert "sliding" not in got  # absent --no-sliding: the function's default (True) holds
    assert inspect.signature(cli.cmd_eval).parameters["sliding"].default is True
