"""How well an annotation's key objects agree with the simulator: named-and-in-view, and missed.

For each ``ok`` record of a frame with simulator truth (:mod:`pipeline.annotate.truth`):

* each named object is **in view** when it matches an entity in view, **not in
  view** when it matches only entities that are out of view, **unknown** when it
  matches no entity of the model (a hallucination, or a word the rule below
  cannot tie to a body);
* each body in view (not scenery) is **missed** when no named object matches it.

Name matching rule (VLM words vs MuJoCo names such as ``pole_1``, ``bthigh``, ``ffoot``):

1. Both sides are split into lower-case words at non-letters and camelCase
   boundaries; digits and stop words (articles, colours, sizes, ``object``,
   ``part``) are dropped; plurals are singularised (``legs`` -> ``leg``); a few
   synonyms are mapped (see :data:`SYNONYMS`: ``ground`` -> ``floor``, ``rod`` ->
   ``pole``, ``trolley`` -> ``cart``, ...).
2. Side words (front/fore, back/rear/hind, left, right) are qualifiers, not
   matching words. A MuJoCo word made of one of the letters b/f/l/r and a limb word
   (:data:`LIMB_WORDS`; ``bthigh``, ``ffoot``) also gives a qualifier (``back``) and
   the limb word (``thigh``). When both sides have qualifiers they must share one.
3. A VLM word matches an entity word when they are equal, or when one contains the
   other and the shorter has at least four letters (``cart`` in ``cartpole``).
   An entity's words come from its name and the names of its geoms.
4. A VLM object that matches no single entity but names the agent as a whole (the
   task's domain, e.g. ``cheetah`` for ``cheetah-run`` or ``HalfCheetah-v5``, or
   ``agent``, ``robot``, ``body``, ``creature``, ``animal``) matches every body of the model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pipeline.annotate.schema import Annotation
from pipeline.annotate.truth import Entity, SceneTruth

STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "and",
        "with",
        "on",
        "in",
        "at",
        "to",
        "its",
        "it",
        "this",
        "that",
        "some",
        "small",
        "large",
        "big",
        "tall",
        "long",
        "short",
        "thin",
        "thick",
        "red",
        "green",
        "blue",
        "yellow",
        "orange",
        "purple",
        "brown",
        "black",
        "white",
        "grey",
        "gray",
        "pink",
        "dark",
        "light",
        "bright",
        "checkered",
        "object",
        "objects",
        "part",
        "parts",
        "thing",
        "item",
        "segment",
        "piece",
    ]
)
SYNONYMS = {
    "ground": "floor",
    "terrain": "floor",
    "plane": "floor",
    "surface": "floor",
    "track": "rail",
    "guide": "rail",
    "rod": "pole",
    "stick": "pole",
    "pendulum": "pole",
    "bar": "pole",
    "mast": "pole",
    "trolley": "cart",
    "carriage": "cart",
    "slider": "cart",
    "block": "cart",
    "trunk": "torso",
    "chassis": "torso",
    "calf": "shin",
    "shank": "shin",
    "paw": "foot",
    "feet": "foot",
}
QUALIFIERS = {
    "front": "front",
    "fore": "front",
    "back": "back",
    "rear": "back",
    "hind": "back",
    "left": "left",
    "right": "right",
}
PREFIX_QUALIFIERS = {"b": "back", "f": "front", "l": "left", "r": "right"}
LIMB_WORDS = frozenset(
    [
        "thigh",
        "shin",
        "foot",
        "leg",
        "arm",
        "hand",
        "hip",
        "knee",
        "ankle",
        "shoulder",
        "elbow",
        "wrist",
        "toe",
        "heel",
        "finger",
        "thumb",
        "wing",
        "fin",
        "paw",
        "upper",
        "lower",
        "forearm",
    ]
)
WHOLE_AGENT_WORDS = frozenset({"agent", "robot", "body", "creature", "animal", "character"})
MIN_SUBSTRING = 4

_SPLIT_RE = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ches", "shes", "xes", "sses")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


@dataclass(frozen=True)
class Words:
    """Matching words and side qualifiers of a name."""

    words: frozenset[str]
    qualifiers: frozenset[str]


def name_words(name: str, *, mujoco_name: bool = False) -> Words:
    """Split ``name`` into matching words and qualifiers (rules 1-2 of the module docstring)."""
    words: set[str] = set()
    qualifiers: set[str] = set()
    for raw in _SPLIT_RE.findall(name):
        word = raw.lower()
        if word in STOP_WORDS:
            continue
        if word in QUALIFIERS:
            qualifiers.add(QUALIFIERS[word])
            continue
        word = SYNONYMS.get(word, _singular(word))
        word = SYNONYMS.get(word, word)
        if mujoco_name and word[0] in PREFIX_QUALIFIERS and word[1:] in LIMB_WORDS:
            qualifiers.add(PREFIX_QUALIFIERS[word[0]])
            words.add(word[1:])
        words.add(word)
    return Words(frozenset(words), frozenset(qualifiers))


def _word_match(a: str, b: str) -> bool:
    if a == b:
        return True
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    return len(short) >= MIN_SUBSTRING and short in long_


def matches(vlm: Words, entity: Words) -> bool:
    """Rule 3 (with rule 2's qualifier check)."""
    if vlm.qualifiers and entity.qualifiers and not (vlm.qualifiers & entity.qualifiers):
        return False
    return any(_word_match(a, b) for a in vlm.words for b in entity.words)


def domain_words(task: str) -> frozenset[str]:
    """Words that name the agent of ``task`` as a whole: its domain and the domain's last camelCase
    word (``cheetah-run`` -> ``cheetah``; ``HalfCheetah-v5`` -> ``halfcheetah``, ``cheetah``) plus
    :data:`WHOLE_AGENT_WORDS`."""
    domain = re.split(r"[-_]v?\d|-", task)[0]
    parts = _SPLIT_RE.findall(domain)
    words = {domain.lower()} | ({parts[-1].lower()} if parts else set())
    return frozenset(words) | WHOLE_AGENT_WORDS


class EntityMatcher:
    """Matches VLM object names to the entities of one model (cached per model)."""

    def __init__(self, entities: Iterable[Entity], task: str) -> None:
        self.entities = tuple(entities)
        self._words = []
        for entity in self.entities:
            parts = [name_words(alias, mujoco_name=True) for alias in entity.aliases]
            self._words.append(
                Words(frozenset().union(*(p.words for p in parts)), frozenset().union(*(p.qualifiers for p in parts)))
            )
        self._agent = Words(domain_words(task), frozenset())
        self._memo: dict[str, list[Entity]] = {}

    def match(self, name: str) -> list[Entity]:
        """The entities ``name`` refers to (rule 4 applies only when no single entity matches)."""
        if name not in self._memo:
            self._memo[name] = self._match(name)
        return self._memo[name]

    def _match(self, name: str) -> list[Entity]:
        vlm = name_words(name)
        found = [e for e, w in zip(self.entities, self._words, strict=True) if matches(vlm, w)]
        if not found and any(_word_match(a, b) for a in vlm.words for b in self._agent.words):
            found = [e for e in self.entities if e.kind == "body"]
        return found


@dataclass
class AccuracyCounts:
    """Running totals over frames; :meth:`to_json` gives the metrics."""

    frames: int = 0
    named: int = 0
    named_in_view: int = 0
    named_not_in_view: int = 0
    named_unknown: int = 0
    bodies_in_view: int = 0
    bodies_missed: int = 0
    _matchers: dict[tuple[str, tuple[Entity, ...]], EntityMatcher] = field(default_factory=dict, repr=False)

    def add(self, annotation: Annotation, scene: SceneTruth) -> None:
        """Count one annotated frame against its truth."""
        key = (scene.task, scene.entities)
        matcher = self._matchers.get(key)
        if matcher is None:
            matcher = self._matchers[key] = EntityMatcher(scene.entities, scene.task)
        visible = {(v.entity.kind, v.entity.index) for v in scene.visible}
        covered: set[tuple[str, int]] = set()
        self.frames += 1
        for obj in annotation.objects:
            refs = {(e.kind, e.index) for e in matcher.match(obj.name)}
            self.named += 1
            if not refs:
                self.named_unknown += 1
            elif refs & visible:
                self.named_in_view += 1
            else:
                self.named_not_in_view += 1
            covered |= refs
        bodies = {ref for ref in visible if ref[0] == "body"}
        self.bodies_in_view += len(bodies)
        self.bodies_missed += len(bodies - covered)

    def to_json(self) -> dict[str, Any]:
        """Counts and rates (``None`` where the denominator is 0)."""
        return {
            "frames_checked": self.frames,
            "named_objects": self.named,
            "named_in_view": self.named_in_view,
            "named_not_in_view": self.named_not_in_view,
            "named_unknown": self.named_unknown,
            "named_in_view_rate": round(self.named_in_view / self.named, 6) if self.named else None,
            "bodies_in_view": self.bodies_in_view,
            "bodies_missed": self.bodies_missed,
            "bodies_missed_rate": round(self.bodies_missed / self.bodies_in_view, 6) if self.bodies_in_view else None,
        }
