"""A tiny, randomly initialised image-text-to-text model built offline.

It is what the ``transformers`` backend runs when ``annotate.model`` is
``random`` (or missing with ``weights.on_missing: random``): the real loading
and generation path (``AutoModelForImageTextToText`` + ``AutoProcessor`` with a
chat template) exercised end to end without any download. Its answers are noise
(almost always recorded as failures); it exists so the offline default and the
tests run the same code as a real VLM.

Architecture: Llava with a 2-layer CLIP vision tower (28x28 input, 14 px
patches) and a 2-layer Llama language model of width 32, over a word-level
vocabulary of the JSON words an annotation uses.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Words of the tokenizer's vocabulary (plus the special tokens below).
VOCAB_WORDS = [
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    '"',
    "null",
    "caption",
    "objects",
    "name",
    "description",
    "box",
    "motion",
    "the",
    "a",
    "an",
    "of",
    "is",
    "on",
    "in",
    "and",
    "to",
    "with",
    "moves",
    "moving",
    "left",
    "right",
    "up",
    "down",
    "still",
    "fast",
    "slow",
    "cart",
    "pole",
    "cheetah",
    "torso",
    "thigh",
    "shin",
    "foot",
    "leg",
    "floor",
    "ground",
    "body",
    "agent",
    "robot",
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "7",
    "8",
    "9",
    "10",
    "20",
    "42",
    "84",
]
SPECIAL_TOKENS = ("<unk>", "<pad>", "<s>", "</s>", "<image>")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image> {% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %} "
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT: {% endif %}"
)
#: Fixed seed: the same random model (and so the same answers) on every run.
SEED = 0


@dataclass(frozen=True)
class LlavaShape:
    """Sizes of a Llava model: a CLIP vision tower over ``image_size`` px square frames (14 px patches) and a Llama
    language model. The defaults are the tiny model's."""

    image_size: int = 28
    vision_width: int = 32
    vision_mlp: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    text_width: int = 32
    text_mlp: int = 64
    text_layers: int = 2
    text_heads: int = 2
    text_kv_heads: int = 2
    max_positions: int = 512


def build_tiny_vlm(seed: int = SEED) -> tuple["object", "object"]:  # noqa: UP037
    """Build ``(model, processor)``: a random Llava model and its processor, on the CPU, in eval mode."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlavaForConditionalGeneration, PreTrainedTokenizerFast

    words = list(SPECIAL_TOKENS) + [w for w in dict.fromkeys(VOCAB_WORDS) if w not in SPECIAL_TOKENS]
    vocab = {w: i for i, w in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    shape = LlavaShape()
    processor = llava_processor(tokenizer, shape.image_size)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(llava_config(tokenizer, shape)).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, processor


def llava_processor(tokenizer: object, image_size: int) -> object:
    """A ``LlavaProcessor`` over ``tokenizer`` (which has an ``<image>`` token) that resizes and centre-crops frames
    to ``image_size`` px and speaks :data:`CHAT_TEMPLATE`."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    crop = {"height": image_size, "width": image_size}
    return LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size=crop, do_center_crop=True),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token="<image>",
        num_additional_image_tokens=1,
    )


def llava_config(tokenizer: object, shape: LlavaShape) -> object:
    """A ``LlavaConfig`` of ``shape`` whose vocabulary and special tokens are ``tokenizer``'s."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=shape.vision_width,
        intermediate_size=shape.vision_mlp,
        num_hidden_layers=shape.vision_layers,
        num_attention_heads=shape.vision_heads,
        image_size=shape.image_size,
        patch_size=14,
        projection_dim=shape.vision_width,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.text_width,
        intermediate_size=shape.text_mlp,
        num_hidden_layers=shape.text_layers,
        num_attention_heads=shape.text_heads,
        num_key_value_heads=shape.text_kv_heads,
        max_position_embeddings=shape.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        pad_token_id=tokenizer.pad_token_id,
    )
