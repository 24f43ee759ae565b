"""Text and chat turns out of the free-form inputs/outputs that tracing tools store.

Langfuse and LangSmith keep whatever the application logged: a string, an
OpenAI-style message list, LangChain's serialised messages, or a dict such as
``{"question": ...}`` / ``{"answer": ...}``. These helpers recognise the common
shapes and give up (None) on the rest, so the record is skipped with a reason
rather than trained on a JSON dump.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.importers.base import Skip, prompt_messages

ROLES = {"user": "user", "human": "user", "assistant": "assistant", "ai": "assistant", "bot": "assistant",
         "model": "assistant", "system": "system", "developer": "system"}
# LangChain message classes (serialised as {"lc": 1, "id": [..., "HumanMessage"], "kwargs": {...}}).
LC_ROLES = {"HumanMessage": "user", "AIMessage": "assistant", "SystemMessage": "system",
            "HumanMessageChunk": "user", "AIMessageChunk": "assistant", "SystemMessageChunk": "system"}
PROMPT_KEYS = ("messages", "input", "prompt", "question", "query", "text", "content", "inputs", "user_input")
RESPONSE_KEYS = ("output", "answer", "response", "result", "completion", "text", "content", "outputs",
                 "generation", "message")


def part_text(value: Any, depth: int = 0) -> str | None:
    """Text of a content value: a string, or a list of parts ({"type": "text", "text": ...})."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and depth < 4:
        texts = [t for t in (part_text(p, depth + 1) for p in value) if t]
        return "\n".join(texts) if texts else None
    if isinstance(value, Mapping):
        if value.get("type") not in (None, "text", "input_text", "output_text"):
            return None  # images, tool calls, files: no text to train on
        text = value.get("text")
        if isinstance(text, Mapping):  # OpenAI assistants: {"type": "text", "text": {"value": ...}}
            text = text.get("value")
        return text if isinstance(text, str) else None
    return None


def message_turn(value: Any) -> dict[str, str] | None:
    """{role, content} of one message in any of the common shapes; None if it is not one."""
    if not isinstance(value, Mapping):
        return None
    if value.get("lc") == 1 and isinstance(value.get("id"), list) and value["id"] \
            and isinstance(value.get("kwargs"), Mapping):
        kwargs = value["kwargs"]
        role = LC_ROLES.get(str(value["id"][-1])) or ROLES.get(str(kwargs.get("role", "")).lower())
    else:
        kwargs = value
        role = ROLES.get(str(value.get("role") or value.get("type") or "").lower())
    if "content" not in kwargs:
        return None
    text = part_text(kwargs.get("content"))
    return {"role": role or "other", "content": text or ""}


def _turns(value: Any) -> list[dict[str, str]] | None:
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        value = value[0]  # LangChain batches: [[message, ...]]
    if not isinstance(value, list) or not value:
        return None
    turns = [message_turn(v) for v in value]
    return None if any(t is None for t in turns) else turns  # type: ignore[return-value]


def as_prompt(value: Any, depth: int = 0) -> str | list[dict[str, str]] | None:
    """A prompt as text or as turns (unfiltered; see ``base.prompt_messages``)."""
    if depth > 6:
        return None
    if isinstance(value, str):
        return value if value.strip() else None
    turns = _turns(value)
    if turns is not None:
        return turns
    if isinstance(value, Mapping):
        for key in PROMPT_KEYS:
            if key in value:
                found = as_prompt(value[key], depth + 1)
                if found is not None:
                    return found
        if len(value) == 1:
            return as_prompt(next(iter(value.values())), depth + 1)
    return None


def as_response(value: Any, depth: int = 0) -> str | None:
    """The response text: a string, OpenAI choices, LangChain generations, a message, or a lone field."""
    if depth > 6:
        return None
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, list) and value:
        turns = _turns(value)
        if turns is not None:
            answers = [t["content"] for t in turns if t["role"] == "assistant" and t["content"].strip()]
            return answers[-1] if answers else None
        return as_response(value[0], depth + 1)
    if isinstance(value, Mapping):
        turn = message_turn(value)
        if turn is not None and turn["role"] in ("assistant", "other") and turn["content"].strip():
            return turn["content"]
        for key in ("choices", "generations"):
            if isinstance(value.get(key), list) and value[key]:
                return as_response(value[key], depth + 1)
        for key in RESPONSE_KEYS:
            if key in value:
                found = as_response(value[key], depth + 1)
                if found is not None:
                    return found
        if len(value) == 1:
            return as_response(next(iter(value.values())), depth + 1)
    return None


def io_fields(inputs: Any, outputs: Any, what: str) -> dict[str, Any]:
    """{prompt | messages, response} from a traced call's input and output; Skip when either has no text."""
    prompt = as_prompt(inputs)
    if prompt is None:
        raise Skip(f"no prompt text found in the {what}'s input")
    response = as_response(outputs)
    if response is None:
        raise Skip(f"no response text found in the {what}'s output")
    if isinstance(prompt, str):
        return {"prompt": prompt, "response": response}
    return {"messages": prompt_messages([t for t in prompt if t["role"] != "other"]), "response": response}
