//! Pretrained weights: PyTorch state-dict files in each form torch.save writes (made by
//! `scripts/state_dict_fixtures.py`), torchvision's key rules, and a torchvision network's
//! weights through `zoo convert` and `zoo predict`.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use zoo_cli::convert::{modern_densenet_key, zoo_name};
use zoo_cli::registry::Origin;
use zoo_cli::state_dict::{StateDictFormat, read_state_dict, sniff_format};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/state_dicts")
        .join(name)
}

fn scratch(name: &str) -> zoo_core::testing::ScratchDir {
    zoo_core::testing::scratch_dir(&format!("pretrained-{name}"))
}

#[test]
fn zip_and_legacy_files_read_as_torch_wrote_them() {
    let text = std::fs::read_to_string(fixture("expected.json")).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
    let expected = expected["tensors"].as_object().unwrap();
    for (file, format) in [
        ("tiny_zip.pth", StateDictFormat::TorchZip),
        ("tiny_legacy.pth", StateDictFormat::TorchLegacy),
    ] {
        assert_eq!(sniff_format(&fixture(file)).unwrap(), format, "{file}");
        let tensors = read_state_dict(&fixture(file)).unwrap();
        assert_eq!(tensors.len(), expected.len(), "{file}");
        for (key, tensor) in &tensors {
            let want = &expected[key];
            let shape: Vec<usize> = want["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(tensor.dims(), shape.as_slice(), "{file}: {key}");
            let dtype = match want["dtype"].as_str().unwrap() {
                "float32" => DType::F32,
                "float64" => DType::F64,
                "float16" => DType::F16,
                "int64" => DType::I64,
                other => panic!("{other}"),
            };
            assert_eq!(tensor.dtype(), dtype, "{file}: {key}");
            let got = tensor.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
            let want: Vec<f64> = want["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(got.to_vec1::<f64>().unwrap(), want, "{file}: {key}");
        }
    }
}

#[test]
fn damaged_legacy_files_are_errors_naming_the_file() {
    let valid = std::fs::read(fixture("tiny_legacy.pth")).unwrap();
    let dir = scratch("damaged");
    let path = dir.join("cut.pth");
    // Cut inside the raw storages: the reader names the storage and how much is missing.
    std::fs::write(&path, &valid[..valid.len() - 5]).unwrap();
    let err = format!("{:#}", read_state_dict(&path).unwrap_err());
    assert!(
        err.contains("cut.pth") && err.contains("the file ends after"),
        "{err}"
    );
    // Cut inside the pickled dict.
    std::fs::write(&path, &valid[..200]).unwrap();
    let err = format!("{:#}", read_state_dict(&path).unwrap_err());
    assert!(err.contains("cut.pth"), "{err}");
    // Not a state-dict file at all.
    std::fs::write(&path, b"hello, world, this is text").unwrap();
    let err = format!("{:#}", read_state_dict(&path).unwrap_err());
    assert!(err.contains("not a PyTorch file"), "{err}");
    // PyTorch 0.1-0.3's tar archives are refused with the way out.
    let mut tar = vec![0u8; 512];
    tar[257..262].copy_from_slice(b"ustar");
    std::fs::write(&path, &tar).unwrap();
    let err = format!("{:#}", read_state_dict(&path).unwrap_err());
    assert!(
        err.contains("tar format") && err.contains("torch.save"),
        "{err}"
    );
}

#[test]
fn torchvision_key_rules() {
    let tv = |k: &str| zoo_name(Origin::Torchvision, k).unwrap();
    assert_eq!(
        tv("layer1.0.conv1.weight").as_deref(),
        Some("layer1.0.conv1.weight")
    );
    assert_eq!(tv("module.fc.bias").as_deref(), Some("fc.bias"));
    assert_eq!(tv("layer1.0.bn1.num_batches_tracked"), None);
    assert_eq!(tv("aux1.fc2.weight"), None);
    assert_eq!(tv("aux2.conv.conv.weight"), None);
    // DenseNet's pre-0.3 keys, renamed as torchvision's `_load_state_dict` does.
    assert_eq!(
        tv("features.denseblock1.denselayer12.norm.1.weight").as_deref(),
        Some("features.denseblock1.denselayer12.norm1.weight")
    );
    assert_eq!(
        modern_densenet_key("module.features.denseblock4.denselayer3.conv.2.weight"),
        "module.features.denseblock4.denselayer3.conv2.weight"
    );
    for unchanged in [
        "features.denseblock1.denselayer1.norm1.weight",
        "features.transition1.norm.weight",
        "features.denselayerx.norm.1.weight",
        "features.denseblock1.denselayer1.norm.3.weight",
    ] {
        assert_eq!(modern_densenet_key(unchanged), unchanged);
    }
    // The notebook's rule is unchanged: `model.` + name, anything else named in the error.
    let nb = |k: &str| zoo_name(Origin::Notebook, k);
    assert_eq!(
        nb("module.model.0.weight").unwrap().as_deref(),
        Some("0.weight")
    );
    assert!(
        nb("fc.weight")
            .unwrap_err()
            .to_string()
            .contains("`fc.weight`")
    );
}

/// A 300 x 200 RGB PNG with a smooth pattern, so that resizing matters.
fn photo(path: &Path) {
    let img = image::RgbImage::from_fn(300, 200, |x, y| {
        image::Rgb([
            (x * 255 / 299) as u8,
            (y * 255 / 199) as u8,
            ((x * y) % 251) as u8,
        ])
    });
    img.save(path).unwrap();
}

fn zoo(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_zoo"))
        .args(args)
        .output()
        .expect("zoo runs")
}

/// Runs zoo and asserts it succeeded, showing its error output where it did not.
fn zoo_ok(args: &[&str]) -> std::process::Output {
    let out = zoo(args);
    assert!(
        out.status.success(),
        "zoo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// tv-resnet18 with seeded weights (random BatchNorm statistics too), saved in `dir` as
/// DataParallel would save a state dict (`module.` prefix, `num_batches_tracked`), in
/// safetensors; and the network.
fn tv_resnet18_file(dir: &Path) -> (PathBuf, Box<dyn zoo_core::Model>) {
    use zoo_core::init::{InitScheme, ParamStore};
    let entry = zoo_cli::find("tv-resnet18").unwrap();
    let store = ParamStore::new(3, InitScheme::PytorchDefault, DType::F32, &Device::Cpu);
    let net = entry.build_reference(store.var_builder()).unwrap();
    for (name, var) in store.named_tensors() {
        let t = var.as_tensor();
        if name.ends_with("running_var") {
            var.set(&(t.rand_like(0.5, 1.5).unwrap())).unwrap();
        } else if name.ends_with("running_mean") {
            var.set(&(t.randn_like(0.0, 0.1).unwrap())).unwrap();
        }
    }
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (name, var) in store.named_tensors() {
        if let Some(bn) = name.strip_suffix("running_mean") {
            let count = Tensor::new(5i64, &Device::Cpu).unwrap();
            tensors.push((format!("module.{bn}num_batches_tracked"), count));
        }
        tensors.push((format!("module.{name}"), var.as_tensor().clone()));
    }
    let weights = dir.join("resnet18.safetensors");
    candle_core::safetensors::save(&tensors.into_iter().collect(), &weights).unwrap();
    (weights, net)
}

#[test]
fn a_torchvision_state_dict_converts_and_predicts_imagenet_top5() {
    let dir = scratch("convert");
    let (converted, net) = converted_tv_resnet18(&dir);
    let image = dir.join("photo.png");
    photo(&image);
    let out = zoo_ok(&[
        "predict",
        "--checkpoint",
        converted.to_str().unwrap(),
        image.to_str().unwrap(),
        "--json",
    ]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let logits: Vec<f32> = json[0]["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(logits.len(), 1000);
    // The same image through ImageNet's transform and the network built here.
    let t = zoo_core::data::transforms::InputTransform::imagenet();
    let (h, w, chw) = zoo_core::data::folder::decode_image(&image, 3).unwrap();
    assert_eq!((h, w), (200, 300));
    let (h, w, chw) = t.prepare_image(chw, 3, (h, w)).unwrap();
    let x = Tensor::from_vec(chw, (1, 3, h, w), &Device::Cpu).unwrap();
    let x = t.apply(&x, &Device::Cpu).unwrap();
    let want = net.forward_t(&x, false).unwrap();
    let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let err = zoo_core::testing::max_relative_error(&logits, &want);
    assert!(err < 1e-5, "predict's logits differ by {err:e}");
    let best = (0..1000)
        .max_by(|&a, &b| want[a].total_cmp(&want[b]))
        .unwrap();
    let classes = zoo_core::data::imagenet_classes();
    assert_eq!(json[0]["top5"][0][0], classes[best].as_str());
    assert_eq!(json[0]["top5"].as_array().unwrap().len(), 5);
    // The checkpoint carries torchvision's evaluation transform and ImageNet's names.
    let ckpt = zoo_core::train::checkpoint::load_checkpoint(&converted, &Device::Cpu).unwrap();
    assert_eq!(ckpt.meta.run.eval_transform, t);
    assert_eq!(ckpt.meta.run.classes, classes);
    // Back to PyTorch keys: torchvision's, with num_batches_tracked.
    let back = dir.join("back.safetensors");
    zoo_ok(&[
        "convert",
        "--model",
        "tv-resnet18",
        "--to-pytorch",
        converted.to_str().unwrap(),
        back.to_str().unwrap(),
    ]);
    let back = candle_core::safetensors::load(&back, &Device::Cpu).unwrap();
    assert!(back.contains_key("layer4.1.bn2.num_batches_tracked"));
    assert_eq!(back["fc.weight"].dims(), &[1000, 512]);
}

#[test]
fn a_torchvision_file_with_a_wrong_tensor_is_refused_naming_it() {
    let dir = scratch("wrong");
    let weights = dir.join("bad.safetensors");
    let fc = Tensor::zeros((10, 512), DType::F32, &Device::Cpu).unwrap();
    let stem = Tensor::zeros((64, 3, 7, 7), DType::F32, &Device::Cpu).unwrap();
    let tensors = [
        ("fc.weight".to_string(), fc),
        ("conv1.weight".to_string(), stem),
    ];
    candle_core::safetensors::save(&tensors.into_iter().collect(), &weights).unwrap();
    let out = dir.join("out.safetensors");
    let result = zoo(&[
        "convert",
        "--model",
        "tv-resnet18",
        weights.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(!result.status.success());
    let err = String::from_utf8_lossy(&result.stderr);
    assert!(err.contains("bad.safetensors"), "{err}");
    assert!(
        err.contains("layer1.0.conv1.weight") || err.contains("fc.weight"),
        "{err}"
    );
    assert!(!out.exists(), "no checkpoint is left behind");
}

/// An image folder `root/shapes/{train,test}/{red,green,blue}/` of PNGs of mixed sizes, each
/// class a dominant colour with noise.
fn shapes_folder(root: &Path) {
    for (split, per_class) in [("train", 6), ("test", 2)] {
        for (c, class) in ["red", "green", "blue"].iter().enumerate() {
            let dir = root.join("shapes").join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..per_class {
                let (w, h) = (36 + 4 * i as u32, 30 + 6 * (i as u32 % 3));
                let img = image::RgbImage::from_fn(w, h, |x, y| {
                    let noise = ((x * 31 + y * 17 + i as u32 * 7) % 64) as u8;
                    let mut px = [noise; 3];
                    px[c] = 160 + noise;
                    image::Rgb(px)
                });
                img.save(dir.join(format!("{i}.png"))).unwrap();
            }
        }
    }
}

/// [`tv_resnet18_file`] converted by `zoo convert` into a zoo checkpoint, and the network.
fn converted_tv_resnet18(dir: &Path) -> (PathBuf, Box<dyn zoo_core::Model>) {
    let (weights, net) = tv_resnet18_file(dir);
    let converted = dir.join("tv-resnet18.safetensors");
    zoo_ok(&[
        "convert",
        "--model",
        "tv-resnet18",
        weights.to_str().unwrap(),
        converted.to_str().unwrap(),
    ]);
    (converted, net)
}

fn converted_checkpoint(dir: &Path) -> PathBuf {
    converted_tv_resnet18(dir).0
}

#[test]
fn a_frozen_fine_tune_changes_only_the_new_head() {
    let dir = scratch("frozen");
    let pretrained = converted_checkpoint(&dir);
    shapes_folder(&dir);
    let run = dir.join("run");
    zoo_ok(&[
        "train",
        "tv-resnet18",
        "--recipe",
        "finetune",
        "--pretrained",
        pretrained.to_str().unwrap(),
        "--freeze",
        "backbone",
        "--dataset",
        "shapes",
        "--input-size",
        "32",
        "--epochs",
        "2",
        "--batch-size",
        "6",
        "--data-dir",
        dir.to_str().unwrap(),
        "--device",
        "cpu",
        "--run-dir",
        run.to_str().unwrap(),
    ]);
    let load = |p: &Path| zoo_core::train::checkpoint::load_checkpoint(p, &Device::Cpu).unwrap();
    let (before, after) = (load(&pretrained), load(&run.join("last.safetensors")));
    assert_eq!(after.meta.run.classes, ["blue", "green", "red"]);
    assert_eq!(after.model["fc.weight"].dims(), &[3, 512]);
    let mut same = 0;
    for (name, t) in &after.model {
        if name.starts_with("fc.") {
            continue;
        }
        let diff = zoo_core::testing::max_abs_diff(t, &before.model[name]).unwrap();
        assert_eq!(diff, 0.0, "{name} changed (BatchNorm statistics included)");
        same += 1;
    }
    assert_eq!(same, after.model.len() - 2);
    // The optimiser kept state for the head alone.
    let mut states: Vec<&String> = after.optimizer.keys().collect();
    states.sort();
    assert_eq!(states, ["first.fc.bias", "first.fc.weight"]);
    // The evaluation transform carried over, scaled to 32 px: shorter side 37, crop 32.
    let t = &after.meta.run.eval_transform;
    assert_eq!((t.height, t.resize_shorter), (32, Some(37)));
    assert_eq!(t.mean, zoo_core::data::transforms::IMAGENET_MEAN);
}

#[test]
fn an_unfrozen_fine_tune_resumes_exactly() {
    use zoo_cli::run_config::RunSpec;
    use zoo_cli::training::{Placement, run_training};
    use zoo_core::train::trainer::{Outcome, Quiet, StopAfterSteps};
    let dir = scratch("unfrozen");
    let pretrained = converted_checkpoint(&dir);
    shapes_folder(&dir);
    let spec = RunSpec {
        model: Some("tv-resnet18".into()),
        recipe: Some(zoo_cli::recipe::RecipeName::Finetune),
        pretrained: Some(pretrained.clone()),
        dataset: Some(zoo_core::data::Dataset::Folder("shapes".into())),
        input_size: Some(32),
        epochs: Some(2),
        batch_size: Some(6),
        ..RunSpec::default()
    };
    let config = spec.resolve("cpu").unwrap();
    assert_eq!(config.recipe.backbone_lr_factor, Some(0.1));
    let run = |folder: &str, resume: bool, stop: Option<u64>| {
        let mut quiet = Quiet;
        let mut stopper = StopAfterSteps::new(stop.unwrap_or(u64::MAX), &mut quiet);
        let observer: &mut dyn zoo_core::train::trainer::TrainObserver = match stop {
            Some(_) => &mut stopper,
            None => &mut Quiet,
        };
        run_training(
            &config,
            &dir,
            &dir.join(folder),
            resume,
            &Placement::ALONE,
            observer,
        )
        .unwrap()
    };
    assert!(matches!(run("straight", false, None), Outcome::Finished(_)));
    // 18 images / 6 = 3 steps per epoch: stop after 4 (epoch 2, batch 1), then resume with the
    // pretrained file gone (a resume reads the run's own checkpoint).
    assert_eq!(
        run("killed", false, Some(4)),
        Outcome::Interrupted { epoch: 1, batch: 1 }
    );
    std::fs::rename(&pretrained, dir.join("moved.safetensors")).unwrap();
    assert!(matches!(run("killed", true, None), Outcome::Finished(_)));
    let load = |p: PathBuf| zoo_core::train::checkpoint::load_checkpoint(&p, &Device::Cpu).unwrap();
    let a = load(dir.join("straight/last.safetensors"));
    let b = load(dir.join("killed/last.safetensors"));
    let mut moved = 0;
    for (name, t) in &a.model {
        assert_eq!(
            zoo_core::testing::max_abs_diff(t, &b.model[name]).unwrap(),
            0.0,
            "{name}"
        );
        moved += usize::from(name == "conv1.weight");
    }
    assert_eq!(moved, 1);
    // Unfrozen, the backbone trained (at a tenth of the head's rate).
    let before = load(dir.join("moved.safetensors"));
    let d =
        zoo_core::testing::max_abs_diff(&a.model["conv1.weight"], &before.model["conv1.weight"])
            .unwrap();
    assert!(d > 0.0, "the backbone trains");
}

#[test]
fn fine_tune_flags_are_checked() {
    use zoo_cli::run_config::{Freeze, RunSpec};
    let dir = scratch("flags");
    let pretrained = converted_checkpoint(&dir);
    let spec = |model: &str| RunSpec {
        model: Some(model.into()),
        pretrained: Some(pretrained.clone()),
        ..RunSpec::default()
    };
    let err = format!("{:#}", spec("tv-resnet34").resolve("cpu").unwrap_err());
    assert!(
        err.contains("holds tv-resnet18, and this run trains tv-resnet34"),
        "{err}"
    );
    let frozen_alone = RunSpec {
        freeze: Some(Freeze::Backbone),
        pretrained: None,
        ..spec("tv-resnet18")
    };
    let err = format!("{:#}", frozen_alone.resolve("cpu").unwrap_err());
    assert!(
        err.contains("--freeze backbone") && err.contains("--pretrained"),
        "{err}"
    );
    let missing = RunSpec {
        pretrained: Some(dir.join("nope.safetensors")),
        ..spec("tv-resnet18")
    };
    let err = format!("{:#}", missing.resolve("cpu").unwrap_err());
    assert!(
        err.contains("--pretrained") && err.contains("nope.safetensors"),
        "{err}"
    );
}
