"""Images sent with a message: checked on the way in, kept as image blocks of the user's message, and shown as
a short placeholder wherever a model reads a session.

A message takes at most `MAX_IMAGES` images of at most `MAX_IMAGE_BYTES` each (decoded): Anthropic's limit for
one image, and four of them fit the server's default request limit (`max_request_bytes`) with base64's third on
top. Each one's bytes must be the type it is declared as, so an agent's model never
gets a picture it cannot read. The conversation keeps the data (the agent's model sees it again on later turns,
and REST gives it back in a session's messages); get_session and the transcript, which models read, show
`[image image/png, 48213 bytes]` instead of megabytes of base64.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from .errors import InvalidInput, PayloadTooLarge
from .models import ImageBlock, Message, TextBlock

MAX_IMAGES = 4
MAX_IMAGE_BYTES = 5_000_000
MediaType = Literal["image/png", "image/jpeg", "image/gif", "image/webp"]
NAMES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "image/webp": "WebP"}


# One image as a caller sends it. No docstring: it would be the schema's description, read by every model.
class ImageInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = Field(description="the file, base64")
    media_type: MediaType


Images = Annotated[
    list[ImageInput] | None,
    Field(description=f"Up to {MAX_IMAGES} images of {MAX_IMAGE_BYTES // 10**6} MB, for llm, claude-code, codex, opencode."),
]
"""send_message's `images` (the MCP tool's and the REST body's)."""


def sniffed(data: bytes) -> str | None:
    """The media type the bytes' own header says, or None if they are none of the four."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def decoded_size(data: str) -> int:
    """The bytes that base64 `data` (checked, no whitespace) decodes to."""
    return len(data) * 3 // 4 - data[-2:].count("=")


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def checked(images: Sequence[ImageInput]) -> list[ImageBlock]:
    """The images as the conversation keeps them. Raises InvalidInput or PayloadTooLarge naming the image, the
    problem and what to do; nothing is kept then."""
    if len(images) > MAX_IMAGES:  # a bound on the count, not the size: the request is wrong, not too large
        raise InvalidInput(
            f"The message has {len(images)} images; a message takes at most {MAX_IMAGES}, so nothing was sent. Send "
            f"{MAX_IMAGES} with this text and the others in a following message, or combine them into one image."
        )
    blocks = []
    for n, image in enumerate(images, 1):
        data = "".join(image.data.split())  # base64 wrapped in lines is still base64
        if len(data) * 3 // 4 > MAX_IMAGE_BYTES + 2:
            raise PayloadTooLarge(
                f"Image {n} is about {_mb(len(data) * 3 // 4)} decoded, over the limit of {_mb(MAX_IMAGE_BYTES)} an image. "
                "Scale it down or compress it (e.g. as JPEG), then send the message again."
            )
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as e:
            raise InvalidInput(
                f"Image {n}'s data is not valid base64 ({e}). Send the file's bytes base64-encoded (standard "
                "alphabet, with padding, no 'data:' prefix)."
            ) from None
        if not raw:
            raise InvalidInput(f"Image {n}'s data is empty. Send the image file's bytes, base64-encoded.")
        if len(raw) > MAX_IMAGE_BYTES:
            raise PayloadTooLarge(
                f"Image {n} is {_mb(len(raw))}, over the limit of {_mb(MAX_IMAGE_BYTES)} an image. "
                "Scale it down or compress it (e.g. as JPEG), then send the message again."
            )
        found = sniffed(raw)
        if found is None:
            raise InvalidInput(
                f"Image {n} is declared {image.media_type}, but its bytes are not a PNG, JPEG, GIF or WebP image. "
                "Send one of those (convert other formats first)."
            )
        if found != image.media_type:
            raise InvalidInput(
                f"Image {n} is declared {image.media_type}, but its bytes are a {NAMES[found]} image: "
                f"set its media_type to {found}."
            )
        blocks.append(ImageBlock(media_type=image.media_type, data=data))
    return blocks


def placeholder(block: ImageBlock) -> str:
    return f"[image {block.media_type}, {decoded_size(block.data)} bytes]"


def without_data(messages: list[Message]) -> list[Message]:
    """The messages as a model reads them: each image a text block saying its type and size."""
    shown = []
    for m in messages:
        if any(isinstance(b, ImageBlock) for b in m.content):
            content = [TextBlock(text=placeholder(b)) if isinstance(b, ImageBlock) else b for b in m.content]
            m = m.model_copy(update={"content": content})
        shown.append(m)
    return shown
