"""The command-line face: exit codes, one-line errors, and that it writes what it says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import imageio.v3 as iio
import numpy as np
import pytest

from napari_cdinn.cli import main
from napari_cdinn.core import io

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_data"


def test_info_on_sample_writes_json_summary(tmp_path, capsys):
    out = tmp_path / "summary.json"
    assert main(["info", str(SAMPLES / "ptycho_scan.cxi"), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "PtychoScan" in printed and "(169, 64, 64)" in printed
    summary = json.loads(out.read_text())
    assert summary["kind"] == "PtychoScan"
    assert summary["reader"] == "cxi"
    assert summary["energy_ev"] == pytest.approx(10_000.0)


def test_info_on_results_file(tmp_path, capsys):
    from napari_cdinn.core.data import ObjectResult, Provenance

    path = tmp_path / "res.h5"
    io.write_results(path, [ObjectResult(np.ones((3, 8, 8), np.complex64), Provenance("test"))])
    assert main(["info", str(path)]) == 0
    assert "ObjectResult (3, 8, 8) (test)" in capsys.readouterr().out


def test_missing_file_is_one_clear_line(capsys):
    assert main(["info", "/no/such/file.h5"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["napari-cdinn: error: /no/such/file.h5: file not found"]


def test_an_output_in_a_missing_folder_is_refused_before_the_work(tmp_path, capsys):
    """The output path is checked first: the input (which does not exist either) is not read."""
    out = tmp_path / "no_such_folder" / "out.h5"
    assert main(["invert", str(tmp_path / "missing.cxi"), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "no_such_folder" in err and "does not exist" in err and "missing.cxi" not in err


@pytest.mark.parametrize("command", ["invert", "info"])
def test_an_output_that_is_the_input_is_refused_and_the_input_kept(tmp_path, capsys, command):
    """``invert X -o X`` (or through another path to the same file) would replace the user's
    data with its results."""
    data = tmp_path / "scan.cxi"
    data.write_bytes((SAMPLES / "cdi_crystals.cxi").read_bytes())
    before = data.read_bytes()
    same = tmp_path / "sub" / ".." / "scan.cxi"
    (tmp_path / "sub").mkdir()
    assert main([command, str(data), "-o", str(same)]) == 1
    assert "is also an input" in capsys.readouterr().err
    assert data.read_bytes() == before


def test_a_frame_of_an_input_folder_is_refused_as_the_output(tmp_path, capsys):
    """``invert FOLDER -o FOLDER/frame.png``: the folder's frames are inputs too."""
    folder = tmp_path / "shots"
    folder.mkdir()
    for name in ("barke5.png", "barke6.png"):
        (folder / name).write_bytes((SAMPLES.parent.parent / "shared" / "data" / "wideangle" /
                                     name).read_bytes())  # fmt: skip
    before = (folder / "barke6.png").read_bytes()
    assert main(["invert", str(folder), "-o", str(folder / "barke6.png")]) == 1
    assert "barke6.png: is also an input" in capsys.readouterr().err
    assert (folder / "barke6.png").read_bytes() == before


@pytest.mark.parametrize(
    ("command", "output"), [("invert", "out.png"), ("info", "summary.cxi"), ("simulate", "s.tif")]
)
def test_an_output_of_another_kind_of_file_is_refused(tmp_path, capsys, command, output):
    argv = {"invert": ["invert", str(SAMPLES / "cdi_crystals.cxi")],
            "info": ["info", str(SAMPLES / "cdi_crystals.cxi")],
            "simulate": ["simulate", "cdi", "-n", "1"]}[command]  # fmt: skip
    assert main([*argv, "-o", str(tmp_path / output)]) == 1
    assert "give a file name ending in" in capsys.readouterr().err
    assert not (tmp_path / output).exists()


def test_only_files_napari_cdinn_wrote_are_replaced(tmp_path, capsys):
    """An HDF5 file already at ``-o`` is replaced only when it is an earlier output (signed
    ``creator``); anyone else's (a raw data file) is kept and the command refused."""
    theirs = tmp_path / "raw.h5"
    with h5py.File(theirs, "w") as h5:
        h5["data"] = np.ones((2, 8, 8))
    before = theirs.read_bytes()
    argv = ["simulate", "cdi", "-n", "1", "-o"]
    assert main([*argv, str(theirs)]) == 1
    assert "napari-cdinn did not write it" in capsys.readouterr().err
    assert theirs.read_bytes() == before
    ours = tmp_path / "simulated.cxi"
    assert main([*argv, str(ours)]) == 0
    assert main([*argv, str(ours), "--seed", "3"]) == 0  # an earlier output: replaced
    simulated = ours.read_bytes()  # results never replace a simulated scan, nor the reverse
    assert main(["invert", str(SAMPLES / "cdi_crystals.cxi"), "-o", str(ours)]) == 1
    assert "holds simulated data, and this command writes results" in capsys.readouterr().err
    assert ours.read_bytes() == simulated
    results = tmp_path / "results.h5"
    assert main(["invert", str(SAMPLES / "cdi_crystals.cxi"), "-o", str(results)]) == 0
    assert main([*argv, str(results)]) == 1
    assert "holds results, and this command writes simulated data" in capsys.readouterr().err


def test_a_model_written_over_its_base_is_refused_and_the_base_kept(tmp_path, capsys):
    """``train ptycho ... --model base.safetensors -o base`` writes base.safetensors (the
    suffix added) and its card: the base model would be lost."""
    base = tmp_path / "base.safetensors"
    before = b"the user's model (not read: the output is checked first)"
    base.write_bytes(before)
    argv = ["train", "ptycho", str(SAMPLES / "ptycho_scan.cxi"), "--reference", "r.h5",
            "--region", "0:9,0:9", "--model", str(base), "-o", str(tmp_path / "base")]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "base.safetensors: is also an input" in err
    assert base.read_bytes() == before


def test_a_results_file_is_refused_as_data(tmp_path, capsys):
    """A results file holds arrays (supports, quaternion tables) that are not patterns."""
    from napari_cdinn.core.data import ObjectResult, Provenance

    results = tmp_path / "res.h5"
    io.write_results(results, [ObjectResult(np.ones((2, 8, 8), np.complex64), Provenance("t"))])
    assert main(["invert", str(results), "-o", str(tmp_path / "again.h5")]) == 1
    err = capsys.readouterr().err
    assert "res.h5" in err and "results file, not diffraction data" in err
    assert not (tmp_path / "again.h5").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["invert", "x.cxi", "-o", "out.h5", "--iterations", "0"],
        ["invert", "x.cxi", "-o", "out.h5", "--iterations", "-5"],
        ["simulate", "ptycho", "-o", "s.cxi", "--step", "0"],
        ["simulate", "ptycho", "-o", "s.cxi", "--every", "nan"],
        ["train", "ptycho", "x.cxi", "--seconds", "-1"],
        ["simulate", "cdi", "-o", "s.cxi", "--photons", "1e21"],  # numpy's Poisson overflowed
    ],
)
def test_zero_or_negative_counts_are_refused_up_front(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "must be at least" in err or "is not a number" in err or "at most 1e+15" in err


def test_corrupt_file_is_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "broken.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    assert main(["info", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.h5" in err[0] and "not a readable HDF5" in err[0]


def test_nan_pixels_warn_on_stderr_and_succeed(tmp_path, capsys):
    data = np.ones((2, 8, 8), np.float32)
    data[0, 1, 1] = np.nan
    path = tmp_path / "nan.npy"
    np.save(path, data)
    assert main(["info", str(path)]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "1 NaN/Inf" in err and "nan.npy" in err


def test_data_of_the_wrong_mode_is_refused_and_nothing_written(tmp_path, capsys):
    out = tmp_path / "out.h5"
    sample = str(SAMPLES / "cdi_crystals.cxi")
    assert main(["invert", sample, "--mode", "wideangle", "-o", str(out)]) == 1
    assert "64 x 64 pixels" in capsys.readouterr().err
    assert main(["invert", sample, "--mode", "ptycho", "-o", str(out)]) == 1
    assert "no scan positions" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit):  # a usage error: training/train_wideangle.py trains it
        main(["train", "wideangle"])
    assert "invalid choice: 'wideangle'" in capsys.readouterr().err
    assert main(["train", "ptycho"]) == 1
    assert "needs SCAN" in capsys.readouterr().err


def test_ptycho_epie_then_retraining_on_a_region_then_the_network(tmp_path, capsys):
    scan = str(SAMPLES / "ptycho_scan.cxi")
    epie = tmp_path / "epie.h5"
    assert main(["invert", scan, "--mode", "ptycho", "--method", "epie", "--iterations", "5",
                 "-o", str(epie)]) == 0  # fmt: skip
    (reference,) = io.read_results(epie)
    assert reference.origin is not None and reference.probe.shape == (64, 64)
    model = tmp_path / "mine.safetensors"
    argv = ["train", "ptycho", scan, "--reference", str(epie), "--region=-5:200,-5:110",
            "--seconds", "3", "--simulated", "200", "-o", str(model)]  # fmt: skip
    assert main(argv) == 0
    assert "fine-tuned on" in capsys.readouterr().out
    assert model.exists() and model.with_suffix(".json").exists()
    training = json.loads(model.with_suffix(".json").read_text())["training"]
    assert training["simulated_pairs"] == 200 and training["reference_file"] == str(epie)
    assert training["reference"].startswith("ePIE reconstruction of")
    out = tmp_path / "nn.h5"
    assert main(["invert", scan, "--mode", "ptycho", "--model", str(model), "-o", str(out)]) == 0
    (network,) = io.read_results(out)
    assert network.objects.shape == reference.objects.shape and network.origin == reference.origin
    assert network.provenance.model_name == "mine"
    assert main(["train", "ptycho", scan, "--reference", str(epie), "--region", "5:1,0:9"]) == 1
    assert "empty" in capsys.readouterr().err
    # napari's Save Selected Layers may put the network's result before ePIE's: ePIE teaches
    both = tmp_path / "both.h5"
    io.write_results(both, [network, reference])
    argv = ["train", "ptycho", scan, "--reference", str(both), "--region=-5:200,-5:110",
            "--seconds", "1", "--simulated", "0", "-o", str(tmp_path / "again.safetensors")]  # fmt: skip
    assert main(argv) == 0
    assert "the teacher is the ePIE one (number 2 of them)" in capsys.readouterr().err
    training = json.loads((tmp_path / "again.json").read_text())["training"]
    assert training["reference"].startswith("ePIE") and Path(training["scan"]).is_absolute()
    cdi_model = Path(__file__).resolve().parents[1] / "src/napari_cdinn/weights/cdi_nn.safetensors"
    argv = ["train", "ptycho", scan, "--reference", str(epie), "--region", "0:90,0:90",
            "--model", str(cdi_model)]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "cdi_nn.safetensors" in err and "not a ptychography one" in err


def test_train_ptycho_refuses_a_stray_position_before_making_any_array(tmp_path, capsys):
    """One position at 1e7 pixels: refused by name, not a 91 TiB region mask."""
    scan = io.read(SAMPLES / "ptycho_scan.cxi")
    positions = scan.positions.copy()
    positions[3] = 1e7
    path = tmp_path / "stray.npz"
    np.savez(path, data=scan.stack.frames()[None], scan=positions[None], probe=scan.probe)
    argv = ["train", "ptycho", str(path), "--reference", str(path), "--region", "0:50,0:50",
            "-o", str(tmp_path / "m.safetensors")]  # fmt: skip
    assert main(argv) == 1
    assert "stray.npz" in (err := capsys.readouterr().err) and "a stray position" in err


def test_ptycho_network_counts_the_positions_it_inverted(tmp_path, capsys):
    """A frame of NaN is left out of the network's input: the summary says so."""
    scan = io.read(SAMPLES / "ptycho_scan.cxi")
    frames = scan.stack.frames().copy()
    frames[2] = np.nan
    path = tmp_path / "holed.npz"
    np.savez(path, data=frames[None], scan=scan.positions[None], probe=scan.probe)
    assert main(["invert", str(path), "--mode", "ptycho", "-o", str(tmp_path / "nn.h5")]) == 0
    n = len(scan.positions)
    assert capsys.readouterr().out.startswith(f"NN: {n - 1} positions (1 left out) in")


def test_ptycho_refine_runs_epie_from_the_network_image(tmp_path, capsys):
    out = tmp_path / "refined.h5"
    argv = ["invert", str(SAMPLES / "ptycho_scan.cxi"), "--mode", "ptycho", "--method", "refine",
            "--iterations", "2", "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("NN+ePIE:")
    (refined,) = io.read_results(out)
    assert refined.provenance.method == "NN+ePIE" and refined.probe is not None
    assert refined.provenance.parameters["epochs"] == 2
    assert np.isfinite(refined.objects).all()


def test_invert_cdi_network_writes_documented_layout(tmp_path, capsys):
    out = tmp_path / "out.h5"
    argv = ["invert", str(SAMPLES / "cdi_crystals.cxi"), "--frames", "0:4", "-o", str(out)]
    assert main(argv) == 0
    assert "NN: 4 pattern(s)" in capsys.readouterr().out
    (result,) = io.read_results(out)
    assert result.objects.shape == (4, 64, 64) and result.objects.dtype == np.complex64
    assert result.provenance.model_name == "cdi_nn"
    assert result.provenance.wall_time_s > 0
    assert result.chi2.shape == (4,)
    argv = ["invert", str(SAMPLES / "cdi_crystals.cxi"), "--frames", "0:2", "--method", "refine",
            "--iterations", "5", "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    network, refined = io.read_results(out)
    assert refined.provenance.method == "NN+RAAR/ER"
    assert refined.provenance.model_name == "cdi_nn"  # the model whose answer it refined
    assert refined.provenance.parameters["device"] == network.provenance.parameters["device"]


def test_invert_cdi_names_a_missed_shot_by_its_frame_in_the_file(tmp_path, capsys):
    """Frame 7 of the file blank (a missed shot), frames 5:10 asked for: the warning names
    frame 7 (it said [2], and refused the whole stack), the others invert."""
    stack = io.read(SAMPLES / "cdi_crystals.cxi")
    frames = np.array(stack.intensities)
    frames[7] = 0
    path = tmp_path / "series.npy"
    np.save(path, frames)
    out = tmp_path / "out.h5"
    assert main(["invert", str(path), "--frames", "5:10", "-o", str(out)]) == 0
    printed = capsys.readouterr()
    assert "series.npy: 1 frame(s) [7] hold no measured signal" in printed.err
    assert "median chi2 nan" not in printed.out and "(frame " in printed.out
    (result,) = io.read_results(out)
    assert result.provenance.parameters["file_frames"] == [5, 6, 7, 8, 9]
    assert np.isnan(result.chi2[2]) and np.isfinite(result.chi2[[0, 1, 3, 4]]).all()


def test_results_record_the_file_frames_they_answer_for(tmp_path):
    """``--frames -1`` on a 32-frame file: a result that says it is frame 31's (and that the
    file held amplitudes, when it did), in every mode."""
    cdi_out, scan_out = tmp_path / "cdi.h5", tmp_path / "scan.h5"
    argv = ["invert", str(SAMPLES / "cdi_crystals.cxi"), "--frames", "-1", "--amplitudes"]
    assert main([*argv, "-o", str(cdi_out)]) == 0
    (result,) = io.read_results(cdi_out)
    assert result.provenance.parameters["file_frames"] == [31]
    assert result.provenance.parameters["file_held_amplitudes"] is True
    argv = ["invert", str(SAMPLES / "ptycho_scan.cxi"), "--frames", "0:169:2"]
    assert main([*argv, "-o", str(scan_out)]) == 0
    (result,) = io.read_results(scan_out)
    assert result.provenance.parameters["file_frames"] == list(range(0, 169, 2))
    assert "file_held_amplitudes" not in result.provenance.parameters


def test_results_record_the_input_by_absolute_path_and_dataset(tmp_path, monkeypatch):
    """A relative source and no dataset: a result could not tell /a/data's from /b/data's."""
    import h5py

    stack = io.read(SAMPLES / "cdi_crystals.cxi")
    with h5py.File(tmp_path / "two.h5", "w") as h5:
        h5["a/data"] = stack.intensities[:2]
        h5["b/data"] = stack.intensities[2:5]
    monkeypatch.chdir(tmp_path)
    assert main(["invert", "two.h5", "--dataset", "/b/data", "-o", "r.h5"]) == 0
    (result,) = io.read_results(tmp_path / "r.h5")
    assert result.provenance.source == str((tmp_path / "two.h5").resolve())
    assert result.provenance.parameters["file_dataset"] == "b/data"
    assert len(result.objects) == 3


def test_results_of_several_shot_files_record_each_by_absolute_path(tmp_path, monkeypatch):
    """``invert shots/a.png shots/b.png`` run in the folder above: the result recorded
    "shots/a.png and 1 more files" and the base names, which name no file once it moves."""
    folder = tmp_path / "shots"
    folder.mkdir()
    for k in range(2):
        iio.imwrite(folder / f"s{k}.png", _textured(k))
    monkeypatch.chdir(tmp_path)
    names = [str(folder.resolve() / f"s{k}.png") for k in range(2)]
    for inputs in (["shots/s0.png", "shots/s1.png"], ["shots"]):
        assert main(["invert", *inputs, "--mode", "wideangle", "-o", "r.h5"]) == 0
        (result,) = io.read_results(tmp_path / "r.h5")
        assert result.provenance.parameters["file_names"] == names
    assert result.provenance.source == str(folder.resolve())  # the folder
    assert main(["invert", "shots/s0.png", "shots/s1.png", "--frames", "1", "-o", "r.h5"]) == 0
    (result,) = io.read_results(tmp_path / "r.h5")
    assert result.provenance.source == f"{names[0]} and 1 more files"
    assert result.provenance.parameters["file_names"] == names[1:]


def test_amplitudes_are_refused_for_log_scale_shots(tmp_path, capsys):
    from PIL import Image

    shot = tmp_path / "shot.png"  # an 8-bit display image: log scale, as the real shots
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 128), np.uint8)).save(shot)
    out = tmp_path / "w.h5"
    argv = ["invert", str(shot), "--mode", "wideangle", "--amplitudes", "-o", str(out)]
    assert main(argv) == 1
    assert "--amplitudes is for files of sqrt(I)" in capsys.readouterr().err
    assert not out.exists()


def test_invert_cdi_iterative_takes_the_iterations_given(tmp_path):
    out = tmp_path / "it.h5"
    argv = ["invert", str(SAMPLES / "cdi_crystals.cxi"), "--method", "iterative",
            "--iterations", "40", "--frames", "0", "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    (result,) = io.read_results(out)
    schedule = result.provenance.parameters["schedule"]
    assert sum(n for _, n in schedule) == 40  # 620 by default


def test_invert_bad_frames_and_method_are_refused(tmp_path, capsys):
    sample = str(SAMPLES / "cdi_crystals.cxi")
    assert main(["invert", sample, "--frames", "99", "-o", str(tmp_path / "a.h5")]) == 1
    assert "the stack has 32 frames" in capsys.readouterr().err
    assert main(["invert", sample, "--method", "magic", "-o", str(tmp_path / "b.h5")]) == 1
    assert "not one of nn, iterative, refine" in capsys.readouterr().err
    for spec, message in (("1:2:3:4", "use N, START:STOP"), ("10:5", "selects none"),
                          ("100:", "selects none"), ("0:9:0", "use N, START:STOP")):  # fmt: skip
        assert main(["invert", sample, "--frames", spec, "-o", str(tmp_path / "c.h5")]) == 1
        assert message in capsys.readouterr().err


def test_simulate_cdi_roundtrip(tmp_path):
    out = tmp_path / "cdi.cxi"
    assert main(["simulate", "cdi", "-n", "5", "-o", str(out), "--seed", "3", "--size", "32"]) == 0
    data = io.read(out)
    assert data.intensities.shape == (5, 32, 32)
    assert data.truth.shape == (5, 32, 32)
    centred = np.fft.ifftshift(data.truth, axes=(1, 2))
    expected = np.abs(np.fft.fftshift(np.fft.fft2(centred), axes=(1, 2))) ** 2
    np.testing.assert_allclose(data.intensities, expected, rtol=1e-4, atol=1e-3)
    # how it was made travels with it (it was dropped: a file could not say its seed or dose)
    assert data.meta.extra["simulation"] == {
        "mode": "cdi", "n": 5, "size": 32, "seed": 3, "photons": None,
    }  # fmt: skip
    scan_file = tmp_path / "scan.cxi"
    assert main(["simulate", "ptycho", "-n", "9", "--photons", "1e5", "-o", str(scan_file)]) == 0
    assert io.read(scan_file).stack.meta.extra["simulation"]["photons"] == 1e5


def test_simulate_ptycho_gives_requested_positions(tmp_path):
    out = tmp_path / "scan.cxi"
    assert main(["simulate", "ptycho", "-n", "40", "-o", str(out), "--step", "12"]) == 0
    scan = io.read(out)
    assert scan.positions.shape == (40, 2)
    assert scan.stack.intensities.shape == (40, 64, 64)
    assert scan.truth is not None and scan.probe.shape == (64, 64)
    with h5py.File(out) as h5:
        assert h5["entry_1/sample_1/geometry_1/translation"].shape == (40, 3)
    spiral = tmp_path / "spiral.cxi"  # a spiral fills a disc: the object grows to hold them
    assert main(["simulate", "ptycho", "-n", "100", "--scan", "spiral", "-o", str(spiral)]) == 0
    assert len(io.read(spiral).positions) == 100


def test_simulate_ptycho_says_when_fewer_positions_fit(tmp_path, capsys):
    out = tmp_path / "small.cxi"
    assert main(["simulate", "ptycho", "-n", "500", "--object-size", "100", "-o", str(out)]) == 0
    said = capsys.readouterr().out
    assert "16 scan positions on an object of 100 x 100 pixels (fewer than -n 500" in said


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["simulate", "cdi", "-n", "1", "--size", "8"], "at least 16 pixels"),  # looped forever
        (["simulate", "wideangle", "-n", "1", "--size", "64"], "the detector is 128 x 128"),
        (["simulate", "ptycho", "-n", "4", "--size", "16", "--object-size", "8"], "no room"),
        (["simulate", "ptycho", "-n", "4", "--size", "16", "--object-size", "17"], "no scan"),
    ],
)
def test_simulate_refuses_sizes_it_cannot_make(tmp_path, capsys, argv, message):
    out = tmp_path / "s.cxi"
    assert main([*argv, "-o", str(out)]) == 1
    assert message in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("region", ["nan:50,0:50", "-inf:50,0:50", "0:1e400,0:50"])
def test_a_region_of_bounds_that_are_not_numbers_is_refused(region):
    from napari_cdinn.cli import CdinnError, parse_region

    with pytest.raises(CdinnError, match="finite"):
        parse_region(region)


def test_simulate_refuses_no_patterns(tmp_path, capsys):
    assert main(["simulate", "wideangle", "-n", "0", "-o", str(tmp_path / "w.h5")]) == 1
    assert "at least 1" in capsys.readouterr().err
    assert not (tmp_path / "w.h5").exists()


def test_console_script_help_for_each_command():
    for command in ["info", "view", "invert", "simulate", "train"]:
        done = subprocess.run(
            [sys.executable, "-m", "napari_cdinn.cli", command, "--help"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "usage: napari-cdinn" in done.stdout


def test_simulate_and_invert_wideangle_shots(tmp_path, capsys):
    from napari_cdinn.core import icosahedral

    shots = tmp_path / "shots.cxi"
    assert main(["simulate", "wideangle", "-n", "3", "--seed", "5", "-o", str(shots)]) == 0
    with h5py.File(shots) as h5:
        assert h5["entry_1/data_1/data"].shape == (3, 128, 128)
        truth = h5["entry_1/sample_1/orientation"][()]
        radii = h5["entry_1/sample_1/radius_nm"][()]
    out = tmp_path / "answers.h5"
    argv = ["invert", str(shots), "--mode", "wideangle", "--method", "refine", "-o", str(out)]
    assert main([*argv, "--frames", "0:2", "--iterations", "20"]) == 0
    printed = capsys.readouterr().out
    assert "NN: 2 shot(s)" in printed and "NN + simplex: 2 shot(s)" in printed
    network, refined = io.read_results(out)
    assert network.quaternions.shape == (2, 4) and refined.radii_nm.shape == (2,)
    agreeing = network.flips_agreeing  # written for the network, not for fits
    assert agreeing.shape == (2,) and ((agreeing >= 1) & (agreeing <= 8)).all()
    assert refined.flips_agreeing is None
    assert f"shot 0: radius {network.radii_nm[0]:.1f} nm" in printed
    assert f"{agreeing[0]} of 8 flips agree" in printed
    assert network.provenance.model_name == "wideangle_nn"
    assert np.median(icosahedral.misorientation(refined.quaternions, truth[:2])) < 20
    assert np.all(np.abs(refined.radii_nm - radii[:2]) < 20)
    # a selection further in: printed and saved with the file's frame numbers, not 0, 1
    assert main([*argv[:-4], "--method", "nn", "--frames", "1:3", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "shot 1: radius" in printed and "shot 2: radius" in printed
    (network,) = io.read_results(out)
    assert network.provenance.parameters["file_frames"] == [1, 2]


def _textured(seed: int) -> np.ndarray:
    """A 128 x 128 8-bit shot with a pattern (varying values), not one value everywhere."""
    return np.random.default_rng(seed).integers(20, 255, (128, 128), dtype=np.uint8)


def test_invert_wideangle_leaves_out_blank_or_saturated_shots(tmp_path, capsys):
    """One blank shot refused the whole stack, and a saturated (all 255) one got a confident
    answer: both are left out, named by frame and file; their rows are NaN; the rest inverted."""
    path = tmp_path / "zeros.npy"
    np.save(path, np.zeros((2, 128, 128), np.float32))
    out = tmp_path / "out.h5"
    assert main(["invert", str(path), "--mode", "wideangle", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "zeros.npy" in err and "hold no signal" in err and "nothing to invert" in err
    assert not out.exists()
    folder = tmp_path / "shots"  # shots named by their frame in the file(s), and their file
    folder.mkdir()
    for k, image in enumerate((_textured(0), np.zeros((128, 128), np.uint8), _textured(2))):
        iio.imwrite(folder / f"s{k}.png", image)
    iio.imwrite(folder / "s3.png", np.full((128, 128), 255, np.uint8))
    argv = ["invert", str(folder), "--frames", "1:4", "-o", str(out)]
    assert main(argv) == 0
    printed, err = capsys.readouterr()
    assert "shot(s) 1 (s1.png), 3 (s3.png) hold no signal" in err and "left out" in err
    assert "shot 1: left out" in printed and "shot 3: left out" in printed
    assert "shot 2: radius" in printed
    (network,) = io.read_results(out)
    assert np.isnan(network.radii_nm[[0, 2]]).all() and np.isnan(network.quaternions[0]).all()
    assert np.isfinite(network.radii_nm[1]) and network.flips_agreeing.tolist()[::2] == [0, 0]
    assert network.provenance.parameters["file_frames"] == [1, 2, 3]
    argv = ["invert", str(folder), "--method", "fit", "--iterations", "5", "-o", str(out)]
    assert main(argv) == 0  # the fit leaves them out too: its rows are the others'
    (fitted,) = io.read_results(out)
    assert fitted.provenance.parameters["file_frames"] == [0, 2]


def test_invert_takes_several_shot_files(tmp_path, capsys):
    """``invert shots/*.png``: the shell hands over several files, read as one stack."""
    from PIL import Image

    paths = []
    for k in range(2):
        paths.append(tmp_path / f"shot_{k}.png")
        Image.fromarray(_textured(k), mode="L").save(paths[-1])  # two different shots
    out = tmp_path / "out.h5"
    assert main(["invert", *map(str, paths), "--mode", "wideangle", "-o", str(out)]) == 0
    (network,) = io.read_results(out)
    assert network.radii_nm.shape == (2,)
    assert "shot_0.png" in network.provenance.source


def test_wideangle_shots_file_is_inverted_as_such_without_mode(tmp_path, capsys):
    """A CXI of wide-angle shots (with the true orientations, as ``simulate`` writes them) says
    what it holds: ``invert`` takes the wide-angle mode without ``--mode``."""
    shots = tmp_path / "shots.cxi"
    assert main(["simulate", "wideangle", "-n", "2", "--seed", "3", "-o", str(shots)]) == 0
    out = tmp_path / "answers.h5"
    assert main(["invert", str(shots), "-o", str(out)]) == 0
    (network,) = io.read_results(out)
    assert network.radii_nm.shape == (2,) and network.flips_agreeing is not None


def test_a_reader_that_leaves_early_loses_no_result(tmp_path):
    """``invert ... | head``: the pipe's reader goes before the answers are printed; the work
    still ends, its file is written, and no traceback follows."""
    shots = tmp_path / "shots.cxi"
    assert main(["simulate", "wideangle", "-n", "2", "--seed", "3", "-o", str(shots)]) == 0
    out = tmp_path / "answers.h5"
    command = [sys.executable, "-m", "napari_cdinn.cli", "invert", str(shots), "-o", str(out)]
    command += ["--mode", "wideangle"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone
    errors = process.stderr.read().decode()
    assert process.wait(timeout=120) == 0, errors
    assert "BrokenPipe" not in errors and "Traceback" not in errors
    assert io.read_results(out)[0].radii_nm.shape == (2,)


def test_refine_unsure_only_refines_the_shots_few_flips_agree_on(tmp_path, capsys, real_path):
    """The real shots barke5 and barke6 are unsure answers (few flips agree), the sample's
    simulated shots sure ones: ``--unsure-only`` refines the former and skips the latter."""
    shots = [str(real_path(f"wideangle/barke{k}.png")) for k in (5, 6)]
    out = tmp_path / "real.h5"
    argv = ["--mode", "wideangle", "--method", "refine", "--unsure-only", "--iterations", "20"]
    assert main(["invert", *shots, *argv, "-o", str(out)]) == 0
    network, refined = io.read_results(out)
    unsure = np.flatnonzero(network.flips_agreeing < 6).tolist()
    assert unsure and refined.provenance.parameters["shots"] == unsure
    assert refined.radii_nm.shape == (len(unsure),)
    # each row says which file (and frame of the stack) it answers for, the refined rows too
    assert network.provenance.parameters["file_names"] == shots  # by absolute path
    assert refined.provenance.parameters["file_frames"] == unsure
    assert refined.provenance.parameters["file_names"] == [shots[k] for k in unsure]
    sample = Path(__file__).resolve().parents[1] / "sample_data" / "wideangle_shots.cxi"
    capsys.readouterr()
    assert main(["invert", str(sample), *argv, "-o", str(tmp_path / "sure.h5")]) == 0
    (network,) = io.read_results(tmp_path / "sure.h5")
    assert (network.flips_agreeing >= 6).all() and "no unsure shots" in capsys.readouterr().out


def test_a_radius_at_the_models_limit_is_printed_as_such(tmp_path, capsys, real_path):
    """The network clips radii to its range (30-160 nm): the real barke5.png's "radius 160.0
    nm" read as a measurement."""
    shot = str(real_path("wideangle/barke5.png"))
    assert main(["invert", shot, "-o", str(tmp_path / "r.h5")]) == 0
    printed = capsys.readouterr().out
    assert (
        "radius 160.0 nm (at the model's limit (30-160 nm): the cluster may be larger)" in printed
    )
    (network,) = io.read_results(tmp_path / "r.h5")
    assert network.radius_at_limit.tolist() == [True]


def test_amplitudes_of_a_lazily_read_stack_have_their_nan_masked():
    """A large file is read lazily and its NaN masked when a method loads it; ``--amplitudes``
    loads it first, and must mask them too (they made every object NaN)."""
    import dask.array as da

    from napari_cdinn.cli import _squared
    from napari_cdinn.core.data import DiffractionStack, Metadata
    from napari_cdinn.core.errors import InputWarning

    amplitudes = np.ones((3, 8, 8), np.float32)
    amplitudes[1, 4, 5] = np.nan
    stack = DiffractionStack(da.from_array(amplitudes), None, Metadata(source="big.npy"))
    with pytest.warns(InputWarning, match="big.npy: 1 NaN"):
        _squared(stack)
    assert np.isfinite(stack.intensities).all() and not stack.is_lazy
    assert not stack.mask[1, 4, 5] and stack.mask.sum() == stack.mask.size - 1


def test_a_negative_seed_is_a_usage_error_not_a_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["simulate", "cdi", "-n", "1", "--seed", "-1", "-o", str(tmp_path / "s.cxi")])
    assert exit_.value.code == 2
    assert "--seed: -1: must be at least 0" in capsys.readouterr().err


def test_more_than_ten_shots_print_ten_and_count_the_rest(tmp_path, capsys):
    shots = tmp_path / "shots.cxi"
    assert main(["simulate", "wideangle", "-n", "12", "-o", str(shots)]) == 0
    out = tmp_path / "answers.h5"
    assert main(["invert", str(shots), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("  shot ") == 10 and f"and 2 more shot(s): all are in {out}" in printed
    (result,) = io.read_results(out)
    assert len(result.radii_nm) == 12


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--n-train", "50", "--n-val", "10"], "50 training examples: fewer than one batch of 128"),
        (["--size", "60"], "--size: 60: must be a multiple of 8"),
        (["--batch", "0"], "--batch: 0: must be at least 1"),
    ],
)
def test_train_options_that_cannot_work_are_refused_in_one_line(tmp_path, capsys, argv, message):
    work = ["--workdir", str(tmp_path / "w"), "--log", str(tmp_path / "log"), "--minutes", "0.01"]
    try:
        code = main(["train", "cdi", *argv, *work, "-o", str(tmp_path / "m")])
    except SystemExit as exit_:  # argparse's usage error
        code = exit_.code
    assert code in (1, 2) and message in capsys.readouterr().err
    assert not (tmp_path / "w").exists()  # refused before any simulation


def test_train_cdi_writes_the_model_where_o_says(tmp_path, capsys):
    model = tmp_path / "mine.safetensors"
    argv = ["train", "cdi", "--n-train", "128", "--n-val", "8", "--batch", "64", "--minutes",
            "0.01", "--workdir", str(tmp_path / "w"), "--log", str(tmp_path / "log"),
            "-o", str(model)]  # fmt: skip
    assert main(argv) == 0
    assert model.exists() and model.with_suffix(".json").exists()
    assert f"model written to {model}" in capsys.readouterr().out
    card = json.loads(model.with_suffix(".json").read_text())
    assert card["training"]["script"] == "napari-cdinn train cdi"  # not training/train_cdi.py


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-o", "{tmp}/m", "--out", "{tmp}/else"], "give one or the other"),
        (["-o", "{tmp}/m", "--name", "foo"], "give one or the other"),
        (["-o", "{tmp}/settings"], "settings.json: exists and napari-cdinn did not write it"),
        (["-o", "{tmp}/folder"], "folder: is a folder; give a file name for the model"),
        (["-o", "{tmp}/new/"], "new/: is a folder; give a file name for the model"),
        (["--out", "{tmp}/settings.json"], "settings.json: is a file, not a folder (--out)"),
    ],
)
def test_train_cdi_refuses_a_model_file_it_must_not_write_before_the_work(
    tmp_path, capsys, argv, message
):
    """-o m1/x --out elsewhere silently dropped --out; -o m1/ wrote m1.safetensors beside the
    folder; -o settings replaced the user's settings.json; --out a file failed after the
    training."""
    (tmp_path / "settings.json").write_text('{"theme": "dark"}')
    (tmp_path / "folder").mkdir()
    work = ["--workdir", str(tmp_path / "w"), "--log", str(tmp_path / "log"), "--minutes", "0.01"]
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    try:
        code = main(["train", "cdi", *work, *argv])
    except SystemExit as exit_:  # argparse's usage error
        code = exit_.code
    assert code in (1, 2) and message in capsys.readouterr().err
    assert not (tmp_path / "w").exists()  # refused before any simulation
    assert (tmp_path / "settings.json").read_text() == '{"theme": "dark"}'
    assert not list(tmp_path.glob("*.safetensors"))


def test_train_cdi_without_o_never_replaces_a_model_and_names_unused_options(
    tmp_path, capsys, monkeypatch
):
    """Two runs to the user models folder: the second replaced the first, under the bundled
    model's name; and --model/--seconds (ptycho fine-tuning's) were dropped without a word."""
    from napari_cdinn.core.nn import registry

    monkeypatch.setattr(registry, "user_dir", lambda: tmp_path / "models")
    monkeypatch.setattr("napari_cdinn.core.nn.training.user_dir", lambda: tmp_path / "models")
    argv = ["train", "cdi", "--n-train", "128", "--n-val", "8", "--batch", "64", "--minutes",
            "0.01", "--workdir", str(tmp_path / "w"), "--log", str(tmp_path / "log"),
            "--model", "base.safetensors", "--seconds", "30"]  # fmt: skip
    assert main(argv) == 0
    assert "ignored with train cdi: --model, --seconds" in capsys.readouterr().err
    first = sorted((tmp_path / "models").glob("*.safetensors"))
    assert len(first) == 1 and first[0].stem.startswith("cdi_nn_")
    card = json.loads(first[0].with_suffix(".json").read_text())
    assert card["name"] == first[0].stem  # not the bundled model's name
    monkeypatch.setattr("time.strftime", lambda *_: "20990101_000000")  # a later run
    assert main(argv) == 0
    assert len(list((tmp_path / "models").glob("*.safetensors"))) == 2


def test_a_wideangle_method_on_a_file_read_as_cdi_says_to_add_the_mode(tmp_path, capsys):
    """A TIFF is read as CDI unless told: ``--method fit`` said "not one of nn, iterative,
    refine", and ``--method refine --unsure-only`` ran CDI's refine."""
    import tifffile

    path = tmp_path / "sim16.tif"
    tifffile.imwrite(path, np.ones((2, 16, 16), np.float32))
    out = tmp_path / "x.h5"
    for given in (["--method", "fit"], ["--method", "refine", "--unsure-only"]):
        assert main(["invert", str(path), *given, "-o", str(out)]) == 1
        err = capsys.readouterr().err
        assert "sim16.tif: read as cdi (the default for TIFF)" in err, err
        assert "is for the wide-angle mode: add --mode wideangle" in err
        assert not out.exists()


def test_options_the_method_does_not_use_are_named(tmp_path, capsys):
    """--unsure-only, --iterations or --model given where the method has no use for them are
    said to be ignored, not silently dropped."""
    sample = Path(__file__).resolve().parents[1] / "sample_data" / "cdi_crystals.cxi"
    argv = ["invert", str(sample), "--frames", "0", "--method", "iterative", "--iterations", "5"]
    assert main([*argv, "--unsure-only", "-o", str(tmp_path / "a.h5")]) == 0
    err = capsys.readouterr().err
    assert "ignored with cdi iterative: --unsure-only" in err and "--iterations" not in err
    assert main(["invert", str(sample), "--frames", "0", "--iterations", "5",
                 "-o", str(tmp_path / "b.h5")]) == 0  # fmt: skip
    assert "ignored with cdi nn: --iterations" in capsys.readouterr().err


def test_options_the_wideangle_fit_or_simulation_does_not_use_are_named(tmp_path, capsys):
    """--device with the fit (it simulates on the CPU) and ptychography's scan options when
    simulating wide-angle shots were dropped without a word."""
    shots = tmp_path / "s.cxi"
    argv = ["simulate", "wideangle", "-n", "1", "--every", "5", "--step", "3", "-o", str(shots)]
    assert main(argv) == 0
    assert "ignored with simulate wideangle (ptycho only): --step, --every" in (
        capsys.readouterr().err
    )
    argv = ["invert", str(shots), "--method", "fit", "--iterations", "10", "--device", "cpu"]
    assert main([*argv, "-o", str(tmp_path / "a.h5")]) == 0
    assert "ignored with wideangle fit: --device (the fit simulates on the CPU)" in (
        capsys.readouterr().err
    )


def test_ctrl_c_during_a_fit_writes_the_answers_finished_so_far(tmp_path, capsys, monkeypatch):
    """Ctrl-C an hour into a refine lost the network's answers (done in seconds) and every
    shot fitted: they are written, the file said to be partial, with the shots it holds; the
    exit code is still 130.  The fit says how far it is on stderr as it goes."""
    from napari_cdinn.core import wideangle

    shots = tmp_path / "shots.cxi"
    assert main(["simulate", "wideangle", "-n", "3", "--seed", "5", "-o", str(shots)]) == 0
    real = wideangle.fit_steps

    def interrupted_after_one_shot(*args, finished, **kwargs):
        steps = real(*args, finished=finished, **kwargs)
        while not finished:
            yield next(steps)
        raise KeyboardInterrupt

    monkeypatch.setattr(wideangle, "fit_steps", interrupted_after_one_shot)
    out = tmp_path / "answers.h5"
    argv = ["invert", str(shots), "--method", "refine", "--iterations", "10", "-o", str(out)]
    assert main([*argv, "--frames", "1:3"]) == 130
    printed, err = capsys.readouterr()
    assert "NN: 2 shot(s)" in printed  # printed when found, not at the end
    assert "fitted 1 of 2 shot(s)" in err
    assert f"interrupted: wrote {out}, a partial result: the network's answers for all 2" in err
    assert "the fit's for shot(s) [1]" in err
    network, refined = io.read_results(out)
    assert network.radii_nm.shape == (2,) and np.isfinite(network.radii_nm).all()
    assert refined.provenance.parameters["file_frames"] == [1]
    assert main([*argv[:-4], "--method", "fit", "--iterations", "10", "-o", str(out)]) == 130
    (fitted,) = io.read_results(out)  # the fit alone: its finished shot
    assert fitted.provenance.parameters["file_frames"] == [0]
