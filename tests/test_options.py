import math

import pytest
from pydantic import ValidationError

from core.options import LoadOptions, SamplingOptions, describe_validation_error, field_specs


def test_defaults_are_valid():
    assert SamplingOptions().temperature == 0.7
    assert LoadOptions().flash_attn is True
    assert LoadOptions().kv_type == "auto" and LoadOptions().kv_cache_type == "f16"


@pytest.mark.parametrize("field,value", [
    ("temperature", -0.1), ("temperature", 5.01), ("temperature", math.nan), ("temperature", math.inf),
    ("top_p", 0.0), ("top_p", 1.5), ("top_k", -1), ("top_k", 10**6), ("min_p", 2.0),
    ("repeat_penalty", 0.0), ("max_tokens", 0), ("max_tokens", 10**9), ("seed", -5), ("seed", 2**40),
    ("max_tokens", "many"), ("max_tokens", 3.5),
])
def test_sampling_rejects_out_of_range(field, value):
    with pytest.raises(ValidationError):
        SamplingOptions(**{field: value})


@pytest.mark.parametrize("field,value", [
    ("n_ctx", 10_000_000), ("n_ctx", 0), ("n_gpu_layers", -2), ("n_threads", 0), ("n_batch", 8),
    ("kv_type", "q2_k"), ("n_ctx", math.nan),
])
def test_load_rejects_out_of_range(field, value):
    with pytest.raises(ValidationError):
        LoadOptions(**{field: value})


def test_extra_keys_rejected():
    with pytest.raises(ValidationError, match="Extra inputs"):
        SamplingOptions(temprature=0.5)


def test_quantized_kv_needs_flash_attention():
    with pytest.raises(ValidationError, match="flash attention"):
        LoadOptions(kv_type="q8_0", flash_attn=False)
    assert LoadOptions(kv_type="q4_0").kv_type == "q4_0"


def test_stop_strings_capped():
    assert SamplingOptions(stop=("###",)).stop == ("###",)
    with pytest.raises(ValidationError):
        SamplingOptions(stop=tuple(str(i) for i in range(9)))
    with pytest.raises(ValidationError):
        SamplingOptions(stop=("",))
    with pytest.raises(ValidationError):
        SamplingOptions(stop=("x" * 65,))


def test_integral_floats_accepted_for_ints():
    # UI number boxes send floats; 64.0 is fine, 64.5 is not.
    assert SamplingOptions(max_tokens=64.0).max_tokens == 64


def test_validation_message_names_field_and_value():
    with pytest.raises(ValidationError) as err:
        SamplingOptions(temperature=9)
    text = describe_validation_error(err.value, "sampling options")
    assert text.startswith("Invalid sampling options: temperature:")
    assert "9" in text


def test_field_specs_carry_ranges_and_cli_names():
    specs = {s["name"]: s for s in field_specs(LoadOptions)}
    assert specs["n_ctx"]["cli"] == "--ctx"
    assert specs["n_gpu_layers"]["cli"] == "--n-gpu-layers"
    assert specs["n_ctx"]["max"] == 1 << 20
    sampling = {s["name"]: s for s in field_specs(SamplingOptions)}
    assert sampling["top_p"]["exclusive_min"] is True
    assert sampling["temperature"]["min"] == 0.0 and sampling["temperature"]["max"] == 5.0
