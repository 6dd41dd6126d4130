"""The icosahedral rotation group as unit quaternions, and orientations modulo it.

An orientation is the unit quaternion q = (w, x, y, z) that turns the reference icosahedron
(vertices at the cyclic permutations of (0, +-1, +-phi), phi the golden ratio) into the cluster
as it lies in the beam: v_lab = q v q*.  The cluster looks the same turned by any of the group's
60 rotations g first, so q and q g are one orientation.  Each orientation is written in the
fundamental domain: the equivalent quaternion with the largest |w| (the smallest rotation from
the reference), sign chosen so that w >= 0.
"""

from __future__ import annotations

from itertools import permutations, product

import numpy as np

PHI = (1 + np.sqrt(5)) / 2


def _even_permutations(values: tuple[float, ...]) -> list[tuple[float, ...]]:
    def parity(order: tuple[int, ...]) -> int:
        inversions = sum(a > b for i, a in enumerate(order) for b in order[i + 1 :])
        return inversions % 2

    return [tuple(values[i] for i in p) for p in permutations(range(4)) if parity(p) == 0]


def _group() -> np.ndarray:
    """The 60 rotations (the binary icosahedral group's 120 quaternions, one of each +-q)."""
    elements = set()
    for axis in range(4):  # (+-1, 0, 0, 0) and its permutations
        for sign in (1, -1):
            q = [0.0] * 4
            q[axis] = float(sign)
            elements.add(tuple(q))
    for signs in product((0.5, -0.5), repeat=4):
        elements.add(signs)
    half = (0.0, 0.5, 0.5 / PHI, 0.5 * PHI)
    for signs in product((1, -1), repeat=3):
        signed = (0.0, signs[0] * half[1], signs[1] * half[2], signs[2] * half[3])
        for q in _even_permutations(signed):
            elements.add(tuple(float(v) + 0.0 for v in q))
    quaternions = np.array(sorted(elements))
    first = np.argmax(np.abs(quaternions) > 1e-9, axis=1)
    positive = quaternions[np.arange(len(quaternions)), first] > 0
    return quaternions[positive]


GROUP = _group()  # (60, 4)


def multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a b of quaternions (..., 4), broadcasting."""
    aw, ax, ay, az = np.moveaxis(np.asarray(a, float), -1, 0)
    bw, bx, by, bz = np.moveaxis(np.asarray(b, float), -1, 0)
    return np.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=-1,
    )


def from_rotation_vector(vector: np.ndarray) -> np.ndarray:
    """Unit quaternions (..., 4) of rotation vectors (..., 3): the axis times the angle in
    radians (a zero vector is the identity)."""
    vector = np.asarray(vector, float)
    angle = np.linalg.norm(vector, axis=-1, keepdims=True)
    axis = np.divide(vector, angle, out=np.zeros_like(vector), where=angle > 0)
    return np.concatenate([np.cos(angle / 2), np.sin(angle / 2) * axis], axis=-1)


def conjugate(q: np.ndarray) -> np.ndarray:
    return np.asarray(q, float) * np.array([1.0, -1.0, -1.0, -1.0])


def normalised(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, float)
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def rotation_matrix(q: np.ndarray) -> np.ndarray:
    """(..., 3, 3) matrices R with R v = q v q* for unit quaternions (..., 4)."""
    w, x, y, z = np.moveaxis(normalised(q), -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=-2,
    )


def equivalents(q: np.ndarray) -> np.ndarray:
    """(..., 60, 4): q g for every rotation g of the group."""
    return multiply(np.asarray(q, float)[..., None, :], GROUP)


def reduced(q: np.ndarray) -> np.ndarray:
    """``q`` (..., 4) in the fundamental domain: the equivalent with the largest |w|, w >= 0."""
    candidates = equivalents(normalised(q))
    best = np.argmax(np.abs(candidates[..., 0]), axis=-1)
    chosen = np.take_along_axis(candidates, best[..., None, None], axis=-2)[..., 0, :]
    return chosen * np.where(chosen[..., :1] < 0, -1.0, 1.0)


def misorientation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation angle (degrees) taking orientation ``a`` to ``b``, modulo the group."""
    relative = multiply(conjugate(normalised(a)), normalised(b))
    cosine = np.abs(equivalents(relative)[..., 0]).max(axis=-1)
    return np.degrees(2 * np.arccos(np.clip(cosine, -1.0, 1.0)))


def random_orientations(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` orientations uniform over rotations (Shoemake's method), reduced to the domain."""
    u1, u2, u3 = rng.random((3, n))
    q = np.stack(
        [
            np.sqrt(1 - u1) * np.sin(2 * np.pi * u2),
            np.sqrt(1 - u1) * np.cos(2 * np.pi * u2),
            np.sqrt(u1) * np.sin(2 * np.pi * u3),
            np.sqrt(u1) * np.cos(2 * np.pi * u3),
        ],
        axis=-1,
    )
    return reduced(q)


def icosahedron(radius: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The reference icosahedron of circumradius ``radius``: vertices (12, 3) and triangular
    faces (20, 3) as vertex indices, wound counter-clockwise seen from outside."""
    vertices = []
    for a, b in product((1.0, -1.0), repeat=2):
        vertices += [(0.0, a, b * PHI), (a, b * PHI, 0.0), (b * PHI, 0.0, a)]
    vertices = np.array(vertices) / np.sqrt(1 + PHI**2) * radius
    distances = np.linalg.norm(vertices[:, None] - vertices[None], axis=-1)
    edge = distances[distances > 0].min()
    faces = []
    for i, j, k in (c for c in np.ndindex(12, 12, 12) if c[0] < c[1] < c[2]):
        sides = (vertices[i] - vertices[j], vertices[j] - vertices[k], vertices[i] - vertices[k])
        if all(abs(np.linalg.norm(s) - edge) < 1e-6 * radius for s in sides):
            normal = np.cross(vertices[j] - vertices[i], vertices[k] - vertices[i])
            faces.append((i, j, k) if normal @ vertices[i] > 0 else (i, k, j))
    return vertices, np.array(faces)


def face_planes(radius: float) -> tuple[np.ndarray, np.ndarray]:
    """The reference icosahedron as 20 half-spaces n . v <= d: unit normals (20, 3), d (20,)."""
    vertices, faces = icosahedron(radius)
    centres = vertices[faces].mean(axis=1)
    normals = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    return normals, np.einsum("fi,fi->f", normals, centres)
