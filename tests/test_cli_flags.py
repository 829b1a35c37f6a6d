"""The command line's flag plumbing (seqlm.cli.flags), in process."""

import pytest

from seqlm.cli import build_parser
from seqlm.cli.flags import as_flags


def test_library_setting_names_print_as_the_flags_a_user_types():
    """One mapping: a setting named in backticks by the library is the flag on the command line;
    names that are no flag keep their plain name."""
    build_parser()
    assert as_flags("`num_steps` must be a positive integer, got 0") == (
        "--num-steps must be a positive integer, got 0")
    assert as_flags("pass `overwrite` or choose another `out`") == (
        "pass --overwrite or choose another --out")
    assert as_flags("unknown `stepper` 'jax'") == "unknown stepper 'jax'"  # no such flag


def test_parser_errors_name_the_parser_once(capsys):
    parser = build_parser()
    for argv, prefix in ((["generate", "run", "--bogus"], "seqlm: error: "),
                         (["generate"], "seqlm generate: error: ")):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith(prefix), err
        assert "seqlm seqlm" not in err
