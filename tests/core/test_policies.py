"""Training policies: validation, one live policy per adapter, soft delete."""

from __future__ import annotations

import pytest

from core.base_models import register_base_model
from core.db import session_scope
from core.errors import Conflict, InvalidInput, NotFound
from core.policies import create_policy, delete_policy, get_policy, list_policies
from tests.artifacts import make_model_dir


@pytest.fixture
def base(engine, settings, tmp_path):
    with session_scope(engine) as s:
        return register_base_model(s, settings=settings, name="base", source=str(make_model_dir(tmp_path / "m")))


def test_create_get_list_delete(engine, base):
    with session_scope(engine) as s:
        p = create_policy(s, adapter_name="chat", base_model_name="base", min_new_feedback=50,
                          min_interval_minutes=30, config={"beta": 0.2}, snapshot_options={"aggregation": "latest"})
    with session_scope(engine) as s:
        got = get_policy(s, policy_id=p.id)
        assert (got.adapter_name, got.base_model_id, got.min_new_feedback, got.min_interval_minutes, got.config) == (
            "chat", base.id, 50, 30, {"beta": 0.2})
        assert got.snapshot_options == {"aggregation": "latest", "one_y_per_x": False}
        assert got.enabled and got.deleted_at is None
        assert [x.id for x in list_policies(s)] == [p.id]
    with session_scope(engine) as s:
        delete_policy(s, policy_id=p.id)
    with session_scope(engine) as s:
        assert list_policies(s) == []
        for fn in (get_policy, delete_policy):
            with pytest.raises(NotFound):
                fn(s, policy_id=p.id)


def test_one_live_policy_per_adapter(engine, base):
    with session_scope(engine) as s:
        first = create_policy(s, adapter_name="chat", base_model_name="base")
    with session_scope(engine) as s, pytest.raises(Conflict, match="already has a policy"):
        create_policy(s, adapter_name="chat", base_model_name="base")
    with session_scope(engine) as s:
        delete_policy(s, policy_id=first.id)
    with session_scope(engine) as s:  # a deleted policy frees the name
        second = create_policy(s, adapter_name="chat", base_model_name="base")
    with session_scope(engine) as s:
        assert [p.id for p in list_policies(s)] == [second.id]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base_model_name": "missing"}, "not registered"),
        ({"adapter_name": "Has Spaces"}, "invalid adapter name"),
        ({"min_new_feedback": 0}, "min_new_feedback must be an integer >= 1"),
        ({"min_interval_minutes": True}, "min_interval_minutes must be an integer >= 1"),
        ({"config": ["beta", 0.1]}, "config must be a JSON object"),
        ({"snapshot_options": {"aggregation": "mean"}}, "aggregation"),
    ],
)
def test_invalid_policies_are_refused(engine, base, kwargs, message):
    args = {"adapter_name": "chat", "base_model_name": "base", **kwargs}
    with session_scope(engine) as s, pytest.raises(InvalidInput, match=message):
        create_policy(s, **args)
    with session_scope(engine) as s:
        assert list_policies(s) == []
