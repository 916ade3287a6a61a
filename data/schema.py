"""The common schemas every loader and hive-shapes view produces, and that the collators read.

- image-text pairs (stage 2): `image` (`Image`), `text` (str)
- images only (stage 1): `image` (`Image`)
- conversations (stage 3): `image` (`Image`, None for text-only samples), `messages` in the transformers chat
  format: `[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "..."}]},
  {"role": "assistant", "content": [{"type": "text", "text": "..."}]}, ...]`. In Arrow every content part has
  both keys, so an image part reads back as `{"type": "image", "text": None}`.
"""

import datasets

ROLES = ("user", "assistant")


def pair_features() -> datasets.Features:
    return datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})


def image_features() -> datasets.Features:
    return datasets.Features({"image": datasets.Image()})


def chat_features() -> datasets.Features:
    string = datasets.Value("string")
    content = datasets.List({"type": string, "text": string})
    messages = datasets.List({"role": string, "content": content})
    return datasets.Features({"image": datasets.Image(), "messages": messages})


def text_message(role: str, text: str, with_image: bool = False) -> dict:
    """One chat message whose content is `text`, preceded by an image part when `with_image`."""
    content = [{"type": "image", "text": None}] if with_image else []
    content.append({"type": "text", "text": text})
    return {"role": role, "content": content}


def message_text(message: dict) -> str:
    """The text of a message: a plain string content, or its text parts joined (image parts carry no text)."""
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content if part.get("type") == "text" and part.get("text") is not None)
