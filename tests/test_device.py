import pytest
import torch

from book import device, hardware


def test_profile_follows_device_by_default(monkeypatch):
    monkeypatch.delenv("BOOK_PROFILE", raising=False)
    assert device.profile() == ("gpu" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("value", ["cpu", "gpu", "GPU "])
def test_profile_from_environment(monkeypatch, value):
    monkeypatch.setenv("BOOK_PROFILE", value)
    assert device.profile() == value.strip().lower()
    assert device.by_profile("small", "large") == ("small" if value.strip().lower() == "cpu" else "large")


def test_bad_profile_and_device_raise(monkeypatch):
    monkeypatch.setenv("BOOK_PROFILE", "tpu")
    with pytest.raises(ValueError, match="BOOK_PROFILE"):
        device.profile()
    monkeypatch.setenv("BOOK_DEVICE", "mps")
    with pytest.raises(ValueError, match="BOOK_DEVICE"):
        device.device()


def test_forced_cpu(monkeypatch):
    monkeypatch.setenv("BOOK_DEVICE", "cpu")
    assert device.device().type == "cpu"


def test_accelerator_table_has_sources():
    for name in ("H100 SXM", "H200", "A100", "V100", "L4"):
        acc = hardware.accelerator(name)
        assert acc.source and acc.memory_bandwidth > 0 and acc.peak("float16") > acc.peak("float32")
    with pytest.raises(ValueError, match="name"):
        hardware.accelerator("TPU v4")
    with pytest.raises(ValueError, match="dtype"):
        hardware.accelerator("V100").peak("bfloat16")


def test_matmul_intensity_and_roofline():
    # square n x n x n in fp32: 2n^3 / (4 * 3n^2) = n/6
    assert hardware.matmul_intensity(600, 600, 600) == pytest.approx(100)
    assert hardware.roofline(1.0, peak_flops=100.0, bandwidth=10.0) == pytest.approx(10.0)
    assert hardware.roofline(1e3, peak_flops=100.0, bandwidth=10.0) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="m must be a positive"):
        hardware.matmul_intensity(0, 1, 1)


def test_measured_peaks_are_cached(book_cache):
    peaks = hardware.measured_peaks()
    assert peaks.peak("float32") > 1e8 and peaks.memory_bandwidth_bytes_per_s > 1e8
    assert (book_cache / "machine_peaks.json").exists()
    assert hardware.measured_peaks() == peaks  # second call reads the cache
    assert hardware.measured_peak("float32") == peaks.peak("float32")


def test_measure_peaks_rejects_zero_repeats(book_cache):
    with pytest.raises(ValueError, match="repeats"):
        hardware.measure_peaks(repeats=0)
