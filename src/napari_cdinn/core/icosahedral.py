"""The icosahedral rotation group as unit quaternions, and orientations modulo it.

An orientation is the unit quaternion q = (w, x, y, z) that turns the reference icosahedron
(vertices at the cyclic permutations of (0, +-1, +-phi), phi the golden ratio) into the cluster
as it lies in the beam: v_lab = q v q*.  The cluster looks the same turned by any of the group's
60 rotations g first, so q and q g are one orientation.  Each orientation is written in the
fundamental domain: the equivalent quaternion with the largest |w| (the smallest rotation from
the reference), sign chosen so that w >= 0.  ``embedding`` maps an orientation to 29 numbers
that are the same for all equivalent rotations (what the wide-angle network learns besides a
quaternion); ``from_embedding`` reads such numbers back as an orientation.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import permutations, product

import numpy as np
import torch

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


# A continuous embedding of orientations modulo the group.  A network that answers a quaternion
# must jump somewhere (no continuous choice of one of the 60 equivalents exists), and near those
# seams it errs; the embedding has none.  It samples f(n) = sum_i (n . R a_i)^6 over the six
# vertex axes a_i of the turned icosahedron at fixed directions n: f is the same for every
# equivalent rotation, varies smoothly with the orientation, and tells orientations apart (its
# degree-6 spherical harmonic part, the lowest an icosahedron has besides the constant, is left
# unchanged by the 60 rotations and by no other).  f is even in n, so the directions lie on the
# upper half sphere; their set is mapped onto itself (up to sign) by the image flips and
# transposes' rotations (pi about x, y and the diagonal), so a flip only permutes the entries.
def _embedding_directions() -> np.ndarray:
    """29 directions on the upper half sphere: the pole and rings at 25, 50, 75 and 90 degrees
    from it, each ring's azimuths a set that the square's symmetries map onto itself."""
    rings = {
        0.0: [0.0],
        25.0: np.arange(8) * 45.0,
        50.0: 22.5 + np.arange(8) * 45.0,
        75.0: np.arange(8) * 45.0,
        90.0: 22.5 + np.arange(4) * 45.0,  # the other half are the opposite directions
    }
    polar, azimuth = np.radians(
        [(theta, phi) for theta, azimuths in rings.items() for phi in azimuths]
    ).T
    return np.column_stack(
        [np.sin(polar) * np.cos(azimuth), np.sin(polar) * np.sin(azimuth), np.cos(polar)]
    )


EMBEDDING_DIRECTIONS = _embedding_directions()  # (29, 3)
_VERTEX_AXES = icosahedron()[0][::2]  # six vertices, no two opposite


def _turned_axes(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The six vertex axes turned by ``q`` (..., 6, 3), and their cosines with the embedding's
    directions (..., 29, 6)."""
    turned = np.swapaxes(rotation_matrix(q) @ _VERTEX_AXES.T, -1, -2)
    return turned, np.einsum("kj,...ij->...ki", EMBEDDING_DIRECTIONS, turned)


def _sixth_powers(cosines: np.ndarray) -> np.ndarray:
    """The unscaled embedding from the axes' cosines (..., 29, 6): less 6 / 7, its mean."""
    return (cosines**6).sum(-1) - 6 / 7


def _raw_embedding(q: np.ndarray) -> np.ndarray:
    return _sixth_powers(_turned_axes(q)[1])


@lru_cache(maxsize=1)
def _embedding_scale(n: int = 4000, step: float = 1e-4) -> float:
    """The factor that makes the embedding's distance half the misorientation angle (radians)
    on average for small angles, so a loss on it weighs errors as sin(theta / 2) does."""
    rng = np.random.default_rng(0)
    q = random_orientations(n, rng)
    axes = rng.normal(size=(n, 3))
    turned = multiply(from_rotation_vector(step * axes / np.linalg.norm(axes, axis=1)[:, None]), q)
    change = np.linalg.norm(_raw_embedding(turned) - _raw_embedding(q), axis=1).mean()
    return 0.5 * step / change


def embedding(q: np.ndarray) -> np.ndarray:
    """(..., 4) orientations -> (..., 29): the same for every equivalent quaternion (q g, -q),
    smooth in the orientation; distances about half the misorientation in radians when small."""
    return _raw_embedding(q) * _embedding_scale()


@lru_cache(maxsize=1)
def _embedding_table(n: int = 20_000) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Orientations, their embeddings (29, n), and half their squared norms (for the nearest
    search, in torch: numpy's BLAS threads, woken beside torch's, made a network's answer at
    batch 1 four times slower)."""
    q = random_orientations(n, np.random.default_rng(1))
    e = torch.as_tensor(embedding(q), dtype=torch.float32)
    return q, e.T.contiguous(), 0.5 * e.square().sum(1)


def from_embedding(e: np.ndarray, steps: int = 2, chunk: int = 2048) -> np.ndarray:
    """(N, 29) embeddings (a network's, so near but not on the orientations' surface) -> (N, 4)
    orientations in the fundamental domain whose embeddings are nearest: the nearest of 20k
    tabulated orientations (a few degrees apart), then Gauss-Newton steps on a small rotation."""
    e = np.asarray(e, float).reshape(-1, len(EMBEDDING_DIRECTIONS))
    table_q, table_e, half_norms = _embedding_table()
    parts = torch.as_tensor(e, dtype=torch.float32).split(chunk)
    q = table_q[torch.cat([(half_norms - part @ table_e).argmin(1) for part in parts]).numpy()]
    scale = _embedding_scale()
    for _ in range(steps):
        turned, cosines = _turned_axes(q)
        base = _sixth_powers(cosines) * scale
        # d/dv of (n . exp(v) u)^6 at v = 0 is 6 (n . u)^5 (u x n)
        weighted = np.einsum("nki,nij->nkj", cosines**5, turned)  # (N, 29, 3)
        jacobian = 6 * scale * np.cross(weighted, EMBEDDING_DIRECTIONS)
        normal = np.einsum("nki,nkj->nij", jacobian, jacobian)
        step = np.linalg.solve(normal, np.einsum("nki,nk->ni", jacobian, e - base)[..., None])
        q = multiply(from_rotation_vector(step[..., 0]), q)
    return reduced(q)
