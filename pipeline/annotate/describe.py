"""The simulator annotator's words: what a person would read from a frame, per domain, from the simulator's truth.

A vision-language model asked about a cart-pole frame says "the pole is tilted a little to the
right and swinging fast", not "pole_1 at (0.12, 0.00, 1.48) m". This module turns a frame's
:class:`~pipeline.annotate.truth.SceneTruth` (and, with ``annotate.physics``, the restored
:class:`~pipeline.annotate.truth.PhysicsState`: contacts, centre-of-mass velocities) into such
words, coarsely quantised by the documented thresholds below, so that the caption's CLIP
embedding carries the state. Deterministic: a pure function of the frame's truth.

One function per domain, in :data:`DESCRIBERS` (a dm_control domain name -> the bodies it needs
and the function); any other task, or a model without those bodies, gets :func:`describe_generic`
(root body motion and what touches the scenery). Each returns :class:`Words`: the caption, the
motion sentence and state words for some key objects (the others get :func:`object_words`).

=================  ===========================================================================
domain             caption says
=================  ===========================================================================
cartpole           pole angle (upright / tilted a little or a lot left or right / horizontal /
                   pointing down left or right / hanging down a little left or right / hanging
                   straight down), how fast and which way it
                   swings, where the cart is in the frame (middle / left or right of the middle /
                   far left or right) and how it moves
cheetah            torso pitch (level / nose a little up or down / rearing up / diving nose down /
                   flipped over), forward speed (backwards / still / slowly / running / fast),
                   which feet touch the ground, other parts on the ground
reacher            where the finger is relative to the target in the image (on it / near / far;
                   above, below, left, right), where the arm points, stretched out / bent / folded,
                   finger motion (towards or away from the target)
ball_in_cup        ball in / above / below / beside the cup, ball and cup motion
walker             upright / leaning forward or back / bent far over / upside down / lying on the
                   ground (head to the left or right), forward speed, which feet touch the ground
finger             where the spinner's tip points, how fast and which way it spins, whether the
                   finger touches it, where the finger points
(anything else)    the root body's motion and spin, which bodies touch the scenery
=================  ===========================================================================

Directions are the image's (left/right, up/down as seen in the frame, from the camera pose);
"clockwise" is as seen in the frame. Contacts need the restored physics (``annotate.physics:
true``); without it the words say nothing about contacts, and velocities are the episode's
finite differences.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pipeline.annotate.accuracy import LIMB_WORDS, PREFIX_QUALIFIERS
from pipeline.annotate.truth import WORLD_BODY, Entity, PhysicsState, SceneTruth

# -- thresholds, all in SI units (m, m/s, rad/s) or degrees ------------------------------------------
#: Speeds below this (m/s) are "still": under a twentieth of a typical 1 m body length per second.
STILL_SPEED = 0.05
#: Speeds from this (m/s) on are "fast": half a body length per second, plainly visible motion.
FAST_SPEED = 0.5
#: Angular speeds below this (rad/s) are not mentioned (under ~17 degrees per second).
STILL_SPIN = 0.3
#: Angular speeds from this (rad/s) on are "fast": a 1 m pole hanging and swinging +-30 degrees peaks
#: near 2 rad/s (natural frequency sqrt(3 g / 2 L) = 3.8 rad/s), so "fast" is more than a gentle swing.
FAST_SPIN = 2.0
#: A camera-frame velocity component is named when it is at least this share of the speed.
DIRECTION_SHARE = 0.35

#: Pole angle from upright in the image (degrees, either side), symmetric about horizontal: upright up to
#: the first, tilted a little up to the second, a lot up to the third, horizontal up to the fourth,
#: pointing down at a slant up to the fifth, hanging down a little to one side up to the sixth, hanging
#: straight down beyond. +-10 degrees of vertical looks vertical to a viewer, +-20 of horizontal looks horizontal.
POLE_BANDS_DEG = (10.0, 35.0, 70.0, 110.0, 145.0, 170.0)
#: Where a body is across the frame, as a share of the image width from its middle: "in the middle"
#: below the first, "left/right of the middle" below the second, "far to the left/right" beyond.
#: A tenth of the width is about one cart width at the default cart-pole framing.
MIDDLE_BAND = 0.1
SIDE_BAND = 0.3

#: Torso pitch (degrees, nose up positive) of a side-view runner (cheetah): "level" up to the first
#: (a 5 degree tilt of the 1 m torso drops one end by ~9 cm, a few pixels at 84 px: visible),
#: "a little" up to the second, "high up / steeply down" up to 90, "flipped over" beyond.
PITCH_BANDS_DEG = (5.0, 25.0)
#: Angular speed (rad/s) from which a torso is said to be pitching (rocking) nose up or down.
PITCH_RATE = 1.0
#: Forward speed (m/s) of the cheetah: still below the first (a fifth of a body length per second, barely
#: visible against the ground grid of a tracking camera), slowly below the second (a walk), running below
#: the third (half cheetah-run's 10 m/s target), fast beyond; at or below minus the first: backwards.
RUN_SPEEDS = (0.2, 2.0, 5.0)
#: Forward speed (m/s) of the walker: still below the first, walking slowly below walker-walk's 1 m/s
#: target, walking below the second, running beyond (walker-run's target is 8 m/s).
WALK_SPEEDS = (0.2, 1.0, 3.0)
#: Walker torso tilt from vertical (degrees): upright up to the first, leaning up to the second, bent
#: far over beyond; a torso centre lower than :data:`FALLEN_HEIGHT` (m; it stands at ~1.3 m, a kneel
#: is ~0.8 m) is fallen whatever its tilt.
LEAN_BANDS_DEG = (15.0, 45.0)
FALLEN_HEIGHT = 0.6
#: Reacher: the finger is "near" the target when their centres are closer than this share of the
#: image width (about 0.09 m at the default top-down framing, twice easy's target radius), and "on"
#: it when closer than the target's radius in the image.
NEAR_SHARE = 0.15
#: Reacher arm: "stretched out" when the elbow bends less than the first (degrees), "bent" less than the
#: second, "folded" beyond.
BEND_BANDS_DEG = (30.0, 100.0)
#: Ball in cup, in the cup's frame (m; ball_in_cup.xml): the cup's inner half width and its bottom below the
#: rim (the cup body's origin is the rim's centre).
CUP_HALF_WIDTH = 0.05
CUP_DEPTH = 0.1
#: Finger spin (rad/s): "fast" from :data:`FAST_SPIN`, "very fast" from finger-spin's target of 15 rad/s.
VERY_FAST_SPIN = 15.0

COMPASS = (
    "up",
    "up and to the right",
    "right",
    "down and to the right",
    "down",
    "down and to the left",
    "left",
    "up and to the left",
)


def vector_norm(v: np.ndarray) -> float:
    """Euclidean norm of a float64 vector, the same float as ``np.linalg.norm(v)`` (``sqrt(v . v)``)
    at a quarter of its cost."""
    return math.sqrt(v.dot(v))


def direction_words(velocity_cam: np.ndarray) -> str:
    """Words for a camera-frame velocity (x right, y down, z forward) as seen in the image: e.g. 'up and to the left'
    from its in-image part; 'towards/away from the camera' when that part is under :data:`STILL_SPEED` but the
    motion is not; 'still' below :data:`STILL_SPEED`."""
    x, y, z = velocity_cam.tolist()
    if math.sqrt(x * x + y * y + z * z) < STILL_SPEED:
        return "still"
    planar = math.hypot(x, y)
    if planar < STILL_SPEED:
        return "away from the camera" if z > 0 else "towards the camera"
    return _axis_words(x, y, planar, ("to the right", "to the left"), ("down", "up"))


def _axis_words(x: float, y: float, norm: float, x_words: tuple[str, str], y_words: tuple[str, str]) -> str:
    """The words of each image axis (x right, y down) carrying at least :data:`DIRECTION_SHARE` of
    ``norm``, vertical first, joined with 'and'; each pair is (positive, negative)."""
    words = []
    if abs(y) >= DIRECTION_SHARE * norm:
        words.append(y_words[0] if y > 0 else y_words[1])
    if abs(x) >= DIRECTION_SHARE * norm:
        words.append(x_words[0] if x > 0 else x_words[1])
    return " and ".join(words)


def speed_word(speed: float) -> str:
    """'still', 'slowly' or 'fast' for a speed in m/s (:data:`STILL_SPEED`, :data:`FAST_SPEED`)."""
    return "still" if speed < STILL_SPEED else "slowly" if speed < FAST_SPEED else "fast"


def spin_words(rate: float, *, verb: str = "turning") -> str:
    """Words for an on-screen angular velocity (rad/s, clockwise positive): '' below :data:`STILL_SPIN`,
    else e.g. 'turning fast clockwise'."""
    if abs(rate) < STILL_SPIN:
        return ""
    pace = "fast" if abs(rate) >= FAST_SPIN else "slowly"
    return f"{verb} {pace} {'clockwise' if rate > 0 else 'counter-clockwise'}"


def compass_words(angle_deg: float) -> str:
    """One of :data:`COMPASS` for an on-screen direction (degrees clockwise from image up)."""
    return COMPASS[int(math.floor((angle_deg % 360.0) / 45.0 + 0.5)) % 8]


def part_name(name: str) -> str:
    """A MuJoCo body name in words: ``bthigh`` -> 'back thigh', ``right_foot`` -> 'right foot',
    ``pole_1`` -> 'pole 1'."""
    word = name.replace("_", " ").strip()
    if len(word) > 1 and word[0] in PREFIX_QUALIFIERS and word[1:] in LIMB_WORDS:
        return f"{PREFIX_QUALIFIERS[word[0]]} {word[1:]}"
    return word


def quat_matrix(q: np.ndarray) -> np.ndarray:
    """(3, 3) rotation matrix (world from body) of a (w, x, y, z) quaternion."""
    w, x, y, z = (float(v) for v in q / np.linalg.norm(q))
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


@dataclass(frozen=True)
class Words:
    """What a domain describer says about a frame.

    Attributes:
        caption: one or two sentences with the frame's key state.
        motion: one sentence on how things move.
        objects: entity name -> state words for its key-object description (entities not listed
            get :func:`object_words`).
    """

    caption: str
    motion: str
    objects: dict[str, str] = field(default_factory=dict)


class Frame:
    """The facts of one frame a describer reads: body poses and velocities, the camera, contacts.

    Positions are body frame origins (the episode's ``body_pos``); velocities are the centres of
    mass' with physics, the origins' finite differences without; angular velocities likewise.
    """

    def __init__(self, scene: SceneTruth, physics: PhysicsState | None) -> None:
        self.scene = scene
        self.physics = physics
        self.task = scene.task
        self.bodies = {e.name: e.index for e in scene.entities if e.kind == "body"}
        self.visible = {v.entity.name: v for v in scene.visible}
        self.height, self.width = scene.image_size
        self._rotation = scene.world_from_camera[:3, :3]
        self._camera = scene.world_from_camera[:3, 3]
        self.scenery = frozenset(e.name for e in scene.entities if e.kind == "scenery") | {"the world"}
        self.touching = self._contacts() if physics is not None else None

    def _contacts(self) -> dict[str, set[str]]:
        """Entity name -> names of the entities it touches (MuJoCo's contact list, by geom)."""
        assert self.physics is not None
        by_body = {e.index: e.name for e in self.scene.entities if e.kind == "body"}
        scenery = {e.index: e.name for e in self.scene.entities if e.kind == "scenery"}
        entity_of_geom = {
            g: by_body[b] if b != WORLD_BODY and b in by_body else scenery.get(g, "the world")
            for g, b in enumerate(np.asarray(self.scene.geom_body).tolist())
        }
        touching: dict[str, set[str]] = {}
        for g1, g2 in self.physics.contacts:
            a, b = entity_of_geom.get(g1, "?"), entity_of_geom.get(g2, "?")
            if a != b:
                touching.setdefault(a, set()).add(b)
                touching.setdefault(b, set()).add(a)
        return touching

    def origin(self, name: str) -> np.ndarray:
        """(3,) world position of the body's frame origin (m)."""
        return self.scene.body_pos[self.bodies[name]]

    def velocity(self, name: str) -> np.ndarray:
        """(3,) world linear velocity (m/s)."""
        b = self.bodies[name]
        return self.physics.lin_vel[b] if self.physics is not None else self.scene.body_vel[b]

    def angular_velocity(self, name: str) -> np.ndarray:
        """(3,) world angular velocity (rad/s)."""
        b = self.bodies[name]
        return self.physics.ang_vel[b] if self.physics is not None else self.scene.body_ang_vel[b]

    def axis(self, name: str, k: int) -> np.ndarray:
        """(3,) world direction of the body's local axis ``k`` (0 x, 1 y, 2 z)."""
        return quat_matrix(self.scene.body_quat[self.bodies[name]])[:, k]

    def to_camera(self, vector: np.ndarray) -> np.ndarray:
        """A world direction or velocity in camera axes (x right, y down, z forward)."""
        return self._rotation.T @ vector

    def pixel(self, point: np.ndarray) -> tuple[float, float] | None:
        """(u, v) pixel of a world point, or None behind the camera."""
        p = self._rotation.T @ (point - self._camera)
        if p[2] <= 1e-9:
            return None
        uvw = self.scene.camera_intrinsics @ p
        return float(uvw[0] / uvw[2]), float(uvw[1] / uvw[2])

    def screen_angle(self, direction: np.ndarray) -> float | None:
        """On-screen angle (degrees, clockwise from image up, in (-180, 180]) of a world direction;
        None along the view."""
        x, y, _ = self.to_camera(direction).tolist()
        if math.hypot(x, y) < 1e-6:
            return None
        return math.degrees(math.atan2(x, -y))

    def screen_spin(self, name: str) -> float:
        """The body's angular velocity about the optical axis (rad/s), clockwise as seen in the frame positive."""
        # z is the optical axis pointing into the image, x right, y down: +z turns x towards y, clockwise on screen.
        return float(self.to_camera(self.angular_velocity(name))[2])

    def moving(self, name: str) -> str:
        """'still' or e.g. 'moving fast up and to the left' for the body's velocity."""
        velocity = self.velocity(name)
        heading = direction_words(self.to_camera(velocity))
        return "still" if heading == "still" else f"moving {speed_word(vector_norm(velocity))} {heading}"

    def grounded(self, name: str) -> bool | None:
        """Whether the body touches the scenery (floor, ground, walls); None without physics."""
        if self.touching is None:
            return None
        return bool(self.touching.get(name, set()) & self.scenery)

    def ground_name(self) -> str:
        """The floor's name in words ('ground', 'floor')."""
        names = sorted(n for n in self.scenery if n in ("floor", "ground"))
        return names[0] if names else "ground"

    def across(self, name: str) -> str:
        """Where a body is across the frame: 'in the middle', 'left of the middle', 'far to the right',
        'out of view on the left' (fewer pixels in view than ``annotate.min_visible_pixels``)."""
        uv = self.pixel(self.origin(name))
        if uv is None:
            return "out of view"
        offset = (uv[0] + 0.5) / self.width - 0.5
        side = "right" if offset > 0 else "left"
        if name not in self.visible:
            return f"out of view on the {side}"
        if abs(offset) < MIDDLE_BAND:
            return "in the middle"
        if abs(offset) < SIDE_BAND:
            return f"{side} of the middle"
        return f"far to the {side}"


def object_words(frame: Frame, entity: Entity) -> str:
    """The generic state words of a key object: a body's motion, fast spin and contacts; what touches the scenery
    ('' for untouched scenery: "static" would say nothing and cost CLIP tokens)."""
    touched = sorted(frame.touching.get(entity.name, set())) if frame.touching is not None else []
    if entity.kind != "body":
        return f"touched by {', '.join(part_name(t) for t in touched)}" if touched else ""
    words = frame.moving(entity.name)
    rate = frame.screen_spin(entity.name)
    if abs(rate) >= FAST_SPIN:  # slow turns are left out: the key-object text must stay short (CLIP reads 77 tokens)
        words += f", {spin_words(rate)}"
    if touched:
        words += f"; touching {', '.join(part_name(t) for t in touched)}"
    return words


def limb_words(frame: Frame, name: str) -> str:
    """Short words for a limb of a many-limbed body (the key-object text of a cheetah or walker must fit CLIP's
    77 tokens): 'swinging fast clockwise' from :data:`FAST_SPIN`, else 'still' / 'moving slowly' / 'moving fast'."""
    rate = frame.screen_spin(name)
    if abs(rate) >= FAST_SPIN:
        return spin_words(rate, verb="swinging")
    pace = speed_word(vector_norm(frame.velocity(name)))
    return pace if pace == "still" else f"moving {pace}"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _join(parts: list[str]) -> str:
    parts = [p for p in parts if p]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


# -- cartpole -----------------------------------------------------------------------------------
def pole_words(angle_deg: float) -> str:
    """A pole's on-screen angle from upright (degrees, clockwise = tip to the right) in words
    (:data:`POLE_BANDS_DEG`)."""
    a = abs(angle_deg)
    side = "right" if angle_deg > 0 else "left"
    upright, little, lot, horizontal, slant, down = POLE_BANDS_DEG
    if a <= upright:
        return "upright"
    if a <= little:
        return f"tilted a little to the {side}"
    if a <= lot:
        return f"tilted a lot to the {side}"
    if a <= horizontal:
        return f"horizontal, pointing {side}"
    if a <= slant:
        return f"pointing down to the {side}"
    if a <= down:
        return f"hanging down, a little to the {side}"
    return "hanging straight down"


def describe_cartpole(frame: Frame) -> Words:
    """Each pole's angle and swing, the cart's place across the frame and its motion."""
    poles = sorted((n for n in frame.bodies if n.startswith("pole")), key=lambda n: frame.bodies[n])
    objects, pole_texts, swings = {}, [], []
    for i, pole in enumerate(poles):
        label = "the pole" if len(poles) == 1 else f"pole {i + 1}"
        angle = frame.screen_angle(frame.axis(pole, 2))  # the pole's length is its local z (cartpole.xml)
        pose = pole_words(angle) if angle is not None else "pointing at the camera"
        rate = frame.screen_spin(pole)
        swing = spin_words(rate, verb="swinging") or "not swinging"
        objects[pole] = f"{pose}, {swing}"
        pole_texts.append(f"{label} is {pose} and {swing}")
        swings.append(f"{label} {spin_words(rate, verb='swings') or 'does not swing'}")
    cart_move = frame.moving("cart")
    place = frame.across("cart")
    objects["cart"] = f"{place}, {cart_move}"
    caption = _sentence("; ".join(pole_texts) + f"; the cart is {place}, {cart_move}")
    cart_motion = (
        "the cart stands still" if cart_move == "still" else f"the cart moves{cart_move.removeprefix('moving')}"
    )
    return Words(caption, _sentence("; ".join([*swings, cart_motion])), objects)


# -- cheetah ------------------------------------------------------------------------------------
def pitch_words(pitch_deg: float) -> str:
    """A side-view torso's pitch (degrees, nose up positive) in words (:data:`PITCH_BANDS_DEG`)."""
    level, little = PITCH_BANDS_DEG
    a = abs(pitch_deg)
    if a <= level:
        return "level"
    if a <= little:
        return "tilted nose up a little" if pitch_deg > 0 else "tilted nose down a little"
    if a <= 90.0:
        return "rearing up, nose high" if pitch_deg > 0 else "diving, nose steeply down"
    return "flipped over"


def run_words(
    speed: float,
    bands: tuple[float, float, float] = RUN_SPEEDS,
    labels: tuple[str, str, str, str] = (
        "moving backwards",
        "moving slowly forward",
        "running forward",
        "running fast",
    ),
) -> str:
    """A forward speed (m/s) in words: ``labels`` are (backwards, below ``bands[1]``, below ``bands[2]``, beyond);
    'standing still' within ``bands[0]`` of zero."""
    still, slow, fast = bands
    if speed <= -still:
        return labels[0]
    if speed < still:
        return "standing still"
    return labels[1] if speed < slow else labels[2] if speed < fast else labels[3]


def feet_words(frame: Frame, feet: list[str]) -> str:
    """Which of two (or more) feet touch the ground, e.g. 'only its back foot on the ground'."""
    down = [f for f in feet if frame.grounded(f)]
    ground = frame.ground_name()
    if len(down) == len(feet):
        return f"both feet on the {ground}" if len(feet) == 2 else f"all feet on the {ground}"
    if not down:
        return f"{'both feet' if len(feet) == 2 else 'all feet'} in the air"
    return f"only its {_join([part_name(f) for f in down])} on the {ground}"


def _ground_words(frame: Frame, feet: list[str]) -> str:
    """', with <which feet touch the ground>[; <other parts down>]', or '' without contact data."""
    if frame.touching is None:
        return ""
    others = _other_parts_down(frame, feet)
    return f", with {feet_words(frame, feet)}" + (f"; {others}" if others else "")


def _other_parts_down(frame: Frame, feet: list[str]) -> str:
    down = [n for n in sorted(frame.bodies, key=frame.bodies.get) if n not in feet and frame.grounded(n)]
    if not down:
        return ""
    return (
        f"its {_join([part_name(n) for n in down])} {'touches' if len(down) == 1 else 'touch'} "
        f"the {frame.ground_name()}"
    )


def describe_cheetah(frame: Frame) -> Words:
    """Torso pitch, forward speed, which feet (and other parts) touch the ground, pitching and leg swings."""
    forward = frame.axis("torso", 0)  # the torso's long axis points to the head (cheetah.xml)
    pitch = math.degrees(math.atan2(forward[2], forward[0]))
    pose = pitch_words(pitch)
    speed = float(frame.velocity("torso")[0])  # dm_control's cheetah runs along world +x
    pace = run_words(speed)
    feet = [n for n in ("bfoot", "ffoot") if n in frame.bodies]
    caption = f"The cheetah is {pose}, {pace}" + _ground_words(frame, feet)
    nose_up = -float(frame.angular_velocity("torso")[1])  # a positive turn about world +y lowers the nose
    motion = [f"the cheetah is {pace}"]
    if abs(nose_up) >= PITCH_RATE:
        motion.append(f"it pitches {'nose up' if nose_up > 0 else 'nose down'}")
    swinging = [
        part_name(n) for n in ("bthigh", "fthigh") if n in frame.bodies and abs(frame.screen_spin(n)) >= FAST_SPIN
    ]
    if swinging:
        motion.append(f"its {_join(swinging)} {'swings' if len(swinging) == 1 else 'swing'} fast")
    return Words(_sentence(caption), _sentence("; ".join(motion)), _legged_objects(frame, pose, pace, feet))


def _legged_objects(frame: Frame, pose: str, pace: str, feet: list[str]) -> dict[str, str]:
    """Key-object words of a legged body: the torso's pose and pace, each limb's :func:`limb_words`,
    feet on the ground or not."""
    objects = {name: limb_words(frame, name) for name in frame.bodies}
    objects["torso"] = f"{pose}, {pace}"
    for foot in feet:
        if frame.touching is not None:
            objects[foot] = f"{'on the ground' if frame.grounded(foot) else 'in the air'}, {objects[foot]}"
    return objects


# -- reacher ------------------------------------------------------------------------------------
def relative_words(dx: float, dy: float) -> str:
    """Where a point is relative to another on screen (pixels, x right, y down), e.g. 'above and to the left of'."""
    return _axis_words(dx, dy, math.hypot(dx, dy), ("to the right of", "to the left of"), ("below", "above"))


def describe_reacher(frame: Frame) -> Words:
    """Finger vs target in the image (on / near / far, which side), arm direction and bend, finger motion."""
    finger_px = frame.pixel(frame.origin("finger"))
    target = frame.visible.get("target")
    where, towards = "", ""
    if target is None or finger_px is None:
        where = "the target is out of view"
    else:
        x0, y0, x1, y1 = target.box
        tx, ty = (x0 + x1) / 2.0 - 0.5, (y0 + y1) / 2.0 - 0.5
        dx, dy = finger_px[0] - tx, finger_px[1] - ty
        distance = math.hypot(dx, dy)
        radius = max(x1 - x0, y1 - y0) / 2.0
        if distance <= radius:
            where = "the finger is on the target"
        else:
            near = "near" if distance < NEAR_SHARE * frame.width else "far from"
            where = f"the finger is {near} the target, {relative_words(dx, dy)} it"
            v = frame.to_camera(frame.velocity("finger"))[:2]
            speed = float(np.hypot(*v))
            if speed >= STILL_SPEED:
                radial = -(v[0] * dx + v[1] * dy) / (speed * distance)  # > 0: closing in
                towards = "towards the target" if radial >= 0.5 else "away from the target" if radial <= -0.5 else ""
    arm = frame.screen_angle(frame.axis("arm", 0))  # arm and hand lie along their local x (reacher.xml)
    bend = math.degrees(math.acos(float(np.clip(frame.axis("arm", 0) @ frame.axis("hand", 0), -1.0, 1.0))))
    shape = "stretched out" if bend < BEND_BANDS_DEG[0] else "bent" if bend < BEND_BANDS_DEG[1] else "folded"
    points = f"points {compass_words(arm)}" if arm is not None else "points at the camera"
    move = frame.moving("finger")
    move_text = move if move == "still" else f"{move}{', ' + towards if towards else ''}"
    caption = f"{where}; the arm {points}, {shape}, its finger {move_text}"
    motion = "the arm is still" if move == "still" else f"the finger is {move_text}"
    objects = {"arm": f"{points}, {shape}", "hand": limb_words(frame, "hand"), "finger": move_text}
    return Words(_sentence(caption), _sentence(motion), objects)


# -- ball_in_cup ----------------------------------------------------------------------------------
def describe_ball_in_cup(frame: Frame) -> Words:
    """Ball in / above / below / beside the cup (left/right in the image), ball and cup motion."""
    offset = frame.origin("ball") - frame.origin("cup")  # the cup's origin is the centre of its rim
    across = float(frame.to_camera(offset)[0])
    side = "right" if across > 0 else "left"
    level = -CUP_DEPTH <= offset[2] <= 0.0
    beside = abs(across) >= CUP_HALF_WIDTH
    if level and not beside:
        where = "in the cup"
    elif level:
        where = f"beside the cup on the {side}"
    else:
        vertical = "above" if offset[2] > 0 else "below"
        where = f"{vertical} and to the {side} of the cup" if beside else f"{vertical} the cup"
    ball, cup = frame.moving("ball"), frame.moving("cup")
    caption = f"The ball is {where}, {ball}; the cup is {cup}."
    return Words(caption, _sentence(f"the ball is {ball}; the cup is {cup}"), {"ball": f"{where}, {ball}", "cup": cup})


# -- walker ---------------------------------------------------------------------------------------
def lean_words(tilt_deg: float, height: float, head_side: str = "right") -> str:
    """A walker torso's tilt from vertical (degrees, forward positive) and height (m) in words
    (:data:`LEAN_BANDS_DEG`, :data:`FALLEN_HEIGHT`); ``head_side``: where its head is in the image ('left'/'right')."""
    if height < FALLEN_HEIGHT:
        return f"lying on the ground, head to the {head_side}"
    upright, leaning = LEAN_BANDS_DEG
    side = "forward" if tilt_deg > 0 else "back"
    if abs(tilt_deg) <= upright:
        return "upright"
    if abs(tilt_deg) <= leaning:
        return f"leaning {side}"
    return f"bent far {side}" if abs(tilt_deg) <= 90.0 else "upside down"


def describe_walker(frame: Frame) -> Words:
    """Upright / leaning / fallen, forward speed, which feet touch the ground."""
    up = frame.axis("torso", 2)  # the torso capsule runs along its local z (walker.xml), its top is the head
    tilt = math.degrees(math.atan2(up[0], up[2]))  # the walker faces world +x
    head = "right" if frame.to_camera(up)[0] > 0 else "left"
    pose = lean_words(tilt, float(frame.origin("torso")[2]), head)
    speed = float(frame.velocity("torso")[0])
    if pose.startswith("lying"):
        pace = run_words(
            speed, WALK_SPEEDS, ("sliding backwards", "sliding forward", "sliding forward", "sliding forward fast")
        )
    else:
        pace = run_words(
            speed, WALK_SPEEDS, ("walking backwards", "walking slowly forward", "walking forward", "running forward")
        )
    if pace == "standing still" and not (pose == "upright" or pose.startswith("leaning")):
        pace = "still"  # not standing: lying, bent far over or upside down
    feet = [n for n in frame.bodies if "foot" in n]
    caption = f"The walker is {pose}, {pace}" + _ground_words(frame, feet)
    motion = [f"the walker is {pace}"]
    spin = spin_words(frame.screen_spin("torso"), verb="tipping")
    if spin:
        motion.append(f"its torso is {spin}")
    return Words(_sentence(caption), _sentence("; ".join(motion)), _legged_objects(frame, pose, pace, feet))


# -- finger ---------------------------------------------------------------------------------------
def finger_spin_words(rate: float) -> str:
    """The spinner's on-screen angular velocity (rad/s, clockwise positive) in words."""
    if abs(rate) < STILL_SPIN:
        return "not spinning"
    pace = "very fast" if abs(rate) >= VERY_FAST_SPIN else "fast" if abs(rate) >= FAST_SPIN else "slowly"
    return f"spinning {pace} {'clockwise' if rate > 0 else 'counter-clockwise'}"


def describe_finger(frame: Frame) -> Words:
    """Where the spinner's tip points, its spin, whether the finger touches it, where the finger points."""
    tip = frame.screen_angle(frame.axis("spinner", 2))  # the tip site is on the spinner's local +z (finger.xml)
    points = f"its tip pointing {compass_words(tip)}" if tip is not None else "its tip towards the camera"
    spin = finger_spin_words(frame.screen_spin("spinner"))
    finger = frame.screen_angle(-frame.axis("distal", 2))  # the finger's segments extend along their local -z
    finger_points = f"points {compass_words(finger)}" if finger is not None else "points at the camera"
    caption = f"The spinner is {spin}, {points}; the finger {finger_points}"
    objects = {"spinner": f"{spin}, {points}", "distal": f"{finger_points}, {frame.moving('distal')}"}
    if frame.touching is not None:
        touches = bool(frame.touching.get("spinner", set()) & {"proximal", "distal"})
        caption += " and touches it" if touches else " and does not touch it"
        objects["spinner"] += ", touched by the finger" if touches else ""
    motion = f"the spinner is {spin}; the finger is {frame.moving('distal')}"
    return Words(_sentence(caption), _sentence(motion), objects)


# -- anything else ----------------------------------------------------------------------------------
def describe_generic(frame: Frame) -> Words:
    """The root body's motion and spin, and which bodies touch the scenery (with physics)."""
    bodies = sorted(frame.bodies, key=frame.bodies.get)
    if not bodies:
        return Words(f"A {frame.task} frame with no moving body.", "Nothing moves.")
    root = bodies[0]
    move = frame.moving(root)
    spin = spin_words(frame.screen_spin(root))
    state = move + (f", {spin}" if spin else "")
    caption = f"A {frame.task} frame: the {part_name(root)} is {state}"
    if frame.touching is not None:
        down = [part_name(n) for n in bodies if frame.grounded(n)]
        caption += (
            f"; {_join(down)} {'touches' if len(down) == 1 else 'touch'} the {frame.ground_name()}"
            if down
            else "; nothing touches the ground"
        )
    fastest = sorted(bodies, key=lambda n: (-vector_norm(frame.velocity(n)), frame.bodies[n]))[0]
    motion = f"the {part_name(root)} is {state}"
    if fastest != root and frame.moving(fastest) != "still":
        motion += f"; the {part_name(fastest)} moves fastest, {frame.moving(fastest).removeprefix('moving ')}"
    return Words(_sentence(caption), _sentence(motion), {root: state})


Describer = Callable[[Frame], Words]

#: dm_control domain -> (bodies the describer reads, the describer).
DESCRIBERS: dict[str, tuple[tuple[str, ...], Describer]] = {
    "cartpole": (("cart", "pole_1"), describe_cartpole),
    "cheetah": (("torso", "bfoot", "ffoot"), describe_cheetah),
    "reacher": (("arm", "hand", "finger"), describe_reacher),
    "ball_in_cup": (("cup", "ball"), describe_ball_in_cup),
    "walker": (("torso",), describe_walker),
    "finger": (("spinner", "distal", "proximal"), describe_finger),
}


def describer_for(task: str, suite: str, bodies: dict[str, int]) -> Describer:
    """The describer of ``task``'s domain (dm_control ``domain-task``) when its model has the bodies it needs,
    else :func:`describe_generic`."""
    if suite == "gymnasium":
        return describe_generic
    needs, describer = DESCRIBERS.get(task.partition("-")[0], ((), describe_generic))
    return describer if all(n in bodies for n in needs) else describe_generic


def describe_frame(scene: SceneTruth, physics: PhysicsState | None) -> tuple[Frame, Words]:
    """The :class:`Frame` of a scene and what its domain's describer says about it."""
    frame = Frame(scene, physics)
    return frame, describer_for(scene.task, scene.suite, frame.bodies)(frame)
