"""The results writer: the documented HDF5 layout round-trips, and a failed write loses nothing."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import h5py
import numpy as np
import pytest
import tifffile

from napari_cdinn import __version__
from napari_cdinn.core import io as cio
from napari_cdinn.core.data import ObjectResult, OrientationResult, Provenance
from napari_cdinn.core.errors import CdinnError, InputError
from napari_cdinn.core.io import results as results_module

RNG = np.random.default_rng(11)


def complex_objects(shape: tuple[int, ...]) -> np.ndarray:
    amplitude = RNG.random(shape)
    phase = RNG.uniform(-np.pi, np.pi, shape)
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def object_result() -> ObjectResult:
    objects = complex_objects((3, 16, 16))
    return ObjectResult(
        objects=objects,
        provenance=Provenance(
            method="hio+er",
            model_name="cdi-nn-64",
            model_version="1.2.0",
            parameters={
                "iterations": 200,
                "beta": 0.9,
                "shrinkwrap": {"sigma": 1.5},
                "seeds": [1, 2],
            },
            wall_time_s=12.75,
            source="/data/crystals.cxi",
        ),
        probe=complex_objects((16, 16)),
        support=np.abs(objects) > 0.5,
        chi2=RNG.random(3),
    )


def orientation_result() -> OrientationResult:
    q = RNG.normal(size=(5, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[:, 0] = np.abs(q[:, 0])
    return OrientationResult(
        quaternions=q,
        radii_nm=RNG.uniform(10, 60, 5),
        provenance=Provenance(method="msft-simplex", parameters={"starts": 8}, wall_time_s=0.5),
    )


def assert_same_object(read: ObjectResult, written: ObjectResult) -> None:
    assert isinstance(read, ObjectResult)
    assert read.objects.dtype == np.complex64
    np.testing.assert_array_equal(read.objects, written.objects)
    for name in ("probe", "support", "chi2"):
        expected = getattr(written, name)
        value = getattr(read, name)
        if expected is None:
            assert value is None, name
        else:
            assert value.dtype == np.asarray(expected).dtype, name
            np.testing.assert_array_equal(value, expected)
    assert read.provenance == written.provenance


def test_object_and_orientation_round_trip(tmp_path):
    obj, orient = object_result(), orientation_result()
    path = cio.write_results(tmp_path / "out.h5", [obj, orient])
    assert path == tmp_path / "out.h5"
    assert cio.is_results(path)
    back = cio.read_results(path)
    assert len(back) == 2
    assert_same_object(back[0], obj)
    assert isinstance(back[1], OrientationResult)
    np.testing.assert_array_equal(back[1].quaternions, orient.quaternions)
    np.testing.assert_array_equal(back[1].radii_nm, orient.radii_nm)
    assert back[1].provenance == orient.provenance
    assert back[1].flips_agreeing is None  # a fit has none
    assert back[0].provenance.parameters["shrinkwrap"] == {"sigma": 1.5}
    network = replace(orient, flips_agreeing=np.array([8, 7, 3, 8, 1]))
    (read,) = cio.read_results(cio.write_results(tmp_path / "nn.h5", [network]))
    np.testing.assert_array_equal(read.flips_agreeing, network.flips_agreeing)
    assert back[0].provenance.wall_time_s == 12.75


def test_radii_at_the_models_limit_are_marked_and_nan_rows_round_trip(tmp_path):
    """A radius clipped to the model's range is no measurement: each row says whether it is
    (``radius_at_limit``); a shot left out (NaN row, 0 flips agreeing) writes and reads."""
    parameters = {"radius_range_nm": [30.0, 160.0]}
    network = OrientationResult(
        np.vstack([np.eye(4)[:3], np.full((1, 4), np.nan)]),
        np.array([30.0, 100.0, 160.0, np.nan]),
        Provenance(method="NN", parameters=parameters),
        np.array([8, 5, 2, 0]),
    )
    assert network.radius_at_limit.tolist() == [True, False, True, False]
    path = cio.write_results(tmp_path / "nn.h5", [network, orientation_result()])
    with h5py.File(path) as h5:
        pinned = h5["entry_1/orientation_1/radius_at_limit"][()]
        assert pinned.dtype == bool and pinned.tolist() == [True, False, True, False]
        assert "radius_at_limit" not in h5["entry_1/orientation_2"]  # no range recorded
    read, _ = cio.read_results(path)
    assert np.isnan(read.radii_nm[3]) and np.isnan(read.quaternions[3]).all()
    assert read.radius_at_limit.tolist() == [True, False, True, False]


def test_layout_is_the_documented_one(tmp_path):
    obj, orient = object_result(), orientation_result()
    path = cio.write_results(tmp_path / "out.h5", [obj, orient])
    with h5py.File(path, "r") as h5:
        assert h5.attrs["creator"] == "napari-cdinn"
        assert h5.attrs["creator_version"] == __version__
        assert h5.attrs["file_kind"] == "results"
        image = h5["entry_1/image_1"]
        assert image["data"].dtype == np.complex64 and image["data"].shape == (3, 16, 16)
        assert image["support"].dtype == bool
        assert image["chi2"].shape == (3,)
        process = image["process_1"].attrs
        assert process["method"] == "hio+er"
        assert process["model_name"] == "cdi-nn-64"
        assert process["model_version"] == "1.2.0"
        assert json.loads(process["parameters"])["iterations"] == 200
        assert process["wall_time_s"] == 12.75
        assert process["created"]  # an ISO time stamp
        assert h5["entry_1/orientation_1/quaternion"].shape == (5, 4)
        assert h5["entry_1/orientation_1/radius_nm"].shape == (5,)


def test_stitched_object_without_optional_parts(tmp_path):
    obj = ObjectResult(complex_objects((40, 48)), Provenance(method="epie"))
    [back] = cio.read_results(cio.write_results(tmp_path / "stitched.h5", [obj]))
    assert_same_object(back, obj)
    assert back.objects.shape == (40, 48)
    assert back.provenance.wall_time_s is None and back.provenance.model_name is None
    assert back.provenance.parameters == {}


def test_many_results_keep_their_order(tmp_path):
    written = [
        ObjectResult(np.full((2, 4, 4), k + 1j * k, np.complex64), Provenance(method=f"m{k}"))
        for k in range(12)  # image_10 and image_11 must come after image_9
    ]
    back = cio.read_results(cio.write_results(tmp_path / "many.h5", written))
    assert [r.provenance.method for r in back] == [f"m{k}" for k in range(12)]
    for k, result in enumerate(back):
        assert result.objects[0, 0, 0] == k + 1j * k


@pytest.mark.parametrize("damage", ["no data", "bad parameters", "foreign group"])
def test_a_damaged_results_file_is_refused_by_name(tmp_path, damage):
    path = cio.write_results(tmp_path / "out.h5", [object_result()])
    with h5py.File(path, "r+") as h5:
        if damage == "no data":
            del h5["entry_1/image_1/data"]
        elif damage == "bad parameters":
            h5["entry_1/image_1/process_1"].attrs["parameters"] = "{not json"
        else:
            h5.create_group("entry_1/notes")  # not one of ours: left alone
    if damage == "foreign group":
        assert len(cio.read_results(path)) == 1
        return
    with pytest.raises(InputError, match="damaged") as info:
        cio.read_results(path)
    assert str(path) in str(info.value)


def test_a_results_file_of_an_earlier_version_with_one_scale_number_still_reads(tmp_path):
    from napari_cdinn._layers import layers_for_result

    path = cio.write_results(tmp_path / "old.h5", [object_result()])
    with h5py.File(path, "r+") as h5:
        h5["entry_1/image_1/process_1"].attrs["parameters"] = '{"object_pixel_scale": 2.0}'
    (result,) = cio.read_results(path)
    assert layers_for_result(result)[0][1]["scale"][-2:] == (2.0, 2.0)


@pytest.mark.parametrize(
    "field, value, problem",
    [
        ("data", np.bytes_("abc"), "holds data of shape ()"),
        ("data", np.arange(5.0), "holds data of shape (5,)"),
        ("parameters", "[1, 2]", "parameters that are not a JSON object"),
        ("parameters", '{"object_pixel_scale": ["abc", "abc"]}', "object_pixel_scale"),
        ("parameters", '{"object_pixel_scale": [1, 1, 2, 3]}', "object_pixel_scale"),
        ("parameters", '{"object_pixel_scale": true}', "object_pixel_scale"),
        ("support", np.ones((3, 3), bool), "support of shape (3, 3)"),
        ("quaternion", np.ones((2, 3)), "not N quaternions"),
    ],
)
def test_a_results_file_of_foreign_contents_is_refused_by_name(tmp_path, field, value, problem):
    """Contents no writer of ours makes (an edited file): refused with the file's name, where
    the napari reader crashed on them or made layers of the wrong shape or scale."""
    path = cio.write_results(tmp_path / "out.h5", [object_result(), orientation_result()])
    with h5py.File(path, "r+") as h5:
        if field == "parameters":
            h5["entry_1/image_1/process_1"].attrs["parameters"] = value
        else:
            group = h5["entry_1/orientation_1" if field == "quaternion" else "entry_1/image_1"]
            del group[field]
            group[field] = value
    with pytest.raises(InputError, match="damaged results file") as info:
        cio.read_results(path)
    assert str(path) in str(info.value) and problem in str(info.value)


def test_results_file_is_not_mistaken_for_data(tmp_path):
    path = cio.write_results(tmp_path / "out.h5", [object_result()])
    not_results = tmp_path / "data.h5"
    with h5py.File(not_results, "w") as h5:
        h5["frames"] = np.ones((2, 4, 4))
    assert cio.is_results(path) and not cio.is_results(not_results)
    with pytest.raises(InputError, match="not a napari-cdinn results file") as info:
        cio.read_results(not_results)
    assert str(not_results) in str(info.value)


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------


def test_failed_write_leaves_existing_file_untouched(tmp_path, monkeypatch):
    target = tmp_path / "out.h5"
    cio.write_results(target, [object_result()])
    before = target.read_bytes()
    calls = []

    def fail_after_first(group, provenance):
        calls.append(group.name)
        if len(calls) == 2:  # the first group's data is already in the new file
            raise OSError("disk full")
        original(group, provenance)

    original = results_module._write_provenance
    monkeypatch.setattr(results_module, "_write_provenance", fail_after_first)
    with pytest.raises(CdinnError, match=r"out\.h5: could not be written \(disk full"):
        cio.write_results(target, [object_result(), orientation_result()])
    assert len(calls) == 2
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]  # no temporary file left
    assert len(cio.read_results(target)) == 1


def test_failed_write_leaves_no_file_behind(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(results_module, "_write_provenance", boom)
    with pytest.raises(RuntimeError, match="interrupted"):
        cio.write_results(tmp_path / "new.h5", [object_result()])
    assert list(tmp_path.iterdir()) == []


def test_unwritable_result_type_is_refused_atomically(tmp_path):
    target = tmp_path / "out.h5"
    cio.write_results(target, [object_result()])
    before = target.read_bytes()
    with pytest.raises(CdinnError, match="cannot write a str"):
        cio.write_results(target, [object_result(), "not a result"])  # type: ignore[list-item]
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5"]


def test_write_to_missing_folder_is_refused(tmp_path):
    target = tmp_path / "no" / "such" / "folder" / "out.h5"
    with pytest.raises(CdinnError, match="does not exist") as info:
        cio.write_results(target, [object_result()])
    assert str(target) in str(info.value)
    assert not (tmp_path / "no").exists()


def test_written_files_get_the_users_permissions_not_owner_only(tmp_path):
    """The temporary file a result is written to is owner-only; the result is not: a new file
    gets what the umask allows, a replaced one keeps its old permissions."""
    old = os.umask(0o022)
    try:
        target = tmp_path / "out.h5"
        cio.write_results(target, [object_result()])
        assert target.stat().st_mode & 0o777 == 0o644
        target.chmod(0o640)
        cio.write_results(target, [object_result()])
        assert target.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_writing_never_changes_the_process_umask(tmp_path, monkeypatch):
    """It was set to 0 for a moment to be read, so files other threads (the docks' workers,
    napari) created then were world-writable."""
    old = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda *_: pytest.fail("the umask was changed"))
        target = cio.write_results(tmp_path / "out.h5", [object_result()])
        assert target.stat().st_mode & 0o777 == 0o640  # a new file, under the umask
        with results_module.atomic_path(target) as tmp:  # owner-only while it is written
            assert tmp.stat().st_mode & 0o777 == 0o600
    finally:
        monkeypatch.undo()
        os.umask(old)


def test_write_onto_a_folder_or_nothing_is_refused(tmp_path):
    with pytest.raises(CdinnError, match="is a folder"):
        cio.write_results(tmp_path, [object_result()])
    with pytest.raises(CdinnError, match="nothing to write"):
        cio.write_results(tmp_path / "empty.h5", [])
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# TIFF export
# --------------------------------------------------------------------------------------------


def test_write_tiff_round_trip_with_metadata(tmp_path):
    image = RNG.normal(size=(3, 8, 10))
    path = cio.write_tiff(tmp_path / "phase.tif", image, {"kind": "phase", "units": "rad"})
    with tifffile.TiffFile(path) as tif:
        data = tif.asarray()
        description = tif.pages[0].description
        assert len(tif.pages) == 3  # one greyscale page per frame, not one RGB image
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data, image.astype(np.float32))
    assert json.loads(description) == {"creator": "napari-cdinn", "kind": "phase", "units": "rad"}
    assert [p.name for p in tmp_path.iterdir()] == ["phase.tif"]
    lazy = cio.read(path, lazy=True)  # the project's own reader pages through it frame by frame
    np.testing.assert_array_equal(lazy.frames(), image.astype(np.float32))
    cio.write_tiff(path, image[:1])  # its own TIFF it replaces; one frame of shape (1, H, W),
    lazy = cio.read(path, lazy=True)  # which a lazy read refused as "(1, 8, 10) differs"
    np.testing.assert_array_equal(lazy.frames(), image[:1].astype(np.float32))


@pytest.mark.parametrize("suffix", [".tif", ".json"])
def test_a_tiff_or_json_napari_cdinn_did_not_write_is_not_replaced(tmp_path, suffix):
    """The TIFF writer (napari's Save) and info -o replaced any such file: a raw data TIFF
    among them."""
    theirs = tmp_path / f"raw{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(theirs, np.ones((2, 4, 4), np.uint16))
    else:
        theirs.write_text('{"beamtime": 42}')
    before = theirs.read_bytes()
    with pytest.raises(CdinnError, match="napari-cdinn did not write it"):
        if suffix == ".tif":
            cio.write_tiff(theirs, np.zeros((4, 4)))
        else:
            results_module.check_output(theirs, writes="summary")
    assert theirs.read_bytes() == before


def test_write_tiff_refuses_complex_and_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "amp.tif"
    cio.write_tiff(target, np.ones((4, 4)))
    before = target.read_bytes()
    with pytest.raises(CdinnError, match="amplitude and phase"):
        cio.write_tiff(target, np.ones((4, 4), np.complex64))

    def half_written(path, data, **kwargs):
        path.write_bytes(b"II*\x00 partial")
        raise OSError("no space left on device")

    monkeypatch.setattr(results_module.tifffile, "imwrite", half_written)
    with pytest.raises(CdinnError, match=r"could not be written \(no space"):
        cio.write_tiff(target, np.zeros((4, 4)))
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["amp.tif"]
