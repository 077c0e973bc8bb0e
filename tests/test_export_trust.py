"""An export of a network of yours carries code: a file from someone else must never get
code run without the user's trust, whatever it names and embeds."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

import tuner
from tuner.cli import cli
from tuner.errors import DataError

NET = ("import torch.nn as nn\n"
       "def build(config, input_shape, n_outputs):\n"
       "    return nn.Linear(input_shape[0], n_outputs)\n")


@pytest.fixture
def exported(runner: CliRunner, write_space: Any, storage_url: str, tmp_path: Path) -> Path:
    (tmp_path / "net.py").write_text(NET)
    space = write_space({"task": {"dataset": "iris", "epochs": 2}, "pruner": {"name": "none"},
                         "params": {"hidden": 8}})
    assert runner.invoke(cli, ["start", "--space", str(space), "--storage", storage_url,
                               "--trials", "1", "--quiet", "--model",
                               "net.py:build"]).exit_code == 0
    out = tmp_path / "net.pt"
    assert runner.invoke(cli, ["export", "--study", "tiny", "--storage", storage_url,
                               "--out", str(out)]).exit_code == 0
    return out


def _craft(good: Path, out: Path, reference: str, **source: Any) -> Path:
    payload = torch.load(good, weights_only=True)
    payload["spec"]["model"] = reference
    payload["source"].update(source)
    if "text" in source:
        from tuner.usercode import source_hash

        payload["source"]["sha256"] = source_hash(source["text"])
    torch.save(payload, out)
    return out


def test_a_matching_builder_loads_without_trust_and_an_edited_one_does_not(
        exported: Path, tmp_path: Path) -> None:
    model = tuner.load_model(exported)  # net.py is here, with the same source
    assert type(model.network).__name__ == "Linear"
    (tmp_path / "net.py").write_text(NET + "# changed\n")
    with pytest.raises(DataError, match="pass --trust-code"):
        tuner.load_model(exported)
    assert type(tuner.load_model(exported, trust_code=True).network).__name__ == "Linear"


def test_a_package_named_by_a_hostile_file_is_not_imported_to_check_it(
        exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "ran"
    package = tmp_path / "site" / "sidepkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('init ran')\n")
    (package / "mod.py").write_text(NET)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    evil = _craft(exported, tmp_path / "evil.pt", "sidepkg.mod:build", module="sidepkg.mod",
                  filename="mod.py", text=NET + "# not the same\n")
    with pytest.raises(DataError, match="pass --trust-code"):
        tuner.load_model(evil)
    assert not marker.exists() and "sidepkg" not in sys.modules


def test_a_file_of_known_contents_without_the_builder_is_never_imported(
        exported: Path, tmp_path: Path) -> None:
    """The embedded text equals a file that exists here (so the hashes match), but that
    file defines no such builder: importing it would run its code for nothing."""
    marker = tmp_path / "ran"
    script = tmp_path / "script.py"
    script.write_text(f"open({str(marker)!r}, 'w').write('module code ran')\n")
    evil = _craft(exported, tmp_path / "evil.pt", f"{script}:build", module="script",
                  filename="script.py", text=script.read_text())
    with pytest.raises(DataError, match="pass --trust-code"):
        tuner.load_model(evil)
    assert not marker.exists()
    # A module of Python's own, named with its exact text, is refused the same way.
    import this  # noqa: F401  (its text is known; it prints when first imported)

    stdlib = Path(sys.modules["this"].__file__ or "")
    evil = _craft(exported, tmp_path / "zen.pt", f"{stdlib}:build", module="this",
                  filename="this.py", text=stdlib.read_text())
    with pytest.raises(DataError, match="pass --trust-code"):
        tuner.load_model(evil)
    evil = _craft(exported, tmp_path / "zen2.pt", "this:build", module="this",
                  filename="this.py", text=stdlib.read_text())
    with pytest.raises(DataError, match="pass --trust-code"):
        tuner.load_model(evil)


def test_a_function_other_than_the_embedded_one_is_refused(exported: Path,
                                                           tmp_path: Path) -> None:
    evil = _craft(exported, tmp_path / "other.pt", "net.py:build", function="other")
    with pytest.raises(DataError, match="pass --trust-code"):
        tuner.load_model(evil)


def test_predict_refuses_in_one_line_and_runs_with_trust(runner: CliRunner, exported: Path,
                                                         tmp_path: Path) -> None:
    import numpy as np

    np.savez(tmp_path / "x.npz", x=np.zeros((2, 4)))
    (tmp_path / "net.py").unlink()
    refused = runner.invoke(cli, ["predict", "--model", str(exported), "--data",
                                  str(tmp_path / "x.npz")])
    assert refused.exit_code == 2 and refused.output.count("\n") == 1
    assert "(net.py, function build, sha256 " in refused.output
    trusted = runner.invoke(cli, ["predict", "--model", str(exported), "--data",
                                  str(tmp_path / "x.npz"), "--trust-code"])
    assert trusted.exit_code == 0, trusted.output
    assert trusted.output.splitlines()[0] == "prediction" and len(trusted.output.splitlines()) == 3


@pytest.mark.parametrize(("tamper", "message"), [
    (lambda p: p["state_dict"].update({"weight": torch.zeros(3, 9)}),
     "its weights do not fit its network (the file was altered, or its builder changed): "
     "size mismatch for weight"),
    (lambda p: p["preprocessing"].update({"classes": [0, 1]}),
     "it names 2 classes for a network of 3 outputs"),
    (lambda p: p["source"].update({"text": NET + "import os\n"}),
     "the builder's source it carries does not match the SHA-256 recorded with it"),
    (lambda p: p.pop("spec"), "it lacks its network's spec, config, weights or preprocessing"),
    (lambda p: p["spec"].update({"n_outputs": "3"}), "its network's spec is malformed"),
])
def test_an_altered_export_is_refused_in_one_line_even_with_trust(
        runner: CliRunner, exported: Path, tmp_path: Path, tamper: Any, message: str) -> None:
    import numpy as np

    payload = torch.load(exported, weights_only=True)
    tamper(payload)
    altered = tmp_path / "altered.pt"
    torch.save(payload, altered)
    np.savez(tmp_path / "x.npz", x=np.zeros((2, 4)))
    for trust in ([], ["--trust-code"]):
        result = runner.invoke(cli, ["predict", "--model", str(altered), "--data",
                                     str(tmp_path / "x.npz"), *trust])
        assert result.exit_code == 2, result.output
        assert message in result.output and result.output.count("\n") == 1


def test_the_refusal_says_when_the_builder_here_has_other_source(exported: Path,
                                                                 tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(NET + "# edited since\n")
    with pytest.raises(DataError, match=r"\(net\.py here has other source\)"):
        tuner.load_model(exported)
