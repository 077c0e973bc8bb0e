"""tests/optuna_source.py: where Optuna's source distribution comes from, and what a test
that needs it does when it cannot be had."""

from __future__ import annotations

from pathlib import Path

import optuna
import optuna_source
import pytest


def _fake_source(path: Path, version: str = optuna.__version__) -> Path:
    (path / "tests").mkdir(parents=True)
    (path / "PKG-INFO").write_text(f"Metadata-Version: 2.1\nName: optuna\nVersion: {version}\n",
                                   encoding="utf-8")
    return path


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(optuna_source.SOURCE_ENV, raising=False)
    monkeypatch.delenv("TUNER_REQUIRE_SERVICES", raising=False)
    return tmp_path / "cache" / "tuner-tests"


def test_a_cached_copy_is_used_without_downloading(cache: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    copy = _fake_source(cache / f"optuna-{optuna.__version__}")
    monkeypatch.setattr(optuna_source, "_download", pytest.fail)
    assert optuna_source.optuna_source_dir() == copy


@pytest.mark.parametrize("required", [False, True])
@pytest.mark.slow
def test_no_download_skips_saying_how_or_fails_where_required(
        cache: Path, monkeypatch: pytest.MonkeyPatch, required: bool) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip finds no distribution at all
    _fake_source(cache / f"optuna-{optuna.__version__}", version="0.0.1")  # another version's
    if required:
        monkeypatch.setenv("TUNER_REQUIRE_SERVICES", "1")
    outcome = pytest.fail.Exception if required else pytest.skip.Exception
    with pytest.raises(outcome) as caught:
        optuna_source.optuna_source_dir()
    message = str(caught.value)
    assert f"optuna=={optuna.__version__} --no-binary :all:" in message
    assert optuna_source.SOURCE_ENV in message
    assert [p.name for p in cache.iterdir()] == [f"optuna-{optuna.__version__}"]  # no leftovers


def test_a_given_copy_must_be_this_versions(cache: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    given = _fake_source(tmp_path / "given")
    monkeypatch.setenv(optuna_source.SOURCE_ENV, str(given))
    assert optuna_source.optuna_source_dir() == given
    (given / "PKG-INFO").write_text("Version: 0.0.1\n", encoding="utf-8")
    with pytest.raises(pytest.skip.Exception, match="not version"):
        optuna_source.optuna_source_dir()
