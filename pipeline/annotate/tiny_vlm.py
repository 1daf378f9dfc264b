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


def build_tiny_vlm(seed: int = SEED) -> tuple["object", "object"]:  # noqa: UP037
    """Build ``(model, processor)``: a random Llava model and its processor, on the CPU, in eval mode."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    words = list(SPECIAL_TOKENS) + [w for w in dict.fromkeys(VOCAB_WORDS) if w not in SPECIAL_TOKENS]
    vocab = {w: i for i, w in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}, do_center_crop=True
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
            projection_dim=32,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, processor
