from __future__ import annotations

import pytest

from controller.units import format_size, parse_duration, parse_size


@pytest.mark.parametrize("text, seconds", [("100ms", 0.1), ("5s", 5.0), ("2m", 120.0), ("1.5s", 1.5), (" 30s ", 30.0)])
def test_durations_take_ms_s_and_m(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["100", 100, "5h", "-1s", "0s", "", None, True, "s"])
def test_durations_without_a_known_unit_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(
    "text, size", [("10M", 10 * 1024**2), ("512K", 512 * 1024), ("1G", 1024**3), ("max", None), (4096, 4096), ("1.5M", 1572864)]
)
def test_sizes_are_powers_of_1024_or_max(text: object, size: int | None) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["10X", "-1M", "0", 0, "", None, True, "M"])
def test_bad_sizes_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


@pytest.mark.parametrize("size", [None, 10 * 1024**2, 512 * 1024, 1000])
def test_format_size_inverts_parse_size(size: int | None) -> None:
    assert parse_size(format_size(size)) == size


@pytest.mark.parametrize(
    "text, size",
    [("10M", 10 * 1024**2), ("1.5M", 1572864), ("512K", 512 * 1024), ("max", None), (4096, 4096)],
)
def test_the_slo_file_and_the_writer_file_accept_the_same_sizes(text: object, size: int | None) -> None:
    from controller.config import RateRange
    from writer.config import FailsafeConfig

    assert RateRange.model_validate({"min": 1, "max": text}).max == size
    assert FailsafeConfig.model_validate({"rbps": text}).rbps == size


@pytest.mark.parametrize("bad", ["200MB", "10MiB", "1T", "0"])
def test_the_slo_file_and_the_writer_file_refuse_the_same_sizes(bad: object) -> None:
    from pydantic import ValidationError

    from controller.config import RateRange
    from writer.config import FailsafeConfig

    with pytest.raises(ValidationError):
        RateRange.model_validate({"min": 1, "max": bad})
    with pytest.raises(ValidationError):
        FailsafeConfig.model_validate({"rbps": bad})


def test_there_is_one_size_parser_and_it_lives_in_the_wire_contract() -> None:
    import writer.api
    import writer.config

    assert parse_size is writer.api.parse_size is writer.config.parse_size
    assert parse_duration is writer.api.parse_duration is writer.config.parse_duration
