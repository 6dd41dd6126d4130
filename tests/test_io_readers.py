"""Every reader on files written here with known values, lazy loading, and the real shared data."""

from __future__ import annotations

import bz2
import io
import os

import dask.array as da
import h5py
import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_cdinn.core import io as cio
from napari_cdinn.core.data import DiffractionStack, PtychoScan, ShotSet
from napari_cdinn.core.errors import InputError, InputWarning
from napari_cdinn.core.io import hdf5 as hdf5_module

RNG = np.random.default_rng(20240601)

# lambda = h c / E with the constants written out, independent of napari_cdinn.core.data
PLANCK_J_S = 6.62607015e-34
LIGHT_M_S = 299_792_458.0
EV_J = 1.602176634e-19


def wavelength_m(energy_ev: float) -> float:
    return PLANCK_J_S * LIGHT_M_S / (energy_ev * EV_J)


def counts(shape: tuple[int, ...], dtype: str = "int32") -> np.ndarray:
    """Distinct non-negative detector counts, so any reordering or mix-up shows."""
    return RNG.integers(0, 60_000, size=shape).astype(dtype)


def assert_stack(stack: DiffractionStack, expected: np.ndarray) -> None:
    """In-memory float32 (N, H, W) stack equal to ``expected``."""
    assert isinstance(stack, DiffractionStack)
    assert isinstance(stack.intensities, np.ndarray)
    assert not stack.is_lazy
    assert stack.intensities.dtype == np.float32
    assert stack.shape == expected.shape
    np.testing.assert_array_equal(stack.intensities, expected.astype(np.float32))


# --------------------------------------------------------------------------------------------
# CXI 1.6
# --------------------------------------------------------------------------------------------


def test_cxi_frames_mask_and_geometry(tmp_path, write_cxi):
    frames = counts((5, 16, 24))
    bit_mask = np.zeros((16, 24), np.uint32)
    bit_mask[0, 0] = 1  # invalid
    bit_mask[3, 7] = 2  # saturated
    bit_mask[15, 23] = 0x100  # any set bit makes a pixel bad
    path = write_cxi(
        tmp_path / "scan.cxi",
        frames,
        energy_ev=8000.0,
        distance_m=2.5,
        pixel_m=(55e-6, 75e-6),
        bit_mask=bit_mask,
    )
    stack = cio.read(path)
    assert_stack(stack, frames)
    assert stack.mask is not None and stack.mask.dtype == bool
    np.testing.assert_array_equal(stack.mask, bit_mask == 0)  # True = valid
    assert int((~stack.mask).sum()) == 3
    meta = stack.meta
    assert meta.reader == "cxi"
    assert meta.source == str(path)
    assert meta.dataset == "entry_1/data_1/data"
    assert meta.energy_ev == pytest.approx(8000.0, rel=1e-9)
    assert meta.wavelength_m == pytest.approx(wavelength_m(8000.0), rel=1e-8)
    assert meta.distance_m == pytest.approx(2.5)
    assert meta.pixel_size_m == pytest.approx((55e-6, 75e-6))  # (y, x)
    assert meta.extra["entries"] == ["entry_1"]


def test_cxi_frames_at_detector_data(tmp_path, write_cxi):
    frames = counts((3, 8, 8), "uint16")
    path = write_cxi(tmp_path / "detector.cxi", frames, frames_at="instrument_1/detector_1/data")
    stack = cio.read(path)
    assert_stack(stack, frames)
    assert stack.meta.dataset == "entry_1/instrument_1/detector_1/data"
    assert stack.mask is None
    assert stack.meta.distance_m == pytest.approx(2.0)


def test_cxi_single_frame_becomes_stack_of_one(tmp_path, write_cxi):
    frame = counts((12, 10))
    stack = cio.read(write_cxi(tmp_path / "one.cxi", frame))
    assert_stack(stack, frame[None])


def test_cxi_structured_file_with_h5_name_uses_cxi_reader(tmp_path, write_cxi):
    frames = counts((2, 8, 8))
    stack = cio.read(write_cxi(tmp_path / "renamed.h5", frames, energy_ev=9000.0))
    assert_stack(stack, frames)
    assert stack.meta.reader == "cxi"
    assert stack.meta.energy_ev == pytest.approx(9000.0)


@pytest.mark.parametrize(
    "translation_at", ["sample_1/geometry_1/translation", "data_1/translation"]
)
def test_cxi_translations_become_object_pixel_positions(tmp_path, write_cxi, translation_at):
    n, height, width = 6, 16, 24
    energy, distance, pixel_y, pixel_x = 10_000.0, 3.0, 55e-6, 75e-6
    lam_z = wavelength_m(energy) * distance
    object_pixel = (lam_z / (height * pixel_y), lam_z / (width * pixel_x))  # lambda z / (N p)
    positions = RNG.uniform(-40, 40, size=(n, 2))  # (y, x) object pixels
    translation = np.zeros((n, 3))  # CXI: (x, y, z) metres, sample moves opposite to the beam
    translation[:, 0] = -positions[:, 1] * object_pixel[1]
    translation[:, 1] = -positions[:, 0] * object_pixel[0]
    translation[:, 2] = 1e-3  # z plays no part in the (y, x) positions
    probe = (RNG.normal(size=(height, width)) + 1j * RNG.normal(size=(height, width))).astype(
        np.complex128
    )
    frames = counts((n, height, width))
    path = write_cxi(
        tmp_path / "ptycho.cxi",
        frames,
        energy_ev=energy,
        distance_m=distance,
        pixel_m=(pixel_y, pixel_x),
        translation=translation,
        translation_at=translation_at,
        probe=probe,
    )
    scan = cio.read(path)
    assert isinstance(scan, PtychoScan)
    assert_stack(scan.stack, frames)
    assert scan.positions.shape == (n, 2)
    np.testing.assert_allclose(scan.positions, positions, rtol=1e-7, atol=1e-9)
    assert scan.object_pixel_size_m == pytest.approx(object_pixel, rel=1e-7)
    assert scan.probe is not None and scan.probe.dtype == np.complex64
    np.testing.assert_array_equal(scan.probe, probe.astype(np.complex64))
    assert scan.meta is scan.stack.meta and scan.meta.reader == "cxi"


def test_a_cxi_probe_with_leading_axes_reads_as_one_probe(tmp_path, write_cxi):
    """CXI writers store the illumination as (1, 1, H, W) too: one probe of the frames' size."""
    n, size = 4, 16
    probe = (RNG.normal(size=(size, size)) + 1j).astype(np.complex64)
    path = write_cxi(
        tmp_path / "probe4.cxi", counts((n, size, size)), energy_ev=8000.0, distance_m=2.0,
        pixel_m=(75e-6, 75e-6), translation=RNG.uniform(-1e-7, 1e-7, (n, 3)),
        probe=probe[None, None],
    )  # fmt: skip
    scan = cio.read(path)
    assert isinstance(scan, PtychoScan)
    np.testing.assert_array_equal(scan.probe, probe)


def test_cxi_two_entries_pick_by_dataset(tmp_path, write_cxi):
    first, second = counts((2, 8, 8)), counts((4, 12, 12))
    path = tmp_path / "two.cxi"
    write_cxi(path, first, energy_ev=7000.0, distance_m=1.0)
    write_cxi(path, second, entry="entry_2", energy_ev=9000.0, distance_m=4.0, mode="a")

    default = cio.read(path)
    assert_stack(default, first)
    assert default.meta.energy_ev == pytest.approx(7000.0)
    assert default.meta.extra["entries"] == ["entry_1", "entry_2"]

    chosen = cio.read(path, dataset="entry_2")
    assert_stack(chosen, second)
    assert chosen.meta.dataset == "entry_2/data_1/data"
    assert chosen.meta.energy_ev == pytest.approx(9000.0)
    assert chosen.meta.distance_m == pytest.approx(4.0)

    by_path = cio.read(path, dataset="/entry_2/data_1/data")
    assert_stack(by_path, second)

    with pytest.raises(InputError, match="entry_7") as info:
        cio.read(path, dataset="entry_7")
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------------------------
# Plain HDF5 and NeXus
# --------------------------------------------------------------------------------------------


@pytest.fixture
def plain_h5(tmp_path):
    path = tmp_path / "plain.h5"
    small = counts((4, 8, 8), "float64")
    big = counts((6, 16, 16), "uint16")
    with h5py.File(path, "w") as h5:
        h5["small"] = small
        h5["group/big"] = big
        h5["long_vector"] = np.arange(100_000, dtype=np.float32)  # largest, but 1-D
        h5["complex"] = np.ones((8, 16, 16), np.complex64)  # larger, but not real
        h5["labels"] = np.array([b"a", b"b"])
        h5["five_d"] = np.ones((2, 2, 2, 2, 2), np.float32)
    return path, small, big


def test_hdf5_largest_numeric_dataset_is_picked(plain_h5):
    path, _, big = plain_h5
    stack = cio.read(path)
    assert_stack(stack, big)
    assert stack.meta.reader == "hdf5"
    assert stack.meta.dataset == "group/big"
    assert stack.meta.source == str(path)
    assert [name for name, _, _ in cio.list_datasets(path)] == ["group/big", "small"]


@pytest.mark.parametrize("name", ["small", "/small"])
def test_hdf5_dataset_override(plain_h5, name):
    path, small, _ = plain_h5
    stack = cio.read(path, dataset=name)
    assert_stack(stack, small)


def test_hdf5_unknown_dataset_lists_the_choices(plain_h5):
    path, _, _ = plain_h5
    with pytest.raises(InputError) as info:
        cio.read(path, dataset="nope")
    message = str(info.value)
    assert str(path) in message
    assert "nope" in message
    assert "group/big" in message and "small" in message


@pytest.mark.parametrize("as_bytes", [False, True], ids=["str-attr", "bytes-attr"])
def test_nexus_signal_wins_over_larger_dataset(tmp_path, as_bytes):
    path = tmp_path / "scan.nxs"
    signal = counts((3, 8, 8), "uint32")
    with h5py.File(path, "w") as h5:
        h5["raw/larger"] = counts((10, 32, 32), "float32")
        entry = h5.create_group("entry")
        entry.attrs["NX_class"] = np.bytes_("NXentry") if as_bytes else "NXentry"
        data = entry.create_group("data")
        data.attrs["NX_class"] = np.bytes_("NXdata") if as_bytes else "NXdata"
        data.attrs["signal"] = np.bytes_("counts") if as_bytes else "counts"
        data["counts"] = signal
        data["x"] = np.arange(8.0)
    stack = cio.read(path)
    assert_stack(stack, signal)
    assert stack.meta.dataset == "entry/data/counts"


def eiger_master(tmp_path, parts: list[np.ndarray], mask: np.ndarray | None = None):
    """An Eiger/Jungfrau-style NeXus master: its frames in data files reached by external
    links ``entry/data/data_NNNNNN``, a pixel mask (non-zero = bad) beside them."""
    master = tmp_path / "run_master.h5"
    with h5py.File(master, "w") as h5:
        data = h5.create_group("entry/data")
        data.attrs["NX_class"] = "NXdata"  # no signal attribute, as the detectors write it
        for number, frames in enumerate(parts, start=1):
            name = f"run_data_{number:06d}.h5"
            with h5py.File(tmp_path / name, "w") as part:
                part["entry/data/data"] = frames
            data[f"data_{number:06d}"] = h5py.ExternalLink(name, "/entry/data/data")
        if mask is not None:
            h5["entry/instrument/detector/detectorSpecific/pixel_mask"] = mask
    return master


def test_an_eiger_master_reads_its_linked_data_files_as_one_stack_with_the_pixel_mask(tmp_path):
    parts = [counts((4, 8, 8), "uint32"), counts((3, 8, 8), "uint32")]
    mask = np.zeros((8, 8), np.uint32)
    mask[2, 5] = 1  # a dead pixel
    master = eiger_master(tmp_path, parts, mask)
    stack = cio.read(master)
    assert_stack(stack, np.concatenate(parts))  # the whole series, in order (not the mask)
    assert stack.meta.dataset == "entry/data"
    assert stack.mask is not None and not stack.mask[2, 5] and stack.mask.sum() == 63
    lazy = cio.read(master, lazy=True)
    assert lazy.is_lazy
    np.testing.assert_array_equal(np.asarray(lazy.frames()), np.concatenate(parts))
    listed = [(name, shape) for name, shape, _ in cio.list_datasets(master)]
    assert listed[:3] == [
        ("entry/data", (7, 8, 8)),
        ("entry/data/data_000001", (4, 8, 8)),
        ("entry/data/data_000002", (3, 8, 8)),
    ]
    assert_stack(cio.read(master, dataset="entry/data/data_000002"), parts[1])


def test_only_eiger_numbered_parts_make_a_series_and_a_read_walks_the_file_once(
    tmp_path, monkeypatch
):
    """A user's data_1 ... data_11 are separate scans (they were joined, in the order 1, 10,
    11, 2, ...); a read walked every link six times."""
    path = tmp_path / "scans.h5"
    with h5py.File(path, "w") as h5:
        for k in range(1, 12):
            h5[f"scans/data_{k}"] = np.full((2, 4, 4), k, np.float32)
    stack = cio.read(path)
    assert stack.shape == (2, 4, 4) and "series" not in stack.meta.extra
    walks = []
    original = hdf5_module.Links.of.__func__
    monkeypatch.setattr(
        hdf5_module.Links, "of", classmethod(lambda cls, h5: walks.append(1) or original(cls, h5))
    )
    parts = [np.full((1, 4, 4), k, np.float32) for k in range(1, 12)]
    master = eiger_master(tmp_path, parts)
    assert cio.read(master).frames()[:, 0, 0].tolist() == list(range(1, 12))
    assert len(walks) == 1


def test_bitshuffle_lz4_frames_read_and_a_missing_filter_is_named(tmp_path):
    """Eiger and Jungfrau data files compress with bitshuffle-LZ4, an HDF5 filter plugin:
    without hdf5plugin every read failed ("can't open directory .../plugin"). Run in fresh
    processes: the reader must register the filters itself."""
    import subprocess
    import sys

    import hdf5plugin

    frames = counts((3, 16, 16), "uint32")
    path = tmp_path / "eiger_data_000001.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset(
            "entry/data/data", data=frames, chunks=(1, 16, 16), **hdf5plugin.Bitshuffle(cname="lz4")
        )
    read = f"from napari_cdinn.core import io; print(io.read({str(path)!r}).frames().sum())"
    run = subprocess.run([sys.executable, "-c", read], capture_output=True, text=True, timeout=120)
    assert float(run.stdout) == pytest.approx(float(frames.sum())), run.stderr
    hidden = "import sys, types; sys.modules['hdf5plugin'] = types.ModuleType('hdf5plugin'); "
    run = subprocess.run(
        [sys.executable, "-c", hidden + read], capture_output=True, text=True, timeout=120,
        env={**os.environ, "HDF5_PLUGIN_PATH": str(tmp_path)},  # no plugins there
    )  # fmt: skip
    assert "compressed with an HDF5 filter this installation lacks" in run.stderr, run.stderr
    assert "eiger_data_000001.h5" in run.stderr


def test_a_damaged_gzip_chunk_is_called_damage_not_a_missing_filter(tmp_path):
    """gzip is built into HDF5: when its chunk fails to inflate the data is damaged, and the
    message said a filter was missing."""
    path = tmp_path / "frames.h5"
    frames = counts((4, 32, 32), "float32")
    with h5py.File(path, "w") as h5:
        dset = h5.create_dataset("data", data=frames, chunks=(1, 32, 32), compression="gzip")
        offset = dset.id.get_chunk_info(1).byte_offset
    with open(path, "r+b") as f:  # zero the middle of the second frame's chunk
        f.seek(offset + 20)
        f.write(bytes(200))
    with pytest.raises(InputError) as refused:
        cio.read(path, lazy=False).frames()
    assert "frames.h5" in str(refused.value) and "damaged" in str(refused.value)
    assert "lacks" not in str(refused.value)


def test_a_master_whose_data_file_is_missing_reads_what_is_there(tmp_path):
    parts = [counts((4, 8, 8), "float32")]
    master = eiger_master(tmp_path, parts)
    with h5py.File(master, "a") as h5:
        h5["entry/data/data_000002"] = h5py.ExternalLink("gone.h5", "/entry/data/data")
    with pytest.warns(InputWarning, match="entry/data/data_000002"):
        assert_stack(cio.read(master), parts[0])


def test_a_one_dimensional_nexus_plot_gives_way_to_the_frames(tmp_path):
    path = tmp_path / "spectrum.nxs"
    frames = counts((3, 8, 8), "float32")
    with h5py.File(path, "w") as h5:
        h5["raw/frames"] = frames
        plot = h5.create_group("entry/plot")
        plot.attrs["NX_class"] = "NXdata"
        plot.attrs["signal"] = "spectrum"
        plot["spectrum"] = np.arange(100.0)  # the default plot: 1-D, not frames
    stack = cio.read(path)
    assert_stack(stack, frames)
    assert stack.meta.dataset == "raw/frames"


def test_hdf5_four_d_scan_grid_is_flattened(tmp_path):
    path = tmp_path / "grid.hdf5"
    grid = counts((2, 3, 8, 8), "float32")
    with h5py.File(path, "w") as h5:
        h5["grid"] = grid
    stack = cio.read(path)
    assert_stack(stack, grid.reshape(6, 8, 8))
    np.testing.assert_array_equal(stack.intensities[1 * 3 + 2], grid[1, 2])


# --------------------------------------------------------------------------------------------
# TIFF
# --------------------------------------------------------------------------------------------


def test_tiff_single_page(tmp_path):
    frame = counts((16, 20), "uint16")
    path = tmp_path / "frame.tif"
    tifffile.imwrite(path, frame)
    stack = cio.read(path)
    assert_stack(stack, frame[None])
    assert stack.meta.reader == "tiff"


def test_tiff_multi_page(tmp_path):
    frames = RNG.random((5, 16, 16)).astype(np.float32) * 1000
    path = tmp_path / "stack.tiff"
    tifffile.imwrite(path, frames, photometric="minisblack")
    assert len(tifffile.TiffFile(path).pages) == 5
    stack = cio.read(path)
    assert_stack(stack, frames)


@pytest.mark.parametrize("lazy", [False, True])
def test_tiff_written_page_by_page_reads_every_page(tmp_path, lazy):
    """A TIFF whose pages were written one at a time holds one series per page; tifffile's
    default read gives the first page alone (four of five frames silently lost)."""
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tif:
        for k in range(5):
            tif.write(np.full((16, 16), k, np.uint16))
    stack = cio.read(path, lazy=lazy)
    assert stack.intensities.shape == (5, 16, 16)
    np.testing.assert_array_equal(np.asarray(stack.intensities)[:, 0, 0], np.arange(5))


def test_tiff_pages_of_different_shapes_are_refused_by_name(tmp_path):
    path = tmp_path / "mixed.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.zeros((16, 16), np.uint16))
        tif.write(np.zeros((8, 16), np.uint16))
    with pytest.raises(InputError, match=r"mixed\.tif.*pages differ in shape"):
        cio.read(path)


def test_tiff_folder_in_natural_order(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    numbers = [1, 2, 3, 9, 10, 11, 20]
    written = {}
    for k in reversed(numbers):  # creation order must not matter either
        frame = counts((8, 8), "uint16")
        frame[0, 0] = k
        tifffile.imwrite(folder / f"frame_{k}.tif", frame)
        written[k] = frame
    (folder / "notes.txt").write_text("not a frame")
    assert cio.file_kind(folder) == "tiff"
    stack = cio.read(folder)
    assert_stack(stack, np.stack([written[k] for k in numbers]))
    assert list(stack.intensities[:, 0, 0].astype(int)) == numbers
    assert stack.meta.extra["n_files"] == len(numbers)


@pytest.mark.parametrize("lazy", [False, True])
def test_tiff_folder_of_multi_page_files(tmp_path, lazy):
    folder = tmp_path / "blocks"
    folder.mkdir()
    blocks = counts((2, 3, 8, 8), "float32")
    for i, block in enumerate(blocks):
        tifffile.imwrite(folder / f"block_{i}.tif", block, photometric="minisblack")
    stack = cio.read(folder, lazy=lazy)
    assert stack.is_lazy is lazy
    assert stack.shape == (6, 8, 8)
    np.testing.assert_array_equal(stack.frames(), blocks.reshape(6, 8, 8))


# --------------------------------------------------------------------------------------------
# NPY / NPZ
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((16, 12), "float64"), ((4, 16, 12), "uint16"), ((2, 3, 8, 8), "float32")],
    ids=["2d", "3d", "4d"],
)
def test_npy_stacks(tmp_path, shape, dtype):
    array = counts(shape, dtype)
    path = tmp_path / "array.npy"
    np.save(path, array)
    stack = cio.read(path)
    expected = array.reshape((-1, *shape[-2:]))  # 2-D -> (1, H, W); 4-D -> (N0*N1, H, W)
    assert_stack(stack, expected)
    assert stack.meta.reader == "npy"
    if len(shape) == 4:
        np.testing.assert_array_equal(stack.intensities[4], array[1, 1])


def tike_arrays(n: int = 7, size: int = 16) -> dict[str, np.ndarray]:
    probe = RNG.normal(size=(size, size)) + 1j * RNG.normal(size=(size, size))
    return {
        "data": counts((1, n, size, size), "float32"),
        "probe": probe.astype(np.complex64).reshape(1, 1, 1, 1, size, size),
        "scan": RNG.uniform(0, 50, size=(1, n, 2)).astype(np.float32),
    }


def assert_tike(scan: object, arrays: dict[str, np.ndarray]) -> None:
    assert isinstance(scan, PtychoScan)
    assert_stack(scan.stack, arrays["data"][0])
    assert scan.positions.shape == (arrays["scan"].shape[1], 2)
    np.testing.assert_array_equal(scan.positions, arrays["scan"][0].astype(np.float64))
    assert scan.probe is not None and scan.probe.dtype == np.complex64
    np.testing.assert_array_equal(scan.probe, arrays["probe"][0, 0, 0, 0])
    assert scan.meta.reader == "npz-tike"


def test_npz_tike_layout(tmp_path):
    arrays = tike_arrays()
    path = tmp_path / "tike.npz"
    np.savez(path, **arrays)
    assert_tike(cio.read(path), arrays)


def test_npz_bz2_tike_layout(tmp_path):
    arrays = tike_arrays()
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    path = tmp_path / "tike.npz.bz2"
    path.write_bytes(bz2.compress(buffer.getvalue()))
    assert cio.file_kind(path) == "npz"
    assert_tike(cio.read(path), arrays)


def test_tike_patterns_in_fft_order_are_centred(tmp_path, real_path):
    """tike keeps the zero frequency at [0, 0]; the reader centres it (our convention)."""
    centred = np.zeros((3, 16, 16), np.float32)
    centred[:, 7:9, 7:9] = 100.0
    centred += 1
    arrays = tike_arrays(n=3)
    arrays["data"] = np.fft.ifftshift(centred, axes=(-2, -1))[None]
    np.savez(tmp_path / "fft_order.npz", **arrays)
    scan = cio.read(tmp_path / "fft_order.npz")
    np.testing.assert_array_equal(scan.stack.intensities, centred)
    assert "FFT order" in scan.meta.extra["shifted"]
    real = cio.read(real_path("ptycho/siemens-star-small.npz.bz2"))
    mean = real.stack.frames().mean(axis=0)
    assert mean[56:72, 56:72].mean() > 100 * mean[:8, :8].mean()


def test_npz_ptychonn_layout_complex_truth(tmp_path):
    reciprocal = counts((5, 16, 16), "float32")
    real = (RNG.random((5, 8, 8)) * np.exp(1j * RNG.uniform(-np.pi, np.pi, (5, 8, 8)))).astype(
        np.complex64
    )
    path = tmp_path / "ptychonn.npz"
    np.savez(path, reciprocal=reciprocal, real=real)
    stack = cio.read(path)
    assert_stack(stack, reciprocal)
    assert stack.meta.reader == "npz-ptychonn"
    assert stack.truth is not None and stack.truth.dtype == np.complex64
    np.testing.assert_array_equal(stack.truth, real)


def test_npz_ptychonn_layout_amplitude_phase_truth(tmp_path):
    reciprocal = counts((3, 16, 16), "float32")
    amplitude = RNG.random((3, 16, 16)).astype(np.float32)
    phase = RNG.uniform(-3, 3, (3, 16, 16)).astype(np.float32)
    path = tmp_path / "ptychonn_ap.npz"
    np.savez(path, reciprocal=reciprocal, real=np.stack([amplitude, phase], axis=1))
    stack = cio.read(path)
    assert_stack(stack, reciprocal)
    np.testing.assert_allclose(np.abs(stack.truth), amplitude, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.angle(stack.truth), phase, rtol=1e-5, atol=1e-5)


def test_npz_plain_archive_largest_array_and_override(tmp_path):
    small, big = counts((2, 8, 8), "float32"), counts((3, 16, 16), "float32")
    path = tmp_path / "plain.npz"
    np.savez(path, small=small, big=big, axis=np.arange(10_000.0))
    assert_stack(cio.read(path), big)
    assert_stack(cio.read(path, dataset="small"), small)
    with pytest.raises(InputError, match="no array 'nope'"):
        cio.read(path, dataset="nope")


# --------------------------------------------------------------------------------------------
# PNG
# --------------------------------------------------------------------------------------------


def assert_shots(shots: object, expected: np.ndarray) -> None:
    assert isinstance(shots, ShotSet)
    assert shots.images.dtype == np.float32
    assert shots.images.shape == expected.shape
    np.testing.assert_allclose(shots.images, expected, rtol=1e-6, atol=1e-7)
    assert shots.meta.reader == "png"


def test_png_greyscale_8_bit(tmp_path):
    image = RNG.integers(0, 256, (20, 24), dtype=np.uint8)
    path = tmp_path / "shot.png"
    Image.fromarray(image, mode="L").save(path)
    shots = cio.read(path)
    assert_shots(shots, image[None] / 255.0)
    assert shots.meta.extra["files"] == ["shot.png"]


def test_png_greyscale_16_bit(tmp_path):
    image = RNG.integers(0, 65536, (12, 12), dtype=np.uint16)
    path = tmp_path / "shot16.png"
    iio.imwrite(path, image)
    assert iio.imread(path).dtype == np.uint16
    assert_shots(cio.read(path), image[None] / 65535.0)


def test_png_folder_in_natural_order(tmp_path):
    folder = tmp_path / "shots"
    folder.mkdir()
    numbers = [1, 2, 10, 12]
    images = {}
    for k in numbers:
        image = RNG.integers(0, 256, (16, 16), dtype=np.uint8)
        image[0, 0] = k
        Image.fromarray(image, mode="L").save(folder / f"shot_{k}.png")
        images[k] = image
    (folder / "labels.csv").write_text("file,label\n")
    assert cio.file_kind(folder) == "png"
    shots = cio.read(folder)
    assert_shots(shots, np.stack([images[k] for k in numbers]) / 255.0)
    assert shots.meta.extra["files"] == [f"shot_{k}.png" for k in numbers]


def test_several_png_or_tiff_files_read_as_one_stack_in_the_order_given(tmp_path):
    images = [RNG.integers(0, 256, (16, 16), dtype=np.uint8) for _ in range(3)]
    pngs, tiffs = [], []
    for k, image in enumerate(images):
        Image.fromarray(image, mode="L").save(tmp_path / f"shot_{k}.png")
        tifffile.imwrite(tmp_path / f"frame_{k}.tif", image.astype(np.float32))
        pngs.append(tmp_path / f"shot_{k}.png")
        tiffs.append(tmp_path / f"frame_{k}.tif")
    order = [2, 0, 1]
    shots = cio.read([pngs[k] for k in order])
    assert_shots(shots, np.stack([images[k] for k in order]) / 255.0)
    assert shots.meta.extra["files"] == [f"shot_{k}.png" for k in order]
    assert "shot_2.png" in shots.meta.source and "2 more files" in shots.meta.source
    stack = cio.read([tiffs[k] for k in order])
    np.testing.assert_array_equal(stack.frames(), np.stack([images[k] for k in order]))
    assert_shots(cio.read([pngs[1]]), images[1][None] / 255.0)  # a list of one: that file
    assert cio.one_stack_of_frames(pngs) and cio.one_stack_of_frames(tiffs)
    for mixed in ([pngs[0], tiffs[1]], [pngs[0]], [tmp_path, pngs[0]]):
        assert not cio.one_stack_of_frames(mixed)


def test_png_shots_of_mixed_bit_depth_are_refused_by_name(tmp_path):
    """8-bit and 16-bit shots in one stack cannot share one scale (the 16-bit one divided by
    255 saturates, the 8-bit ones by 65535 go black)."""
    Image.fromarray(np.full((16, 16), 200, np.uint8), mode="L").save(tmp_path / "a.png")
    iio.imwrite(tmp_path / "b.png", np.full((16, 16), 50_000, np.uint16))
    with pytest.raises(InputError, match=r"b\.png.*uint16 image among uint8"):
        cio.read([tmp_path / "a.png", tmp_path / "b.png"])


def test_png_rgb_with_equal_channels_is_accepted(tmp_path):
    grey = RNG.integers(0, 256, (16, 16), dtype=np.uint8)
    path = tmp_path / "grey_as_rgb.png"
    Image.fromarray(np.stack([grey] * 3, axis=-1), mode="RGB").save(path)
    assert iio.imread(path).shape == (16, 16, 3)
    assert_shots(cio.read(path), grey[None] / 255.0)


def test_png_greyscale_with_alpha_is_accepted(tmp_path):
    grey = RNG.integers(0, 256, (16, 16), dtype=np.uint8)
    alpha = np.full((16, 16), 255, np.uint8)
    path = tmp_path / "grey_alpha.png"
    Image.fromarray(np.stack([grey, alpha], axis=-1), mode="LA").save(path)
    assert iio.imread(path).shape == (16, 16, 2)
    assert_shots(cio.read(path), grey[None] / 255.0)


# --------------------------------------------------------------------------------------------
# Lazy loading
# --------------------------------------------------------------------------------------------


def assert_lazy(stack: DiffractionStack, expected: np.ndarray) -> None:
    assert stack.is_lazy
    assert isinstance(stack.intensities, da.Array)
    assert stack.intensities.dtype == np.float32
    assert stack.shape == expected.shape
    np.testing.assert_array_equal(stack.frames(1, 3), expected[1:3].astype(np.float32))
    np.testing.assert_array_equal(stack.frames(), expected.astype(np.float32))


def lazy_files(tmp_path, write_cxi) -> tuple[dict[str, object], np.ndarray]:
    """The same 4 frames as HDF5, CXI, NPY, multi-page TIFF and a folder of TIFFs."""
    frames = counts((4, 16, 16), "uint16")
    h5_path = tmp_path / "lazy.h5"
    with h5py.File(h5_path, "w") as h5:
        h5["frames"] = frames
    npy_path = tmp_path / "lazy.npy"
    np.save(npy_path, frames)
    tif_path = tmp_path / "lazy.tif"
    tifffile.imwrite(tif_path, frames, photometric="minisblack")
    folder = tmp_path / "lazy_tifs"
    folder.mkdir()
    for i, frame in enumerate(frames):
        tifffile.imwrite(folder / f"f{i}.tif", frame)
    cxi_path = write_cxi(tmp_path / "lazy.cxi", frames)
    files = {"h5": h5_path, "cxi": cxi_path, "npy": npy_path, "tif": tif_path, "tif-folder": folder}
    return files, frames


@pytest.mark.parametrize("kind", ["h5", "npy", "tif", "tif-folder", "cxi"])
def test_lazy_true_gives_dask_frames_equal_to_file(tmp_path, write_cxi, kind):
    files, frames = lazy_files(tmp_path, write_cxi)
    stack = cio.read(files[kind], lazy=True)
    assert_lazy(stack, frames)
    assert not cio.read(files[kind], lazy=False).is_lazy


@pytest.mark.parametrize("kind", ["h5", "cxi", "npy", "tif", "tif-folder"])
def test_default_lazy_threshold_is_respected(tmp_path, monkeypatch, write_cxi, kind):
    files, frames = lazy_files(tmp_path, write_cxi)
    assert not cio.read(files[kind]).is_lazy  # 2 KiB, far below the default threshold
    monkeypatch.setattr(hdf5_module, "LAZY_BYTES", 1024)
    stack = cio.read(files[kind])
    assert_lazy(stack, frames)
    monkeypatch.setattr(hdf5_module, "LAZY_BYTES", frames.nbytes)  # exactly at the threshold
    assert not cio.read(files[kind]).is_lazy


def test_lazy_tike_scan_keeps_positions_and_probe(tmp_path):
    arrays = tike_arrays(n=5)
    path = tmp_path / "tike.npz"
    np.savez(path, **arrays)
    scan = cio.read(path, lazy=True)
    assert isinstance(scan, PtychoScan)
    assert_lazy(scan.stack, arrays["data"][0])
    np.testing.assert_array_equal(scan.positions, arrays["scan"][0])


# --------------------------------------------------------------------------------------------
# The real data in ../shared/data (skipped with a reason when absent)
# --------------------------------------------------------------------------------------------


def test_real_cxi_petra_p25(real_path):
    path = real_path("cxi/PETRAIII_P25_Near_Field_Ptycho.cxi")
    scan = cio.read(path)
    with h5py.File(path, "r") as h5:
        data = h5["entry_1/instrument_1/detector_1/data"][()]
        bits = h5["entry_1/instrument_1/detector_1/mask"][()]
        translation = h5["entry_1/sample_1/geometry_1/translation"][()].astype(np.float64)
        file_wavelength = float(h5["entry_1/instrument_1/source_1/wavelength"][()])
    assert isinstance(scan, PtychoScan)
    stack = scan.stack
    assert stack.shape == (200, 100, 100)
    assert_stack(stack, data)
    assert stack.mask is not None and stack.mask.shape == (100, 100)
    np.testing.assert_array_equal(stack.mask, bits == 0)
    assert 0 < int((~stack.mask).sum()) < stack.mask.size
    meta = scan.meta
    assert meta.energy_ev == pytest.approx(12_660, abs=10)  # ~12.66 keV
    assert meta.wavelength_m == pytest.approx(file_wavelength, rel=1e-5)
    assert meta.distance_m == pytest.approx(1.12, rel=1e-6)
    assert meta.pixel_size_m == pytest.approx((55e-6, 55e-6), rel=1e-6)
    assert scan.positions.shape == (200, 2)
    object_pixel = wavelength_m(meta.energy_ev) * 1.12 / (100 * 55e-6)
    expected = -translation[:, [1, 0]] / object_pixel
    np.testing.assert_allclose(scan.positions, expected, rtol=1e-5)
    assert np.ptp(scan.positions, axis=0).min() > 1  # the positions actually move


@pytest.fixture(scope="module")
def siemens_star(real_path):
    """Read once per module: the file is 34 MB once decompressed."""
    path = real_path("ptycho/siemens-star-small.npz.bz2")
    with bz2.open(path) as handle, np.load(io.BytesIO(handle.read())) as archive:
        arrays = {key: archive[key] for key in archive.files}
    return cio.read(path), arrays


def test_real_tike_siemens_star(siemens_star):
    scan, arrays = siemens_star
    assert isinstance(scan, PtychoScan)
    assert scan.stack.shape == (516, 128, 128)
    assert_stack(scan.stack, np.fft.fftshift(arrays["data"][0], axes=(-2, -1)))  # centred
    assert scan.probe is not None
    assert scan.probe.shape == (128, 128) and scan.probe.dtype == np.complex64
    np.testing.assert_array_equal(scan.probe, arrays["probe"].reshape(128, 128))
    assert scan.positions.shape == (516, 2)
    np.testing.assert_array_equal(scan.positions, arrays["scan"][0])


def test_real_bcdi_gold_crystal(real_path):
    path = real_path("bcdi/gold_ft_crop_64.npy")
    stack = cio.read(path)
    assert_stack(stack, np.load(path))
    assert stack.shape == (64, 64, 64)
    assert float(stack.intensities.max()) == pytest.approx(1.0, abs=1e-6)
    assert float(stack.intensities.min()) >= 0


@pytest.mark.parametrize("name", ["barke5.png", "barke6.png"])
def test_real_wideangle_shot(real_path, name):
    path = real_path(f"wideangle/{name}")
    shots = cio.read(path)
    pixels = np.asarray(Image.open(path).convert("L"), np.float32)
    assert_shots(shots, pixels[None] / 255.0)
    assert shots.images.shape == (1, 128, 128)
    assert shots.images.min() >= 0 and shots.images.max() <= 1
    assert shots.images.std() > 0.01  # a real pattern, not a blank image


def test_real_wideangle_folder(real_path):
    folder = real_path("wideangle")
    shots = cio.read(folder)
    assert isinstance(shots, ShotSet)
    assert shots.images.shape == (8, 128, 128)
    assert shots.meta.extra["files"] == [f"barke{k}.png" for k in range(1, 9)]
    assert shots.images.min() >= 0 and shots.images.max() <= 1
    fifth = np.asarray(Image.open(folder / "barke5.png").convert("L"), np.float32) / 255.0
    np.testing.assert_allclose(shots.images[4], fifth, rtol=1e-6)
