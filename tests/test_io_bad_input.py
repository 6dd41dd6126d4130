"""Bad input ends in an InputError (or an InputWarning after a repair) naming the file."""

from __future__ import annotations

import builtins
import bz2
import io
import re
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from napari_cdinn._reader import get_reader
from napari_cdinn.core import io as cio
from napari_cdinn.core.data import PtychoScan, ShotSet
from napari_cdinn.core.errors import CdinnError, InputError, InputWarning

RNG = np.random.default_rng(7)


def refused(path: Path, *problem: str, **read_kwargs) -> InputError:
    """Read ``path``, expecting an InputError whose message names the file and the problem."""
    with pytest.raises(InputError) as info:
        cio.read(path, **read_kwargs)
    message = str(info.value).lower()
    assert str(path).lower() in message or path.name.lower() in message, message
    assert any(word.lower() in message for word in problem), message
    assert "\n" not in str(info.value)  # a one-line message
    assert isinstance(info.value, CdinnError)
    return info.value


def save_npy(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


# --------------------------------------------------------------------------------------------
# Damaged files
# --------------------------------------------------------------------------------------------


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_truncated_hdf5(tmp_path):
    path = tmp_path / "cut.h5"
    with h5py.File(path, "w") as h5:
        h5["frames"] = RNG.random((20, 64, 64))
    assert cio.read(path).shape == (20, 64, 64)  # valid before the cut
    refused(truncate(path), "truncated", "corrupt")


def test_truncated_cxi(tmp_path, write_cxi):
    path = write_cxi(tmp_path / "cut.cxi", RNG.integers(0, 100, (20, 64, 64)))
    refused(truncate(path), "truncated", "corrupt")


def test_npy_header_with_a_bytes_key(tmp_path):
    """Found by the fuzz test: numpy raises TypeError (not ValueError) on such a header."""
    path = tmp_path / "bytes_key.npy"
    np.save(path, np.ones((2, 8, 8), np.float32))
    valid = path.read_bytes()
    path.write_bytes(valid.replace(b"', 'fortran_order'", b"',b'fortran_order'", 1))
    assert path.read_bytes() != valid
    refused(path, "not a readable numpy file")


def test_corrupt_hdf5(tmp_path):
    path = tmp_path / "noise.h5"
    path.write_bytes(RNG.bytes(4096))
    refused(path, "not a readable hdf5")


def test_truncated_tiff(tmp_path):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, RNG.random((4, 64, 64)).astype(np.float32), photometric="minisblack")
    assert cio.read(path).shape == (4, 64, 64)
    refused(truncate(path), "truncated", "corrupt")


def test_corrupt_tiff(tmp_path):
    path = tmp_path / "noise.tif"
    path.write_bytes(RNG.bytes(4096))
    refused(path, "not a readable tiff")


def test_corrupt_tiff_in_folder_names_the_bad_frame(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        tifffile.imwrite(folder / f"f{i}.tif", RNG.random((8, 8)).astype(np.float32))
    (folder / "f1.tif").write_bytes(b"II*\x00" + RNG.bytes(60))
    error = refused(folder, "truncated", "corrupt")
    assert "f1.tif" in str(error)


def test_colour_tiff_is_refused(tmp_path):
    path = tmp_path / "photo.tif"
    tifffile.imwrite(path, np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    refused(path, "colour")


def test_tiff_folder_with_mismatched_frame_shapes(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    tifffile.imwrite(folder / "f1.tif", np.zeros((8, 8), np.float32))
    tifffile.imwrite(folder / "f2.tif", np.zeros((8, 9), np.float32))
    refused(folder, "differs")
    stack = cio.read(folder, lazy=True)  # opened from the first file's header alone
    with pytest.raises(InputError, match=r"f2\.tif.*differs"):
        stack.frames()


def test_corrupt_npz_and_bz2(tmp_path):
    npz = tmp_path / "cut.npz"
    np.savez(npz, data=RNG.random((4, 16, 16)))
    refused(truncate(npz), "truncated", "corrupt", "unreadable")
    fake_bz2 = tmp_path / "fake.npz.bz2"
    fake_bz2.write_bytes(RNG.bytes(1000))
    refused(fake_bz2, "truncated", "corrupt")


def test_pickled_npy_is_refused_without_running_it(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    error = refused(path, "never loads")
    assert "allow_pickle" not in str(error)  # numpy's advice to unpickle is not passed on
    archive = tmp_path / "objects.npz"
    np.savez(archive, x=np.array([{"a": 1}, None], dtype=object))
    refused(archive, "never loads")


@pytest.mark.parametrize("suffix", [".npy", ".h5", ".tif", ".png"])
def test_a_file_that_may_not_be_read_says_so(tmp_path, monkeypatch, suffix):
    """(Permissions are not enforced for root, as these tests may run: the error is raised
    where the libraries raise it.)"""
    path = tmp_path / f"locked{suffix}"
    if suffix == ".npy":
        np.save(path, np.ones((2, 4, 4)))
    elif suffix == ".h5":
        h5py.File(path, "w").close()
    elif suffix == ".tif":
        tifffile.imwrite(path, np.ones((4, 4), np.float32))
    else:
        Image.fromarray(np.ones((4, 4), np.uint8)).save(path)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    for module, name in [(np, "load"), (h5py, "File"), (tifffile, "TiffFile"),
                         (tifffile, "imread"), (builtins, "open")]:  # fmt: skip
        monkeypatch.setattr(module, name, denied)
    refused(path, "permission denied")


# --------------------------------------------------------------------------------------------
# Unusable content
# --------------------------------------------------------------------------------------------


def test_hdf5_without_numeric_dataset(tmp_path):
    path = tmp_path / "strings.h5"
    with h5py.File(path, "w") as h5:
        h5["title"] = "a scan"
        h5["notes/lines"] = np.array([b"one", b"two", b"three"])
        h5["notes/table"] = np.array([["a", "b"], ["c", "d"]], dtype=h5py.string_dtype())
    refused(path, "dataset 'notes/table' is not numeric")
    with h5py.File(path, "a") as h5:
        del h5["notes/table"]
    refused(path, "no numeric dataset")


@pytest.mark.parametrize(
    "content, problem",
    [
        (np.ones((3, 8, 8), np.complex64), "'data' is complex (complex64)"),
        (np.ones((0, 8, 8), np.float32), "'data' is an empty stack (0, 8, 8)"),
    ],
    ids=["complex", "empty"],
)
def test_a_file_holding_only_a_near_miss_says_why(tmp_path, content, problem):
    """Such files were 'no numeric dataset of 2 to 4 dimensions', and the napari reader
    declined them saying so, where the README promises the reason."""
    path = tmp_path / "near.h5"
    with h5py.File(path, "w") as h5:
        h5["data"] = content
    refused(path, problem)
    with pytest.warns(InputWarning, match=problem.replace("(", r"\(").replace(")", r"\)")):
        assert get_reader(str(path)) is None
    archive = tmp_path / "near.npz"
    np.savez(archive, data=content)
    refused(archive, "is complex" if "complex" in problem else "empty stack")


@pytest.mark.parametrize(
    ("shape", "problem"),
    [((100,), "1 dimension"), ((2, 2, 2, 4, 4), "5 dimension"), ((0, 8, 8), "empty")],
    ids=["1d", "5d", "empty"],
)
def test_npy_bad_shapes(tmp_path, shape, problem):
    refused(save_npy(tmp_path / "bad.npy", np.ones(shape, np.float32)), problem)


def test_hdf5_bad_shape_chosen_explicitly(tmp_path):
    path = tmp_path / "vector.h5"
    with h5py.File(path, "w") as h5:
        h5["vector"] = np.arange(10.0)
        h5["frames"] = np.ones((2, 4, 4))
    refused(path, "1 dimension", dataset="vector")


def test_complex_array_is_refused(tmp_path):
    refused(save_npy(tmp_path / "complex.npy", np.ones((3, 8, 8), np.complex64)), "complex")


def test_complex_hdf5_dataset_is_refused(tmp_path):
    path = tmp_path / "complex.h5"
    with h5py.File(path, "w") as h5:
        h5["obj"] = np.ones((3, 8, 8), np.complex64)
    refused(path, "complex", dataset="obj")


def write_in(fmt: str, path_stem: Path, array: np.ndarray) -> Path:
    """``array`` written as .npy, .h5 or .tif."""
    if fmt == "npy":
        return save_npy(path_stem.with_suffix(".npy"), array)
    if fmt == "h5":
        path = path_stem.with_suffix(".h5")
        with h5py.File(path, "w") as h5:
            h5["frames"] = array
        return path
    path = path_stem.with_suffix(".tif")
    tifffile.imwrite(path, array, photometric="minisblack")
    return path


@pytest.mark.parametrize("fmt", ["npy", "h5", "tif"])
def test_nan_and_inf_pixels_are_masked_with_a_warning(tmp_path, fmt):
    array = RNG.uniform(1, 100, (3, 8, 8)).astype(np.float32)
    array[0, 1, 2] = np.nan
    array[2, 5, 5] = np.inf
    array[1, 7, 0] = -np.inf
    bad = ~np.isfinite(array)
    path = write_in(fmt, tmp_path / "gaps", array)
    with pytest.warns(InputWarning) as record:
        stack = cio.read(path)
    messages = [str(w.message) for w in record if issubclass(w.category, InputWarning)]
    assert len(messages) == 1, messages
    assert str(path) in messages[0] and "3 NaN/Inf" in messages[0]
    assert stack.mask is not None
    mask = np.broadcast_to(stack.mask, stack.shape)
    np.testing.assert_array_equal(mask, ~bad)
    assert np.isfinite(stack.intensities).all()
    np.testing.assert_array_equal(stack.intensities[~bad], array[~bad])


def test_nan_pixels_combine_with_the_cxi_mask(tmp_path, write_cxi):
    frames = RNG.uniform(1, 100, (2, 8, 8))
    frames[1, 3, 3] = np.nan
    bits = np.zeros((8, 8), np.uint32)
    bits[0, 0] = 1
    path = write_cxi(tmp_path / "gaps.cxi", frames, bit_mask=bits)
    with pytest.warns(InputWarning, match="1 NaN/Inf"):
        stack = cio.read(path)
    mask = np.broadcast_to(stack.mask, stack.shape)
    assert not mask[:, 0, 0].any()  # from the CXI mask, in every frame
    assert not mask[1, 3, 3] and mask[0, 3, 3]  # the NaN, only where it was
    assert int((~mask).sum()) == 3


def test_a_cxi_mask_stack_must_hold_one_mask_or_one_per_frame(tmp_path, write_cxi):
    frames = RNG.uniform(1, 100, (3, 8, 8))
    one = np.zeros((1, 8, 8), np.uint32)
    one[0, 0, 0] = 1
    stack = cio.read(write_cxi(tmp_path / "one.cxi", frames, bit_mask=one))
    assert stack.mask.shape == (8, 8) and not stack.mask[0, 0]  # every frame's mask
    assert stack.subset([0, 2]).mask.shape == (8, 8)
    two = np.zeros((2, 8, 8), np.uint32)
    path = write_cxi(tmp_path / "two.cxi", frames, bit_mask=two)
    with pytest.raises(InputError, match="2 masks for 3 frames") as error:
        cio.read(path)
    assert "two.cxi" in str(error.value)


def test_nan_in_same_pixel_of_every_frame(tmp_path):
    array = RNG.uniform(1, 10, (4, 8, 8)).astype(np.float32)
    array[:, 2, 6] = np.nan  # a detector gap
    with pytest.warns(InputWarning, match="4 NaN/Inf"):
        stack = cio.read(save_npy(tmp_path / "gap.npy", array))
    mask = np.broadcast_to(stack.mask, stack.shape)
    assert not mask[:, 2, 6].any()
    assert int((~mask).sum()) == 4


@pytest.mark.parametrize("fmt", ["npy", "h5", "tif"])
def test_negative_intensities_are_clipped_with_a_warning(tmp_path, fmt):
    array = RNG.uniform(0, 50, (2, 8, 8)).astype(np.float32)
    array[0, 0, :3] = [-1.5, -0.25, -7.0]
    path = write_in(fmt, tmp_path / "background", array)
    with pytest.warns(InputWarning) as record:
        stack = cio.read(path)
    messages = [str(w.message) for w in record if issubclass(w.category, InputWarning)]
    assert len(messages) == 1, messages
    assert str(path) in messages[0] and "3 negative" in messages[0]
    assert stack.intensities.min() == 0
    np.testing.assert_array_equal(stack.intensities, np.maximum(array, 0))
    assert stack.mask is None  # clipped, not masked


@pytest.mark.parametrize("fmt", ["npy", "h5", "tif"])
@pytest.mark.parametrize("dtype", ["uint16", "uint32", "int32"])
def test_integer_detector_marks_for_no_measurement_are_masked(tmp_path, fmt, dtype):
    """Eiger writes the type's largest value in gaps and dead pixels, Pilatus -1 and -2: not
    counts. Read as counts, one such pixel was the pattern's brightest (the network saw a blank
    pattern) and a -1 a measured zero."""
    array = RNG.integers(0, 1000, (3, 8, 8)).astype(dtype)
    marked = np.zeros(array.shape, bool)
    marked[0, 1, 2] = marked[2, 4, 4] = True
    array[marked] = np.iinfo(dtype).max
    if dtype == "int32":
        array[1, 7, 0], array[1, 7, 1] = -1, -2
        marked[1, 7, :2] = True
    path = write_in(fmt, tmp_path / "eiger", array)
    with pytest.warns(InputWarning, match=f"{int(marked.sum())} NaN/Inf pixel"):
        stack = cio.read(path)
    np.testing.assert_array_equal(np.broadcast_to(stack.mask, stack.shape), ~marked)
    np.testing.assert_array_equal(stack.intensities[~marked], array[~marked])
    lazy = cio.read(path, lazy=True)  # marked now, masked when a method loads it
    assert np.isnan(np.asarray(lazy.frames())[marked]).all()


def test_eight_bit_white_is_a_value_not_a_mark(tmp_path):
    array = np.full((2, 8, 8), 255, np.uint8)
    array[:, 0, 0] = 3
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        stack = cio.read(save_npy(tmp_path / "white.npy", array))
    assert stack.mask is None and stack.intensities.max() == 255


def test_clean_data_gives_no_warning(tmp_path):
    path = save_npy(tmp_path / "clean.npy", RNG.uniform(0, 5, (2, 8, 8)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        assert cio.read(path).mask is None


@pytest.mark.parametrize("fmt", ["npy", "h5", "tif"])
def test_all_nan_data_is_refused(tmp_path, fmt):
    path = write_in(fmt, tmp_path / "blank", np.full((2, 8, 8), np.nan, np.float32))
    refused(path, "no finite")


def test_cxi_positions_count_differs_from_frames(tmp_path, write_cxi):
    path = write_cxi(tmp_path / "scan.cxi", np.ones((5, 8, 8)), translation=np.zeros((4, 3)) + 1e-7)
    refused(path, "4 scan positions for 5")


def test_cxi_translations_without_geometry(tmp_path, write_cxi):
    path = write_cxi(
        tmp_path / "scan.cxi", np.ones((3, 8, 8)), energy_ev=None, translation=np.zeros((3, 3))
    )
    refused(path, "energy, distance or pixel size is missing")


def test_tike_positions_count_differs_from_frames(tmp_path):
    path = tmp_path / "tike.npz"
    np.savez(path, data=np.ones((1, 5, 8, 8), np.float32), scan=np.zeros((1, 4, 2), np.float32))
    refused(path, "4 scan positions for 5")


@pytest.mark.parametrize(
    "scan, problem",
    [
        (np.zeros((3, 3)), "shape (3, 3); expected (N, 2)"),  # was reshaped to pairs
        (np.zeros((4, 3)), "shape (4, 3); expected (N, 2)"),  # was read as 6 (y, x) pairs
        (np.array(["a", "b"]), "not real numbers"),
        (np.zeros((1, 4, 2), complex), "not real numbers"),  # imaginary parts were dropped
    ],
    ids=["3x3", "4x3", "text", "complex"],
)
def test_tike_scans_of_the_wrong_shape_or_kind_are_refused(tmp_path, scan, problem):
    path = tmp_path / "tike.npz"
    np.savez(path, data=np.ones((1, 4, 8, 8), np.float32), scan=scan)
    refused(path, problem)


def test_a_nan_pixel_does_not_hide_that_a_tike_scan_is_in_fft_order(tmp_path):
    frames = np.zeros((3, 16, 16), np.float32)
    frames[:, 0, 0] = frames[:, 0, 1] = frames[:, 1, 0] = 100.0  # zero frequency at [0, 0]
    frames[0, 5, 5] = np.nan
    path = tmp_path / "tike.npz"
    np.savez(path, data=frames[None], scan=np.zeros((1, 3, 2), np.float32))
    with pytest.warns(InputWarning, match="NaN"):
        scan = cio.read(path)
    assert "FFT order" in scan.meta.extra["shifted"]
    assert scan.stack.frames()[0, 8, 8] == 100.0  # centred


def left_out_probe(path: Path, problem: str) -> None:
    """Read ``path``: its unusable probe is left out with a warning naming the file and the
    problem, and its frames and positions are read all the same."""
    with pytest.warns(InputWarning, match=rf"{path.name}: .*{problem}.*probe is left out"):
        scan = cio.read(path)
    assert isinstance(scan, PtychoScan) and scan.probe is None and len(scan.positions)


def test_a_scan_with_an_unusable_probe_is_read_without_it(tmp_path, write_cxi):
    path = tmp_path / "tike.npz"
    np.savez(
        path,
        data=np.ones((1, 2, 8, 8), np.float32),
        scan=np.zeros((1, 2, 2), np.float32),
        probe=np.ones((1, 1, 1, 1, 16, 16), np.complex64),
    )
    left_out_probe(path, "its probe is 16 x 16 pixels and the frames 8 x 8")
    probe = np.ones((16, 16), np.complex64)
    probe[3, 3] = np.nan
    for bad, problem in ((probe, "1 NaN"), (np.zeros((1, 1, 16, 16)), "zero everywhere")):
        cxi = write_cxi(
            tmp_path / "scan.cxi", RNG.poisson(5.0, (3, 16, 16)).astype(np.float32),
            translation=RNG.uniform(-1e-7, 1e-7, (3, 3)), probe=bad,
        )  # fmt: skip
        left_out_probe(cxi, problem)


def test_a_file_of_another_format_named_png_is_refused(tmp_path):
    """imageio decodes by content: a 3-page float TIFF named .png read as one display image of
    values up to 1e6 (pages 2 and 3 dropped)."""
    path = tmp_path / "shot.png"
    tifffile.imwrite(path, RNG.uniform(0, 1e6, (3, 8, 8)).astype(np.float32))
    refused(path, "not a PNG image")


def test_colour_png_is_refused(tmp_path):
    rgb = RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    path = tmp_path / "colour.png"
    Image.fromarray(rgb, mode="RGB").save(path)
    refused(path, "colour")


def test_several_files_of_other_kinds_or_missing_are_refused_by_name(tmp_path):
    shot = tmp_path / "a.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(shot)
    other = tmp_path / "b.npy"
    np.save(other, np.ones((2, 16, 16), np.float32))
    for second, problem in (
        (other, "only png or tiff frame files can be read as one stack"),
        (tmp_path / "c.png", "not found"),
    ):
        with pytest.raises(InputError) as info:
            cio.read([shot, second])
        message = str(info.value).lower()
        assert second.name in message and problem in message, message


def test_png_folder_with_mismatched_sizes(tmp_path):
    folder = tmp_path / "shots"
    folder.mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "a.png")
    Image.fromarray(np.zeros((16, 8), np.uint8)).save(folder / "b.png")
    refused(folder, "differs")


def test_a_folder_of_png_and_tiff_files_is_refused_naming_both(tmp_path):
    """PNG shots beside a detector_mask.tif were read as the TIFF alone (and inverted as CDI),
    the PNGs dropped without a word."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / name)
    tifffile.imwrite(folder / "detector_mask.tif", np.ones((16, 16), np.uint8))
    refused(folder, "holds 2 .png and 1 .tif files")
    refused(folder, "give the files explicitly")


def test_a_list_of_inputs_that_cannot_be_one_stack_says_what_can(tmp_path):
    """Several inputs are read as one stack only when all are PNG or all TIFF frame files; the
    refusal said "this one is cxi and the first cxi", or "not a file" for a folder."""
    shot = tmp_path / "a.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(shot)
    npy = save_npy(tmp_path / "b.npy", np.zeros((16, 16), np.float32))
    folder = tmp_path / "shots"
    folder.mkdir()
    for paths, named, problem in (
        ([npy, shot], npy, "a NPY file; only PNG or TIFF frame files can be read as one stack"),
        ([shot, folder], folder, "a folder among several inputs; only PNG or TIFF frame files"),
    ):
        with pytest.raises(InputError) as info:
            cio.read(paths)
        assert str(info.value).startswith(f"{named}: {problem}"), info.value
    assert "give a folder alone" in str(info.value)


@pytest.mark.parametrize("name", ["missing.h5", "missing.cxi", "missing.npy", "missing.tif"])
def test_missing_file(tmp_path, name):
    refused(tmp_path / name, "not found")


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "frames.xyz"
    path.write_bytes(b"\x00" * 64)
    error = refused(path, "unsupported file type")
    assert ".cxi" in str(error) and ".npy" in str(error)  # says what would work


def test_folder_without_frames(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing to see")
    refused(tmp_path, "a folder holding no .tif/.tiff or .png frames")
    named_like_a_file = tmp_path / "run.h5"  # a folder: not an unsupported file type
    named_like_a_file.mkdir()
    refused(named_like_a_file, "a folder holding no")


def test_scan_subset_keeps_positions_and_frames_together(tmp_path):
    path = tmp_path / "tike.npz"
    data = RNG.uniform(0, 9, (1, 6, 8, 8)).astype(np.float32)
    scan = RNG.uniform(0, 9, (1, 6, 2))
    np.savez(path, data=data, scan=scan)
    full = cio.read(path)
    assert isinstance(full, PtychoScan)
    part = full.subset([4, 1])
    np.testing.assert_array_equal(part.stack.intensities, data[0, [4, 1]])
    np.testing.assert_array_equal(part.positions, scan[0, [4, 1]])


# --------------------------------------------------------------------------------------------
# Property: no bytes whatsoever make read() raise anything but InputError
# --------------------------------------------------------------------------------------------


def _valid_file_bytes(suffix: str) -> bytes:
    """A small valid file of each kind, whose damaged versions the fuzzer also tries."""
    array = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    buffer = io.BytesIO()
    if suffix in (".cxi", ".h5", ".nxs"):
        with h5py.File(buffer, "w") as h5:
            h5["entry_1/data_1/data"] = array
            h5["entry_1/sample_1/geometry_1/translation"] = np.zeros((2, 3))
            h5["entry_1/instrument_1/source_1/energy"] = 1e-15
            h5["entry_1/instrument_1/detector_1/distance"] = 1.0
            h5["entry_1/instrument_1/detector_1/x_pixel_size"] = 1e-4
    elif suffix == ".npy":
        np.save(buffer, array)
    elif suffix in (".npz", ".npz.bz2"):
        save = np.savez_compressed if suffix == ".npz" else np.savez  # deflate damage too
        save(buffer, data=array[None], scan=np.zeros((1, 2, 2)), probe=np.ones((8, 8)))
        if suffix == ".npz.bz2":
            return bz2.compress(buffer.getvalue())
    elif suffix == ".tif":
        tifffile.imwrite(buffer, array, photometric="minisblack")
    elif suffix == ".png":
        Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(buffer, format="PNG")
    return buffer.getvalue()


FUZZ_SUFFIXES = (".cxi", ".h5", ".nxs", ".npy", ".npz", ".npz.bz2", ".tif", ".png")
VALID = {suffix: _valid_file_bytes(suffix) for suffix in FUZZ_SUFFIXES}


@st.composite
def damaged(draw: st.DrawFn, suffix: str) -> bytes:
    """Pure noise, a valid file's magic number followed by noise, or a valid file cut or mangled."""
    valid = VALID[suffix]
    how = draw(st.sampled_from(["noise", "magic", "cut", "flip"]))
    if how == "noise":
        return draw(st.binary(max_size=2048))
    if how == "magic":
        return valid[:8] + draw(st.binary(max_size=2048))
    if how == "cut":
        return valid[: draw(st.integers(0, len(valid) - 1))]
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@pytest.mark.parametrize("suffix", FUZZ_SUFFIXES)
def test_damaged_bytes_only_ever_raise_input_error(tmp_path_factory, suffix):
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / f"fuzzed{suffix}"

    @settings(
        max_examples=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
    )
    @given(content=damaged(suffix))
    def check(content: bytes) -> None:
        path.write_bytes(content)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # repairs (InputWarning) and library chatter
            try:
                data = cio.read(path)
                stack = data.stack if isinstance(data, PtychoScan) else data
                values = stack.images if isinstance(stack, ShotSet) else stack.frames()
            except InputError as err:
                assert path.name in str(err)
                return
        # a read that succeeds gives usable frames: finite float32 (N, H, W)
        assert values.dtype == np.float32 and values.ndim == 3
        assert np.isfinite(values).all()

    path.write_bytes(VALID[suffix])
    cio.read(path)  # the undamaged file itself reads
    check()


def test_a_file_that_fails_to_read_is_closed(tmp_path):
    """A refused HDF5 file is closed at once, even while its error is kept (napari keeps it in
    a notification, and with it the reader's frames): an open file cannot be replaced or
    deleted on Windows."""
    import gc

    import h5py

    path = tmp_path / "masks.cxi"
    with h5py.File(path, "w") as h5:
        h5["cxi_version"] = 160
        h5["entry_1/data_1/data"] = np.ones((3, 8, 8), np.float32)
        h5["entry_1/instrument_1/detector_1/mask"] = np.zeros((2, 8, 8), np.uint32)
    with pytest.raises(InputError, match="2 masks for 3 frames") as kept:
        cio.read(path)
    gc.collect()
    open_files = [obj for obj in gc.get_objects() if type(obj) is h5py.File and obj.id.valid]
    assert not [f for f in open_files if Path(f.filename) == path]
    assert kept.tb is not None  # the error, with its frames, is still alive here


def test_true_objects_that_do_not_match_the_frames_are_refused(tmp_path, write_cxi):
    """A simulation file's per-frame truth of another count (selecting frames then failed with
    an index error deep in the stack's subset)."""
    frames = RNG.random((2, 16, 16)).astype(np.float32)
    path = write_cxi(tmp_path / "truth.cxi", frames)
    with h5py.File(path, "a") as h5:
        h5["entry_1/sample_1/true_object"] = np.ones((1, 16, 16), np.complex64)
    refused(path, "true objects", "2 frames")
    ptychonn = tmp_path / "pairs.npz"
    np.savez(ptychonn, reciprocal=RNG.random((4, 16, 16)), real=np.ones((2, 16, 16), complex))
    refused(ptychonn, "true objects", "4 frames")


@pytest.mark.parametrize(
    "truth, problem",
    [(np.ones(3, np.complex64), "has shape (3,)"), (np.array([b"a", b"b"]), "is not numeric")],
    ids=["1-d", "text"],
)
def test_a_scans_unusable_true_object_is_left_out(tmp_path, write_cxi, truth, problem):
    """It was kept unchecked (the training scripts index it) or failed as a 'damaged' file."""
    path = write_cxi(tmp_path / "scan.cxi", RNG.random((2, 16, 16)), translation=np.zeros((2, 3)))
    with h5py.File(path, "a") as h5:
        h5["entry_1/sample_1/true_object"] = truth
    with pytest.warns(InputWarning, match=rf"scan.cxi: its true object {re.escape(problem)}"):
        scan = cio.read(path)
    assert isinstance(scan, PtychoScan) and scan.truth is None and len(scan.positions) == 2


def test_tike_scans_of_one_dimensional_data_are_refused_and_a_text_probe_left_out(tmp_path):
    scan = np.zeros((3, 2))
    flat = tmp_path / "flat.npz"
    np.savez(flat, data=RNG.random(48), scan=scan)
    refused(flat, "dimension")
    text = tmp_path / "text_probe.npz"
    np.savez(text, data=RNG.random((3, 16, 16)), scan=scan, probe=np.array(["not a probe"]))
    left_out_probe(text, "probe is not numeric")


def test_a_damaged_chunk_of_a_lazily_read_file_names_the_file(tmp_path):
    """A large file is read frame by frame as frames are needed; a damaged chunk found then
    is an InputError naming the file (it was h5py's bare OSError)."""
    path = tmp_path / "big.h5"
    frames = RNG.random((4, 32, 32)).astype(np.float32)
    with h5py.File(path, "w") as h5:
        h5.create_dataset("data", data=frames, chunks=(1, 32, 32), compression="gzip")
        info = h5["data"].id.get_chunk_info(2)
    with open(path, "r+b") as handle:  # overwrite the middle of frame 2's compressed chunk
        handle.seek(info.byte_offset + info.size // 2)
        handle.write(b"\0" * 16)
    stack = cio.read(path, lazy=True)
    np.testing.assert_allclose(np.asarray(stack.intensities[0]), frames[0])
    with pytest.raises(InputError, match=r"big\.h5: could not read /data"):
        np.asarray(stack.intensities[2])


def test_a_file_whose_root_cannot_be_opened_is_not_taken_for_results(tmp_path, monkeypatch):
    """Damaged bytes can leave h5py unable to open the root group (a KeyError, found by the
    fuzzing above): the results check says "not results" and lets the reader name the damage,
    instead of a traceback."""
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as h5:
        h5["data"] = np.ones((2, 8, 8), np.float32)

    def unopenable(h5):
        raise KeyError("Unable to synchronously open object (unable to determine object type)")

    monkeypatch.setattr(cio, "is_results_file", unopenable)
    assert cio.is_results(path) is False


def test_a_centred_tike_scan_with_a_beam_stop_stays_centred(tmp_path):
    """A dark (NaN or zero) middle from a beam stop does not make centred patterns look like
    FFT order: the rings around it still carry the counts."""
    y, x = np.mgrid[-32:32, -32:32]
    rings = 1e4 / (1 + (y**2 + x**2) / 16.0)
    for dark in (np.nan, 0.0):
        frames = np.repeat(rings[None], 4, axis=0).astype(np.float32)
        frames[:, 28:36, 28:36] = dark
        path = tmp_path / f"stop_{dark}.npz"
        np.savez(path, data=frames[None], scan=np.zeros((1, 4, 2), np.float32))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InputWarning)  # NaN pixels masked
            scan = cio.read(path)
        assert "shifted" not in scan.meta.extra
        assert scan.stack.frames()[0, 32, 40] == pytest.approx(rings[32, 40])
