"""Device assignment for workers, tested without a GPU."""

from __future__ import annotations

import pytest

from tuner.errors import UsageError
from tuner.run.placement import assign_devices


def test_cpu_places_every_worker_on_cpu() -> None:
    assert assign_devices(3, "cpu", cuda_count=2) == ["cpu", "cpu", "cpu"]


def test_auto_without_gpu_is_cpu() -> None:
    assert assign_devices(2, "auto", cuda_count=0) == ["cpu", "cpu"]


def test_auto_round_robins_over_visible_gpus() -> None:
    assert assign_devices(4, "auto", cuda_count=4) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]


def test_devices_list_restricts_and_orders_gpus() -> None:
    assert assign_devices(2, "cuda", gpus=[3, 1], cuda_count=4) == ["cuda:3", "cuda:1"]


def test_workers_per_gpu_allows_sharing() -> None:
    got = assign_devices(4, "auto", workers_per_gpu=2, cuda_count=2)
    assert got == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert assign_devices(3, "cuda", workers_per_gpu=3, cuda_count=1) == ["cuda:0"] * 3


def test_more_workers_than_gpu_slots_is_an_error() -> None:
    with pytest.raises(UsageError, match="--workers-per-gpu"):
        assign_devices(3, "auto", cuda_count=2)


def test_explicit_cuda_index_places_all_workers_there() -> None:
    assert assign_devices(2, "cuda:1", cuda_count=2) == ["cuda:1", "cuda:1"]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"gpus": [5], "cuda_count": 2}, "GPU 5 does not exist"),
    ({"device": "cuda", "cuda_count": 0}, "CUDA is not available"),
    ({"device": "cpu", "gpus": [0], "cuda_count": 1}, "no CUDA device is in use"),
    ({"device": "tpu", "cuda_count": 1}, "expected auto, cpu, cuda"),
])
def test_bad_requests_name_the_problem(kwargs: dict[str, object], match: str) -> None:
    device = kwargs.pop("device", "cuda")
    with pytest.raises(UsageError, match=match):
        assign_devices(1, device, **kwargs)  # type: ignore[arg-type]


def test_more_workers_than_the_cores_can_run_are_refused(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import pytest

    from tuner.errors import UsageError
    from tuner.run import placement

    monkeypatch.setattr(placement.os, "cpu_count", lambda: 2)
    assert assign_devices(8, "cpu") == ["cpu"] * 8  # 4 per core
    with pytest.raises(UsageError) as caught:
        assign_devices(100_000, "cpu")
    assert str(caught.value).startswith(
        "--workers 100000: at most 4 worker processes per CPU core, and this machine has 2")
    assert "use at most 8" in str(caught.value)


@pytest.mark.slow
def test_workers_the_database_cannot_serve_are_refused(pg_url: str) -> None:  # type: ignore[no-untyped-def]
    import pytest
    import sqlalchemy

    from tuner.errors import UsageError
    from tuner.storage import TunerStorage

    storage = TunerStorage(pg_url).open()
    with storage.session() as conn:
        limit = int(conn.execute(sqlalchemy.text("SHOW max_connections")).scalar_one())
    storage.check_connections(1)  # one worker is always served
    with pytest.raises(UsageError) as caught:
        storage.check_connections(limit)
    assert f"would need up to {limit * 3} connections" in str(caught.value)
    assert f"which allows {limit}" in str(caught.value)
    storage.engine.dispose()


def test_workers_100000_is_one_line_and_touches_nothing(runner, tiny_path, storage_url,  # type: ignore[no-untyped-def]
                                                        db_path) -> None:
    from tuner.cli import cli

    result = runner.invoke(cli, ["start", "--space", str(tiny_path), "--storage", storage_url,
                                 "--workers", "100000", "--quiet"])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1
    assert "--workers 100000: at most 4 worker processes per CPU core" in result.output
    assert not db_path.exists()
