import json

import pytest

from alignment.config import ConfigError, KTOConfig


def test_defaults_are_valid_and_documented_values():
    c = KTOConfig()
    assert (c.beta, c.warmup_ratio, c.lora_r, c.lora_alpha, c.lora_dropout) == (0.1, 0.1, 16, 32, 0.05)
    assert c.kl_mode == "estimate" and c.precompute_reference and c.kl_pairing == "next"
    assert c.prompt_budget == c.max_length // 2
    assert c.max_class_weight == 10.0 and c.stratify and not c.allow_single_class


def test_from_dict_round_trips_through_json():
    c = KTOConfig.from_dict({"beta": 0.2, "lora_target_modules": ["q_proj", "v_proj"], "max_steps": 5})
    assert c.lora_target_modules == ("q_proj", "v_proj")
    again = KTOConfig.from_dict(json.loads(json.dumps(c.to_dict())))
    assert again == c


def test_unknown_keys_are_named_with_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        KTOConfig.from_dict({"lr": 1e-4, "betta": 0.1})
    message = str(err.value)
    assert "'betta'" in message and "'lr'" in message and "learning_rate" in message


@pytest.mark.parametrize("overrides, fragment", [
    ({"beta": "high"}, "beta must be of type float"),
    ({"learning_rate": True}, "learning_rate must be of type float"),
    ({"batch_size": 2.5}, "batch_size must be of type int"),
    ({"batch_size": 1}, "KL estimate"),
    ({"beta": 0}, "beta must be > 0"),
    ({"beta": float("nan")}, "finite"),
    ({"kl_mode": "off"}, "kl_mode must be one of 'estimate', 'zero'"),
    ({"kl_pairing": "random"}, "kl_pairing must be one of"),
    ({"desirable_weight": 2.0}, "both desirable_weight and undesirable_weight"),
    ({"warmup_ratio": 1.0}, "warmup_ratio"),
    ({"max_length": 64, "max_prompt_length": 64}, "max_prompt_length"),
    ({"lora_target_modules": []}, "lora_target_modules"),
    ({"dtype": "fp8"}, "dtype must be"),
    ({"device": "tpu"}, "device must be"),
    ({"num_epochs": None}, "num_epochs may not be null"),
    ({"max_class_weight": 0.5}, "max_class_weight must be >= 1, got 0.5: it caps how far the minority class"),
    ({"max_class_weight": 0}, "max_class_weight must be > 0"),
    ({"max_class_weight": None}, "max_class_weight may not be null; the default is 10.0"),
    ({"stratify": "yes"}, "stratify must be of type bool"),
])
def test_bad_values_say_how_to_fix(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        KTOConfig.from_dict(overrides)


def test_config_error_is_a_value_error_and_json_ints_become_floats():
    assert issubclass(ConfigError, ValueError)
    c = KTOConfig.from_dict({"learning_rate": 1, "beta": 1})
    assert isinstance(c.learning_rate, float) and isinstance(c.beta, float)


def test_non_object_overrides_are_rejected():
    with pytest.raises(ConfigError, match="JSON object"):
        KTOConfig.from_dict(["beta", 0.1])
