"""LoadImage and SaveImage, alone and inside a Compose pipeline."""

from __future__ import annotations

import pathlib

import nibabel as nib
import numpy as np
import pytest
import torch

import gpuprep as gp
import gpuprep.io as gio
from gpuprep.errors import ConfigError, MissingKeyError, TransformError
from gpuprep.transforms.io import LoadImage, SaveImage
from tests.conftest import file_digest, oblique_affine

SHAPE = (6, 7, 8)


def _write(path, shape=SHAPE, dtype=np.float32, seed=0, affine=None, image=nib.Nifti1Image):
    rng = np.random.default_rng(seed)
    data = (rng.normal(size=shape) * 20).astype(dtype)
    nib.save(image(data, oblique_affine() if affine is None else affine, dtype=dtype), path)
    return path


@pytest.fixture
def files(tmp_path):
    (tmp_path / "in").mkdir()
    las = np.diag([-1.0, 1.0, 1.0, 1.0])
    return {
        "image": _write(tmp_path / "in" / "sub-01_T1w.nii.gz", affine=las),
        "label": _write(tmp_path / "in" / "sub-01_seg.nii.gz", dtype=np.int16, affine=las),
    }


def test_load_single_sample(files):
    sample = {"image": str(files["image"]), "label": files["label"], "subject": "sub-01"}
    out = LoadImage(["image", "label"], labels="label")(sample)
    data, meta = gio.read_image(files["image"])
    assert torch.equal(out["image"], data)
    assert torch.equal(gp.get_affine(out, "image"), meta["affine"])
    assert out["label"].dtype == torch.int16
    assert out["subject"] == "sub-01"
    assert gp.get_meta(out, "image")["format"] == "nifti1"
    assert sample == {"image": str(files["image"]), "label": files["label"], "subject": "sub-01"}
    (record,) = gp.get_history(out)
    assert record["name"] == "LoadImage"
    assert record["params"] == {
        "image": {"filename": str(files["image"]), "format": "nifti1", "nonfinite_replaced": 0},
        "label": {"filename": str(files["label"]), "format": "nifti1", "nonfinite_replaced": 0},
    }


def test_load_batch_of_paths(tmp_path):
    paths = [_write(tmp_path / f"s{i}.nii.gz", seed=i) for i in range(3)]
    batch = LoadImage("image")({"image": [str(p) for p in paths]})
    assert tuple(batch["image"].shape) == (3, 1, *SHAPE)
    assert tuple(batch["image_meta"]["affine"].shape) == (3, 4, 4)
    assert batch["image_meta"]["filename"] == [str(p) for p in paths]
    for index, path in enumerate(paths):
        assert torch.equal(batch["image"][index], gio.read_image(path)[0])
        assert batch["history"][index][0]["params"]["image"]["filename"] == str(path)
    assert [s["image"].shape for s in gp.decollate(batch)] == [torch.Size([1, *SHAPE])] * 3


def test_batch_with_different_shapes_is_refused(tmp_path):
    a = _write(tmp_path / "a.nii.gz")
    b = _write(tmp_path / "b.nii.gz", shape=(6, 7, 9))
    with pytest.raises(TransformError, match=r"different shapes.*a\.nii\.gz.*\(1, 6, 7, 8\).*b\.nii\.gz"):
        LoadImage("image")({"image": [a, b]})


def test_keys_must_agree_on_single_or_batch(files):
    with pytest.raises(TransformError, match="one path or lists of the same length"):
        LoadImage(["image", "label"], labels="label")({"image": files["image"], "label": [files["label"]]})


def test_value_must_be_a_path(files):
    with pytest.raises(TransformError, match=r"'image' must hold a path.*tensor of shape \(1, 2, 2, 2\)"):
        LoadImage("image")({"image": torch.zeros(1, 2, 2, 2)})


def test_missing_keys(files):
    with pytest.raises(MissingKeyError, match="label"):
        LoadImage(["image", "label"], labels="label")({"image": files["image"]})
    out = LoadImage(["image", "label"], labels="label", allow_missing_keys=True)({"image": files["image"]})
    assert "label" not in out and "image" in out


def test_dtype_options_and_config(files):
    load = LoadImage(["image", "label"], labels="label", dtype={"image": torch.float64})
    out = load({"image": files["image"], "label": files["label"]})
    assert out["image"].dtype == torch.float64 and out["label"].dtype == torch.int16
    assert load.get_config()["dtype"] == {"image": "float64"}
    rebuilt = gp.Compose.from_yaml(gp.Compose([load]).to_yaml()).transforms[0]
    assert rebuilt.dtypes == load.dtypes
    assert LoadImage("image", dtype=torch.float16).get_config()["dtype"] == "float16"
    assert LoadImage("image", dtype="torch.int32").dtypes == {"image": torch.int32}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dtype": "floaty"}, r"dtype must be a torch dtype.*'floaty'"),
        ({"dtype": {"other": "float32"}}, r"dtype has keys \['other'\]"),
        ({"nonfinite": "drop"}, r"nonfinite must be one of.*'drop'"),
    ],
)
def test_load_bad_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        LoadImage("image", **kwargs)


def test_nonfinite_zero_is_recorded(tmp_path):
    data = np.ones(SHAPE, np.float32)
    data[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.warns(UserWarning, match="replaced 1 non-finite"):
        out = LoadImage("image", nonfinite="zero")({"image": tmp_path / "nan.nii.gz"})
    assert out["image"][0, 0, 0, 0].item() == 0.0
    assert gp.get_history(out)[0]["params"]["image"]["nonfinite_replaced"] == 1
    assert gp.get_meta(out, "image")["nonfinite_replaced"] == 1


def test_replay_loads_again(files):
    out = LoadImage("image")({"image": files["image"]})
    again = gp.replay({"image": files["image"]}, gp.get_history(out))
    assert torch.equal(again["image"], out["image"])


def test_pipeline_load_orient_save(files, tmp_path):
    digests = {k: file_digest(p) for k, p in files.items()}
    out_dir = tmp_path / "out" / "nested"
    pipeline = gp.Compose([
        LoadImage(["image", "label"], labels="label"),
        gp.Orientation(["image", "label"], "RAS"),
        SaveImage(["image", "label"], out_dir, suffix="_ras"),
    ])
    result = pipeline({"image": files["image"], "label": files["label"]})
    image_path = out_dir / "sub-01_T1w_ras.nii.gz"
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "sub-01_T1w_ras.json", "sub-01_T1w_ras.nii.gz", "sub-01_seg_ras.json", "sub-01_seg_ras.nii.gz",
    ]
    # the files hold the returned data and affine
    saved, saved_meta = gio.read_image(image_path)
    assert torch.equal(saved, result["image"])
    assert torch.equal(saved_meta["affine"], gp.get_affine(result, "image"))
    assert gio.read_image(out_dir / "sub-01_seg_ras.nii.gz")[0].dtype == torch.int16
    # history: the SaveImage record (with the paths) is in the returned sample, not in the sidecar
    names = [r["name"] for r in gp.get_history(result)]
    assert names == ["LoadImage", "Orientation", "SaveImage"]
    assert gp.get_history(result)[-1]["params"]["image"] == {
        "filename": str(image_path), "sidecar": str(out_dir / "sub-01_T1w_ras.json"),
    }
    sidecar = gio.read_sidecar(image_path)
    assert [r["name"] for r in sidecar["history"]] == ["LoadImage", "Orientation"]
    assert sidecar["source"] == str(files["image"])
    # the sidecar's pipeline reruns the whole run, from the source files to the output files
    rebuilt = gp.Compose.from_config(sidecar["pipeline"])
    assert [type(t).__name__ for t in rebuilt.transforms] == ["LoadImage", "Orientation", "SaveImage"]
    assert rebuilt.transforms[-1].output_dir == out_dir
    loaded = LoadImage(["image", "label"], labels="label")({"image": files["image"], "label": files["label"]})
    assert torch.equal(gp.Compose(rebuilt.transforms[1:-1])(loaded)["image"], saved)
    assert torch.equal(gp.replay(loaded, sidecar["history"][1:])["image"], saved)
    # the whole pipeline survives YAML, and inputs are untouched
    assert gp.Compose.from_yaml(pipeline.to_yaml()).transforms[2].output_dir == out_dir
    assert {k: file_digest(p) for k, p in files.items()} == digests


def test_save_returns_data_untouched(files, tmp_path):
    sample = LoadImage("image")({"image": files["image"]})
    out = SaveImage("image", tmp_path / "o")(sample)
    assert out["image"].data_ptr() == sample["image"].data_ptr()
    assert torch.equal(out["image"], sample["image"])
    assert len(gp.get_history(sample)) == 1


def test_save_batch(tmp_path):
    paths = [_write(tmp_path / f"s{i}.nii.gz", seed=i) for i in range(3)]
    batch = LoadImage("image")({"image": paths})
    out = SaveImage("image", tmp_path / "o", output_ext="nii")(batch)
    for index in range(3):
        target = tmp_path / "o" / f"s{index}.nii"
        assert torch.equal(gio.read_image(target)[0], batch["image"][index])
        assert out["history"][index][-1]["params"]["image"]["filename"] == str(target)


def test_names_without_source_and_collisions(tmp_path):
    mask = torch.ones(1, 2, 3, 4, dtype=torch.uint8)
    sample = gp.make_sample({"image": torch.zeros(1, 2, 3, 4), "mask": mask})
    SaveImage(["image", "mask"], tmp_path / "a", sidecar=False)(sample)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["image.nii.gz", "mask.nii.gz"]
    sample = gp.make_sample(
        {"image": torch.zeros(1, 2, 3, 4), "mask": torch.ones(1, 2, 3, 4)},
        filenames={"image": "/x/sub.nii.gz", "mask": "/y/sub.mgz"},
    )
    SaveImage(["image", "mask"], tmp_path / "b", sidecar=False)(sample)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["sub.nii.gz", "sub_mask.nii.gz"]


def test_batch_samples_with_the_same_name_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    paths = [_write(tmp_path / "a" / "T1w.nii.gz"), _write(tmp_path / "b" / "T1w.nii.gz")]
    batch = LoadImage("image")({"image": paths})
    with pytest.raises(TransformError, match=r"sample 0 key 'image' and sample 1 key 'image'.*T1w\.nii\.gz"):
        SaveImage("image", tmp_path / "o")(batch)
    assert not (tmp_path / "o").exists()


def test_overwrite_false(files, tmp_path):
    sample = LoadImage("image")({"image": files["image"]})
    SaveImage("image", tmp_path / "o", overwrite=False)(sample)
    digest = file_digest(tmp_path / "o" / "sub-01_T1w.nii.gz")
    # a later run (another SaveImage) may not replace the file
    with pytest.raises(FileExistsError, match=r"sub-01_T1w\.nii\.gz: the file exists; pass overwrite=True"):
        SaveImage("image", tmp_path / "o", overwrite=False)(sample)
    assert file_digest(tmp_path / "o" / "sub-01_T1w.nii.gz") == digest


def test_never_writes_over_its_source(files):
    digest = file_digest(files["image"])
    sample = LoadImage("image")({"image": files["image"]})
    with pytest.raises(TransformError, match="over its own source file"):
        SaveImage("image", files["image"].parent)(sample)
    assert file_digest(files["image"]) == digest
    names = sorted(p.name for p in files["image"].parent.iterdir())
    assert names == ["sub-01_T1w.nii.gz", "sub-01_seg.nii.gz"]


def test_nifti2_and_codes_are_kept(tmp_path):
    img = nib.Nifti2Image(np.ones(SHAPE, np.float32), oblique_affine())
    img.set_qform(oblique_affine(), code=0)
    img.set_sform(oblique_affine(), code=4)
    nib.save(img, tmp_path / "mni.nii.gz")
    pipeline = gp.Compose([LoadImage("image"), SaveImage("image", tmp_path / "o")])
    out = pipeline({"image": tmp_path / "mni.nii.gz"})
    written = nib.load(tmp_path / "o" / "mni.nii.gz")
    assert isinstance(written, nib.Nifti2Image)
    assert (int(written.header["qform_code"]), int(written.header["sform_code"])) == (0, 4)
    np.testing.assert_array_equal(written.affine, img.affine)
    assert torch.equal(gio.read_image(tmp_path / "o" / "mni.nii.gz")[0], out["image"])


def test_sform_code_zero_source_gets_an_exact_sform(tmp_path):
    img = nib.Nifti1Image(np.ones(SHAPE, np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    img.set_sform(None, code=0)
    img.set_qform(np.diag([2.0, 2.0, 2.0, 1.0]), code=1)
    nib.save(img, tmp_path / "q.nii")
    gp.Compose([LoadImage("image"), SaveImage("image", tmp_path / "o")])({"image": tmp_path / "q.nii"})
    written = nib.load(tmp_path / "o" / "q.nii.gz")
    assert (int(written.header["qform_code"]), int(written.header["sform_code"])) == (1, 1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"output_ext": ".png"}, r"output_ext must be one of.*'\.png'"),
        ({"suffix": "a/b"}, "suffix must be a string without path separators"),
        ({"overwrite": "yes"}, "overwrite must be True or False"),
        ({"output_dir": ""}, "output_dir must be a non-empty path"),
    ],
)
def test_save_bad_arguments(tmp_path, kwargs, match):
    kwargs.setdefault("output_dir", tmp_path)
    with pytest.raises(ConfigError, match=match):
        SaveImage("image", **kwargs)


def test_failed_save_leaves_no_partial_files(files, tmp_path, monkeypatch):
    sample = LoadImage("image")({"image": files["image"]})
    save = SaveImage("image", tmp_path / "o")
    save(sample)
    before = {p.name: file_digest(p) for p in (tmp_path / "o").iterdir()}

    def write_half(self, data):
        with open(self, "wb") as stream:
            stream.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_bytes", write_half)
    with pytest.raises(OSError, match="No space left"):
        save(sample)
    assert {p.name: file_digest(p) for p in (tmp_path / "o").iterdir()} == before
