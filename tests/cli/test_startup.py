"""The command line starts without torch: ``lmshield --help`` and every command's help answer at once."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "peft")


def test_building_the_cli_imports_no_heavy_library() -> None:
    probe = (
        "import sys\n"
        "from lmshield.cli.main import app\n"
        "import typer.main\n"
        "command = typer.main.get_command(app)\n"
        "assert {'scan', 'attack', 'psim', 'poison'} <= set(command.commands)\n"
        "assert {'por', 'neuba', 'btop', 'verify'} <= set(command.commands['attack'].commands)\n"
        f"print(','.join(name for name in {HEAVY!r} if name in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


@pytest.mark.parametrize("package", ["lmshield.attacks", "lmshield.attacks.poisoning"])
def test_a_lazy_package_exports_each_name_from_its_module(package: str) -> None:
    lazy = importlib.import_module(package)
    pairs = [(name, module) for module, names in lazy._EXPORTS.items() for name in names]
    assert sorted(lazy.__all__) == sorted(name for name, _ in pairs)
    for name, module in pairs:
        assert getattr(lazy, name) is getattr(importlib.import_module(module), name)
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        lazy.nope  # noqa: B018


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["psim", "fit", "m", "--texts", "t", "--limit", "0"], "error: Invalid value for '--limit'"),
        (["scan", "--bogus"], "error: No such option: --bogus"),
        (["psim", "fit"], "error: Missing argument 'model'."),
    ],
)
def test_a_usage_error_is_one_line_with_exit_code_2(
    args: list[str], line: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from lmshield.cli.main import main

    monkeypatch.setattr(sys, "argv", ["lmshield", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.startswith(line) and err.count("\n") == 1


def test_exit_codes_of_commands_pass_through_main(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from lmshield.cli.main import main

    monkeypatch.setattr(sys, "argv", ["lmshield", "attack", "verify", str(tmp_path)])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2  # a friendly error: no backdoor.json there
    monkeypatch.setattr(sys, "argv", ["lmshield", "--version"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 0


def test_help_keeps_whole_option_names_on_an_80_column_terminal() -> None:
    from tests.cli.helpers import invoke

    text = invoke("tune", "--help", terminal_width=80).output
    assert "--num-virtual-tokens" in text and "--allow-pickle / --no-allow-pickle" in text
    assert "…" not in text and "<bool>" not in text
