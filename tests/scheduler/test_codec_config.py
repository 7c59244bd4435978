"""Intermediates and images as bytes; the settings refuse what would break a guarantee."""

from __future__ import annotations

import io

import numpy as np
import pytest

from planner.core.errors import ConfigError
from scheduler import codec
from scheduler.celery_app import celery_config
from scheduler.config import SchedulerSettings


def test_pack_round_trips_numpy_and_values() -> None:
    values = {"a": np.arange(12, dtype=np.float16).reshape(3, 4), "prompt": "hi", "seed": 3, "ids": [1, 2]}
    out = codec.unpack(codec.pack(values))
    assert out["prompt"] == "hi"
    assert out["seed"] == 3
    assert out["ids"] == [1, 2]
    np.testing.assert_array_equal(out["a"], values["a"])
    with pytest.raises(codec.CodecError):
        codec.unpack(b"pickle\x80")


def test_pack_round_trips_torch_dtypes_numpy_lacks() -> None:
    torch = pytest.importorskip("torch")
    t = torch.randn(2, 3, 5).to(torch.bfloat16)
    out = codec.unpack(codec.pack({"latents": t, "empty": torch.zeros(0)}))
    assert out["latents"].dtype == torch.bfloat16
    assert torch.equal(out["latents"], t)
    assert out["empty"].shape == (0,)


def test_pack_keeps_numpy_beside_torch_and_views_of_one_batch() -> None:
    torch = pytest.importorskip("torch")
    batch = torch.arange(12, dtype=torch.float32).reshape(2, 6)
    values = {"cond": batch[0], "uncond": batch[1], "ids": np.arange(3, dtype=np.int64), "seed": 7}
    out = codec.unpack(codec.pack(values))
    assert torch.equal(out["cond"], batch[0])
    assert torch.equal(out["uncond"], batch[1])
    assert isinstance(out["ids"], np.ndarray)
    np.testing.assert_array_equal(out["ids"], values["ids"])
    assert out["seed"] == 7


def test_png_is_valid() -> None:
    Image = pytest.importorskip("PIL.Image")
    pixels = np.random.default_rng(0).integers(0, 256, size=(16, 24, 3), dtype=np.uint8)
    data = codec.encode_png(pixels)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert codec.decode_png_size(data) == (24, 16)
    with Image.open(io.BytesIO(data)) as img:
        np.testing.assert_array_equal(np.asarray(img), pixels)
    gray = pixels[:, :, :1]
    with Image.open(io.BytesIO(codec.encode_png(gray))) as img:
        np.testing.assert_array_equal(np.asarray(img), gray[:, :, 0])
    with pytest.raises(ValueError, match="uint8"):
        codec.encode_png(pixels.astype(np.float32))
    with pytest.raises(codec.CodecError):
        codec.decode_png_size(b"GIF89a")


def test_png_text_says_what_made_the_image() -> None:
    Image = pytest.importorskip("PIL.Image")
    pixels = np.zeros((4, 4, 3), dtype=np.uint8)
    data = codec.encode_png(pixels, text={"weights": "real", "model": "sdxl", "seed": "7"})
    with Image.open(io.BytesIO(data)) as img:
        assert img.text == {"weights": "real", "model": "sdxl", "seed": "7"}
        np.testing.assert_array_equal(np.asarray(img), pixels)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEDULER_BATCH_WAIT_S", "0.2")
    monkeypatch.setenv("SCHEDULER_DRIFT_TOLERANCE", "0.1")
    s = SchedulerSettings()
    assert s.batch_wait_s == 0.2
    assert s.drift_tolerance == 0.1
    assert s.state_redis_url == s.broker_url


def test_visibility_timeout_must_exceed_the_longest_job() -> None:
    with pytest.raises(ConfigError, match="VISIBILITY_TIMEOUT"):
        SchedulerSettings(visibility_timeout_s=60, job_timeout_s=120)


def test_rabbitmq_broker_needs_a_redis_for_state() -> None:
    with pytest.raises(ConfigError, match="SCHEDULER_REDIS_URL"):
        SchedulerSettings(broker_url="amqp://guest@localhost//")
    s = SchedulerSettings(broker_url="amqp://guest@localhost//", redis_url="redis://127.0.0.1:6379/3")
    conf = celery_config(s)
    assert "broker_transport_options" not in conf  # visibility timeout is a Redis broker notion
    assert conf["task_acks_late"]
    assert conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1


def test_celery_config_carries_the_reliability_settings() -> None:
    s = SchedulerSettings(visibility_timeout_s=30, job_timeout_s=10, key_prefix="t1:")
    conf = celery_config(s)
    assert conf["broker_transport_options"]["visibility_timeout"] == 30
    assert conf["broker_transport_options"]["global_keyprefix"] == "t1:"
    assert conf["result_backend_transport_options"] == {"global_keyprefix": "t1:"}
    assert conf["worker_enable_remote_control"] is False
