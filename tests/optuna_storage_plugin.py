"""A pytest plugin that runs Optuna's own storage tests on the tuner's storage classes.

Loaded with ``-p optuna_storage_plugin`` into a pytest run over the test files of
Optuna's source distribution (``tests/test_optuna_suite.py`` starts that run):

* Optuna's ``StorageSupplier`` opens its ``"sqlite"`` mode as the tuner's
  :class:`~tuner.storage._fast.TunerRDBStorage` and ``"cached_sqlite"`` as the tuner's
  :class:`~tuner.storage._fast.StudyStorage` over one, both through
  ``TunerStorage(url).open()`` as the tuner opens them (the tuner's tables, engine
  settings and heartbeat defaults included); the test's heartbeat arguments become
  ``TunerStorage``'s.
* ``test_cached_storage.py`` builds its backend with ``TunerStorage(url).open()`` and
  wraps it in ``StudyStorage`` instead of ``_CachedStorage``; ``rdb_tests/test_storage.py``
  (schema creation, upgrades of old databases) constructs ``TunerRDBStorage`` where it
  constructed ``RDBStorage``.
* Tests parametrized over another storage mode (in-memory, journal, gRPC) are
  deselected, and so are those of :data:`NOT_THE_TUNERS`, for the reason given there.

With ``TUNER_OPTUNA_SUITE_REPORT`` set, it writes there (JSON) which ``optuna`` and
``tuner`` were imported and, for each test, its outcome, its storage mode and how many
``TunerRDBStorage`` and ``StudyStorage`` objects it created: the proof that the tuner's
classes, not Optuna's, were under test.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import optuna
import pytest
from optuna.testing import storages as optuna_testing
from optuna.testing.tempfile_pool import NamedTemporaryFilePool

import tuner
from tuner.storage import TunerStorage
from tuner.storage._fast import StudyStorage, TunerRDBStorage

TUNER_MODES = ("sqlite", "cached_sqlite")
REPORT_ENV = "TUNER_OPTUNA_SUITE_REPORT"

# Tests that check something the tuner does differently on purpose.
NOT_THE_TUNERS = {
    "test_invalid_heartbeat_interval_and_grace_period": (
        "TunerStorage.open() reports a refused argument as tuner.errors.StorageError, not "
        "ValueError; the check itself is RDBStorage.__init__'s, which the tuner does not "
        "override"),
    "test_init_db_module_import_error": (
        "fails on Optuna's own RDBStorage too with SQLAlchemy 2.1, whose default "
        "PostgreSQL driver is psycopg (installed), not the psycopg2 the test hides"),
}

_created: Counter[str] = Counter()  # by class name, during the current test
_results: dict[str, dict[str, Any]] = {}


def _counting(cls: type) -> None:
    """Count every object of ``cls`` constructed (in :data:`_created`)."""
    init = cls.__init__

    def counted(self: Any, *args: Any, **kwargs: Any) -> None:
        _created[cls.__name__] += 1
        init(self, *args, **kwargs)

    cls.__init__ = counted  # type: ignore[misc]


def open_tuner_storage(url: str, *, cached: bool, heartbeat_interval: int | None = None,
                       grace_period: int | None = None,
                       heartbeat_stale_trial_callback: Callable[..., None] | None = None,
                       ) -> TunerRDBStorage | StudyStorage:
    """``url`` opened as the tuner opens a study database: ``.studies`` if ``cached``,
    else ``.optuna``. Heartbeats are on when the test asks for them (the tuner's grace
    period and stale-trial callback unless it gives its own), off otherwise."""
    heartbeat = heartbeat_interval is not None or grace_period is not None
    options: dict[str, Any] = {"heartbeat": heartbeat}
    if heartbeat_interval is not None:
        options["heartbeat_interval"] = heartbeat_interval
    if grace_period is not None:
        options["grace_period"] = grace_period
    storage = TunerStorage(url, **options).open()
    if heartbeat_stale_trial_callback is not None:
        storage.optuna.heartbeat_stale_trial_callback = heartbeat_stale_trial_callback
    opened = storage.studies if cached else storage.optuna
    assert type(opened) is (StudyStorage if cached else TunerRDBStorage)
    assert type(storage.optuna) is TunerRDBStorage
    return opened


_optuna_enter = optuna_testing.StorageSupplier.__enter__


def _supplier_enter(self: optuna_testing.StorageSupplier) -> Any:
    if self.storage_specifier not in TUNER_MODES:
        return _optuna_enter(self)
    self.tempfile = NamedTemporaryFilePool().tempfile()
    self.storage = open_tuner_storage(f"sqlite:///{self.tempfile.name}",
                                      cached=self.storage_specifier == "cached_sqlite",
                                      **self.extra_args)
    return self.storage


def _tuner_rdb_storage(url: str) -> TunerRDBStorage:
    """What ``test_cached_storage.py`` gets for ``RDBStorage(url)``."""
    storage = open_tuner_storage(url, cached=False)
    assert isinstance(storage, TunerRDBStorage)
    return storage


def pytest_configure(config: pytest.Config) -> None:
    _counting(TunerRDBStorage)
    _counting(StudyStorage)
    optuna_testing.StorageSupplier.__enter__ = _supplier_enter  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _tuner_classes(request: pytest.FixtureRequest,
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The tuner's classes in the test modules that name Optuna's directly."""
    module = request.module
    if module.__name__.endswith("test_cached_storage"):
        monkeypatch.setattr(module, "RDBStorage", _tuner_rdb_storage)
        monkeypatch.setattr(module, "_CachedStorage", StudyStorage)
    elif module.__name__.endswith("rdb_tests.test_storage"):
        monkeypatch.setattr(module, "RDBStorage", TunerRDBStorage)
    yield


def _mode(item: pytest.Item) -> str | None:
    """The storage mode a test is parametrized with, if any."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    for name in ("storage_mode", "storage"):
        if isinstance(params.get(name), str):
            return params[name]
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept, dropped = [], []
    for item in items:
        mode = _mode(item)
        item.user_properties.append(("storage_mode", mode))
        other_mode = mode is not None and mode not in TUNER_MODES
        name = getattr(item, "originalname", item.name)
        (dropped if other_mode or name in NOT_THE_TUNERS else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = kept


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _created.clear()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    try:
        return (yield)
    finally:  # before the teardown's report, which carries it (to xdist's controller too)
        item.user_properties.append(("created", dict(_created)))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    result = _results.setdefault(report.nodeid, {"outcome": None})
    result.update(report.user_properties)
    if report.failed:
        result["outcome"] = "failed"
    elif report.skipped and result["outcome"] is None:
        result["outcome"] = "skipped"
    elif report.when == "call" and report.passed and result["outcome"] is None:
        result["outcome"] = "passed"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get(REPORT_ENV)
    if path and not hasattr(session.config, "workerinput"):  # not in an xdist worker
        with open(path, "w", encoding="utf-8") as out:
            json.dump({"optuna": optuna.__file__, "tuner": tuner.__file__,
                       "tests": _results}, out, indent=1)
